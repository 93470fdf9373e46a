"""One registry of layers (sandbox_kernel.layers.registry): every list of layers is derived from
it, the files that list layers (the schema's enforcement keys, the README's list) are written from
it by sandbox_kernel.layer_doc, and what is neither (the architecture document's numbered list, the
launcher's docstring, the red-team layer names) fails here when it drifts. Starts no kernel."""

import json
import re
import subprocess
import sys
import types

import pytest
from testenv import REPO

from sandbox_kernel import doctor, launcher, layer_doc, policy, report, schema_doc
from sandbox_kernel.layers import registry, status

FACTS = {"NAME": str, "HARD": bool, "CONFIGURABLE": bool, "CHECKED_BY_KERNEL": bool, "DESCRIPTION": str}


@pytest.mark.parametrize("layer", registry.ALL, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_layer_declares_its_facts(layer):
    for fact, kind in FACTS.items():
        assert isinstance(getattr(layer, fact, None), kind), f"{layer.__name__}.{fact} is not a {kind.__name__}"
    assert layer.HINT is None or (isinstance(layer.HINT, str) and layer.HINT), layer.__name__
    assert layer.DESCRIPTION and "\n" not in layer.DESCRIPTION, layer.__name__
    assert isinstance(layer.README, str) and "\n" not in layer.README, layer.__name__
    assert layer.DEFAULT in (("required", "best-effort", "off") if layer.CONFIGURABLE else (None,)), layer.__name__


def test_names_are_unique_and_the_launcher_applies_the_registry():
    assert len(set(registry.NAMES)) == len(registry.NAMES) == len(registry.LAYERS) + len(registry.IN_KERNEL)
    assert launcher.LAYERS is registry.LAYERS
    assert not set(registry.LAYERS) & set(registry.IN_KERNEL)
    assert [ln.split(". ", 1)[1] for ln in launcher.__doc__.splitlines() if re.match(r"\d+\. ", ln)] == \
        [m.NAME for m in registry.LAYERS]


def test_the_derived_lists_come_from_the_registry():
    """Not copies: the consumers hold the registry's own objects."""
    assert doctor.HINTS is registry.HINTS
    assert report.HARDNESS is registry.HARDNESS
    assert registry.HARDNESS == {m.NAME: "hard" if m.HARD else "soft" for m in registry.ALL}
    # the hint doctor had for each layer before the registry, and the two it lacked (cgroup, pid_namespace)
    assert set(registry.HINTS) == {"landlock", "seccomp", "no_new_privs", "capabilities", "rlimits", "import_guard",
                                   "mount_namespace", "cgroup", "pid_namespace"}


def test_the_kernel_imports_the_registry_only_when_started_without_the_launcher():
    """The registry imports every layer module: the launcher does anyway, the kernel must not pay
    for it at every start (it reads CHECKED_BY_KERNEL only to refuse a start without the launcher)."""
    code = "import sys, sandbox_kernel.kernel as k; print('sandbox_kernel.layers.registry' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "False", p.stderr[-2000:]


def test_the_status_report_marks_hardness_from_the_registry():
    s = status.Status()
    for name in registry.NAMES:
        s.active(name, "x")
        assert s.layers[name]["hard"] is registry.by_name(name).HARD, name


def test_the_schema_enforcement_keys_are_the_configurable_layers():
    keys = policy.schema()["properties"]["enforcement"]["properties"]
    assert list(keys) == registry.CONFIGURABLE
    assert {k: v["default"] for k, v in keys.items()} == {m.NAME: m.DEFAULT for m in registry.ALL if m.CONFIGURABLE}


def test_the_generated_files_are_what_the_registry_writes():
    """profiles/schema.json's enforcement keys and README.md's list (and schema_doc's files from the
    schema): `python -m sandbox_kernel.layer_doc --write` rewrites what this names."""
    assert [str(p.relative_to(REPO)) for p in layer_doc.stale()] == []
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.layer_doc", "--check"], capture_output=True,
                       text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def test_adding_a_layer_needs_only_its_module_and_a_line_of_the_registry(monkeypatch):
    """A new layer module, added to LAYERS: the schema gets its enforcement key (with its facts and
    default) and the README its numbered item, and --check names exactly the files --write would
    rewrite. (HINTS, HARDNESS and the other derived lists are comprehensions over ALL: above.)"""
    new = types.ModuleType("sandbox_kernel.layers.fake_layer")
    new.__dict__.update(NAME="fake_layer", HARD=True, CONFIGURABLE=True, CHECKED_BY_KERNEL=False,
                        HINT="load the fake module", DESCRIPTION="a layer for this test", DEFAULT="best-effort",
                        README="does nothing, for this test.", NEEDS=(), RESULT=None)
    monkeypatch.setattr(registry, "LAYERS", registry.LAYERS + [new])
    monkeypatch.setattr(registry, "ALL", registry.LAYERS + registry.IN_KERNEL)
    schema = layer_doc.schema_text(layer_doc.SCHEMA.read_text())
    node = json.loads(schema)["properties"]["enforcement"]["properties"]["fake_layer"]
    assert node["default"] == "best-effort" and node["x-layers"] == ["fake_layer"]
    assert schema_doc.facts(json.loads(schema))["enforcement.fake_layer"]["layers"] == ("fake_layer",)
    n = len(registry.LAYERS)
    assert f"{n}. **fake_layer** (hard; `best-effort` by default): does nothing, for this test." in \
        layer_doc.readme_list().splitlines()
    assert sorted(str(p.relative_to(REPO)) for p in layer_doc.stale()) == \
        ["README.md", "docs/profile-reference.md", "profiles/schema.json", "sandbox_kernel/policy_facts.py"]


def test_the_redteam_layer_names_include_every_layer():
    sys.path.insert(0, str(REPO / "tests" / "redteam"))
    try:
        import rtutil
    finally:
        sys.path.remove(str(REPO / "tests" / "redteam"))
    assert set(registry.NAMES) <= rtutil.LAYERS
    assert rtutil.LAYERS - set(registry.NAMES) == {"precheck", "connection_file"}


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n#", start + len(title))
    return text[start:end if end >= 0 else len(text)]


def test_the_readme_lists_the_layers_in_order_with_their_hardness():
    section = _section((REPO / "README.md").read_text(), "## The layers, in the order the launcher applies them")
    listed = re.findall(r"^(\d+)\. \*\*(\w+)\*\* \((hard|soft)", section, re.M)
    assert [(int(n), name, hs) for n, name, hs in listed] == \
        [(i, m.NAME, registry.HARDNESS[m.NAME]) for i, m in enumerate(registry.LAYERS, 1)]
    for m in registry.IN_KERNEL:  # "The import guard (soft) is armed by ..."
        assert f"The {m.NAME.replace('_', ' ')} ({registry.HARDNESS[m.NAME]})" in section, m.NAME


def test_the_architecture_document_numbers_the_layers_in_order():
    text = (REPO / "docs" / "architecture.md").read_text()
    listed = [(int(n), name) for n, name in re.findall(r"(?:^|\s)(\d+)\. `(\w+)`", text, re.M)]
    assert listed == [(i, m.NAME) for i, m in enumerate(registry.LAYERS, 1)]


def _params(fn) -> list[str]:
    code = fn.__code__
    return list(code.co_varnames[:code.co_argcount])


@pytest.mark.parametrize("layer", registry.LAYERS, ids=lambda m: m.NAME)
def test_every_applied_layer_meets_the_protocol(layer):
    """prepare(policy, ctx) and apply(policy, ctx, status, given) on every layer (no hasattr in
    the launcher), and the hand-off facts: NEEDS (names) and RESULT (a class or None)."""
    assert callable(layer.prepare) and _params(layer.prepare) == ["policy", "ctx"], layer.NAME
    assert callable(layer.apply) and _params(layer.apply) == ["policy", "ctx", "status", "given"], layer.NAME
    assert isinstance(layer.NEEDS, tuple) and all(isinstance(n, str) for n in layer.NEEDS), layer.NAME
    assert layer.RESULT is None or isinstance(layer.RESULT, type), layer.NAME
    if hasattr(layer, "plan"):  # pure: computed from the policy and facts about the host or the launch
        assert _params(layer.plan)[0] == "policy", layer.NAME


def test_the_order_gives_every_layer_the_results_it_needs():
    """The order is data: each layer comes after every layer whose result it reads, and each of
    those hands a result on (RESULT)."""
    seen = {}
    for layer in registry.LAYERS:
        for need in layer.NEEDS:
            assert need in seen, f"{layer.NAME} needs {need}, which the launcher applies after it (or never)"
            assert seen[need].RESULT is not None, f"{layer.NAME} needs {need}, which hands nothing on"
        seen[layer.NAME] = layer


def test_layer_doc_outside_a_source_checkout_says_so(monkeypatch, tmp_path, capsys):
    """An installed wheel has no README.md or pyproject.toml beside the package: a clear line, no traceback."""
    monkeypatch.setattr(layer_doc, "REPO", tmp_path)
    monkeypatch.setattr(layer_doc, "README", tmp_path / "README.md")
    assert layer_doc.main(["--check"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and str(tmp_path) in err and "Traceback" not in err
