"""One registry of layers (sandbox_kernel.layers.registry): every list of layers is derived from
it, and what cannot be derived (the schema's enforcement keys, the README's and the architecture
document's lists of layers) fails here when it drifts. Starts no kernel."""

import re
import subprocess
import sys

import pytest
from testenv import REPO

from sandbox_kernel import doctor, launcher, policy, report
from sandbox_kernel.layers import registry, status

FACTS = {"NAME": str, "HARD": bool, "CONFIGURABLE": bool, "CHECKED_BY_KERNEL": bool, "DESCRIPTION": str}


@pytest.mark.parametrize("layer", registry.ALL, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_every_layer_declares_its_facts(layer):
    for fact, kind in FACTS.items():
        assert isinstance(getattr(layer, fact, None), kind), f"{layer.__name__}.{fact} is not a {kind.__name__}"
    assert layer.HINT is None or (isinstance(layer.HINT, str) and layer.HINT), layer.__name__
    assert layer.DESCRIPTION and "\n" not in layer.DESCRIPTION, layer.__name__


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
    assert sorted(keys) == sorted(registry.CONFIGURABLE)


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
