"""docs/profile-reference.md is generated from profiles/schema.json and kept up to date."""

import json
import subprocess
import sys
from pathlib import Path

from sandbox_kernel import resources, schema_doc

DOC = Path(__file__).resolve().parent.parent / "docs" / "profile-reference.md"


def test_committed_reference_is_up_to_date():
    assert DOC.read_text() == schema_doc.render(), (
        "docs/profile-reference.md is stale: run `python -m sandbox_kernel.schema_doc > docs/profile-reference.md`")


def leaf_keys(schema, node, prefix=""):
    node = dict(schema["$defs"][node["$ref"].rsplit("/", 1)[1]], **node) if "$ref" in node else node
    if node.get("type") == "object" and "properties" in node:
        for k, v in node["properties"].items():
            yield from leaf_keys(schema, v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def test_every_key_of_the_schema_has_a_row_with_its_description():
    schema = json.loads(Path(resources.schema_path()).read_text())
    text = schema_doc.render(schema)
    keys = list(leaf_keys(schema, schema))
    assert len(keys) > 30
    for key in keys:
        assert f"| `{key}` |" in text, key
    assert "| `network.mode` | one of `none`, `restricted`, `full` | `none` | `none`: only UNIX sockets" in text
    assert "| `limits.memory` | [size](#value-types) |" in text and "| `size` | bytes as an integer" in text


def test_module_prints_the_reference():
    proc = subprocess.run([sys.executable, "-m", "sandbox_kernel.schema_doc"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout == schema_doc.render() and proc.stderr == ""


def test_reference_has_the_layer_merging_and_tested_by_columns():
    text = schema_doc.render()
    assert "| key | type | default | meaning | layer | `extends`; ceiling | tested by |" in text
    row = next(line for line in text.splitlines() if line.startswith("| `network.mode` |"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[4] == "`seccomp`, `landlock`"
    assert cells[5] == "replaced; the stricter (`none` > `restricted` > `full`)"
    assert "`test_os_layers.py::test_network_and_syscalls`" in cells[6]
    row = next(line for line in text.splitlines() if line.startswith("| `description` |"))
    assert row.endswith("| — | replaced; the request's | `test_cli.py::test_profiles_list` |")


def test_tested_by_is_a_deterministic_scan_of_the_markers(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "test_a.py").write_text(
        "import pytest\n"
        "pytestmark = [pytest.mark.slow, pytest.mark.covers('limits.memory')]\n"
        "@pytest.mark.parametrize('x', [1])\n"
        "@pytest.mark.covers('network.mode', 'network.udp')\n"
        "def test_one(x): pass\n"
        "def test_unmarked(): pass\n"
        "@pytest.mark.covers('network.mode')\n"
        "class TestB:\n"
        "    def test_in_class(self): pass\n")
    (tmp_path / "sub" / "test_c.py").write_text("import pytest\n@pytest.mark.covers('network.mode')\ndef test_c(): pass\n")
    (tmp_path / "helper.py").write_text("import pytest\n@pytest.mark.covers('limits.processes')\ndef test_x(): pass\n")
    assert schema_doc.tested_by(tmp_path) == {
        "limits.memory": ["test_a.py"],
        "network.mode": ["sub/test_c.py::test_c", "test_a.py::TestB", "test_a.py::test_one"],
        "network.udp": ["test_a.py::test_one"],
    }


def test_every_covers_marker_names_schema_keys():
    """A marker naming a key the schema does not have (a typo, a renamed key) fails here."""
    keys = {k for k, _node in schema_doc.leaf_nodes(json.loads(Path(resources.schema_path()).read_text()))}
    tested = schema_doc.tested_by()
    assert set(tested) <= keys, sorted(set(tested) - keys)
    assert len(tested) > 40  # the enforced keys, nearly all


def test_an_attempts_layers_are_layers_of_the_keys_it_covers():
    """A red-team attempt (`@attempt("landlock+...")`) that covers profile keys is stopped by a layer
    the schema names for one of them (x-layers): the two lists cannot drift apart."""
    import ast

    from sandbox_kernel import policy_facts

    checked = 0
    for path in sorted((schema_doc.tests_dir() / "redteam").glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            keys = [k for d in node.decorator_list for k in schema_doc.covered_keys(d)]
            layers = [a.value for d in node.decorator_list if isinstance(d, ast.Call)
                      and getattr(d.func, "id", "") == "attempt" for a in d.args[:1] if isinstance(a, ast.Constant)]
            if keys and layers:
                allowed = {lay for k in keys for lay in policy_facts.KEYS[k]["layers"]}
                for lay in layers[0].split("+"):
                    assert lay in allowed, (path.name, node.name, lay, keys)
                checked += 1
    assert checked >= 10
