"""docs/profile-reference.md is generated from profiles/schema.json and kept up to date."""

import json
import subprocess
import sys
from pathlib import Path

from paths import REPO

from sandbox_kernel import resources, schema_doc

DOC = REPO / "docs" / "profile-reference.md"


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
