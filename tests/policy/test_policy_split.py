"""The seams of the policy code, and what the launcher's cache-hit path may import.

The launcher runs before any layer is applied, so whatever it imports is part of the
trusted start (docs/architecture.md): only the standard library and our own package.
On a cache hit it needs ``policy_cache.lookup`` (which finds profile files through
``profile_files``) and the resolved ``Policy`` (``resolved``): these must import
nothing else, at import time or while looking up. PyYAML and jsonschema are imported
only by ``policy_load``, and only inside the functions that need them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_kernel import policy_cache, resources

PACKAGE_DIR = Path(resources.PACKAGE_DIR)

# Runs in a fresh interpreter. argv: cache file, profile name, mode ("site": the
# interpreter's normal start, third-party packages importable; "nosite": -I -S with the
# package registered from its own directory, as boot.py does).
PROBE = r'''
import importlib.util, json, os, sys, sysconfig
mode, cache, name, pkg = sys.argv[1:5]
before = set(sys.modules)
if mode == "nosite":
    # As boot.py registers the package: from its own directory, without putting the
    # directory that holds it (site-packages, or a checkout with .venv inside) on sys.path.
    spec = importlib.util.spec_from_file_location("sandbox_kernel", os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    module = importlib.util.module_from_spec(spec)
    sys.modules["sandbox_kernel"] = module
    spec.loader.exec_module(module)
import sandbox_kernel.resolved
from sandbox_kernel import policy_cache
policy = policy_cache.lookup(cache, name)
hit = policy is not None
if hit:  # what the launcher then asks the policy
    sandbox_kernel.resolved.Policy.from_json(policy.to_json()).import_rule("roop")
    sandbox_kernel.resolved.parse_size(policy.limits.get("memory") or 1)

def real(p):
    return os.path.realpath(p)

pkg = real(pkg)
stdlib = [real(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")]

def stdlib_file(f):
    # The standard library's directories hold site-packages (the base interpreter's, and
    # a virtual environment's platstdlib): third-party code there is not the stdlib.
    parts = f.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return any(f == d or f.startswith(d + os.sep) for d in stdlib)

outside = {}
for mod_name in sorted(set(sys.modules) - before):
    mod = sys.modules[mod_name]
    f = getattr(mod, "__file__", None)
    if f is None:
        spec = getattr(mod, "__spec__", None)
        origin = getattr(spec, "origin", None)
        if mod_name in sys.builtin_module_names or origin in ("built-in", "frozen"):
            continue
        outside[mod_name] = "no file: " + repr(list(getattr(mod, "__path__", [])) or origin)
        continue
    f = real(f)
    if f.startswith(pkg + os.sep) or stdlib_file(f):
        continue
    outside[mod_name] = f
ours = sorted(m for m in set(sys.modules) - before if m.startswith("sandbox_kernel"))
print(json.dumps({"hit": hit, "outside": outside, "ours": ours}))
'''


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / policy_cache.FILE_NAME
    policy_cache.write(str(path), ["free", "offline"])
    return path


def _probe(mode, cache, name):
    flags = ["-I", "-S"] if mode == "nosite" else ["-I"]
    proc = subprocess.run([sys.executable, *flags, "-c", PROBE, mode, str(cache), name, str(PACKAGE_DIR)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("mode", ["site", "nosite"])
@pytest.mark.parametrize("name", ["free", "offline"])
def test_cache_hit_path_imports_only_stdlib_and_our_package(cache, mode, name):
    out = _probe(mode, cache, name)
    assert out["hit"], "the probe did not exercise a cache hit"
    assert out["outside"] == {}
    # On a hit the loader and the resolver are not even imported.
    assert "sandbox_kernel.policy_load" not in out["ours"]
    assert "sandbox_kernel.policy_merge" not in out["ours"]
    assert {"sandbox_kernel.policy_cache", "sandbox_kernel.profile_files", "sandbox_kernel.resolved"} <= set(out["ours"])


def test_the_probe_sees_a_third_party_import(cache, tmp_path):
    """The check can fail: a lookup that imports PyYAML is reported."""
    code = PROBE.replace("policy = policy_cache.lookup(cache, name)",
                         "import yaml\npolicy = policy_cache.lookup(cache, name)")
    proc = subprocess.run([sys.executable, "-I", "-c", code, "site", str(cache), "free", str(PACKAGE_DIR)],
                          capture_output=True, text=True, timeout=120)
    out = json.loads(proc.stdout)
    assert "yaml" in out["outside"] and "site-packages" in out["outside"]["yaml"]


@pytest.mark.parametrize("module", ["profile_files", "resolved", "policy_cache", "policy_load", "policy_merge",
                                    "policy"])
def test_importing_a_seam_imports_no_third_party_module(module):
    """Importing any of the policy modules costs no third-party import (they come lazily)."""
    code = ("import sys; before = set(sys.modules); import sandbox_kernel." + module +
            "; print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('yaml', 'jsonschema', "
            "'referencing', 'rpds', 'jsonschema_specifications', 'rich', 'jupyter_client', 'jupyter_core')))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _imported_top_names(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_policy_load_imports_yaml_and_jsonschema():
    users = {p.name for p in PACKAGE_DIR.rglob("*.py") if _imported_top_names(p) & {"yaml", "jsonschema"}}
    assert users == {"policy_load.py"}


def test_stdlib_only_modules_name_no_third_party_module():
    """profile_files, resolved and policy_cache import only the stdlib and our package, anywhere in the file."""
    stdlib = set(sys.stdlib_module_names)
    for name in ("profile_files.py", "resolved.py", "policy_cache.py"):
        third_party = _imported_top_names(PACKAGE_DIR / name) - stdlib
        assert third_party == set(), (name, third_party)


def test_loading_a_profile_does_not_import_format_only_libraries():
    """jsonschema imports format checkers' libraries where installed (rfc3987_syntax alone
    builds a Lark grammar for ~3 s); the schema uses no `format`, so profile loading holds
    them back, and leaves them importable afterwards."""
    code = ("import sys, importlib.util\n"
            "from sandbox_kernel import policy_load\n"
            "policy_load.validate({'description': 'x'}, 'x.yaml')\n"
            "assert 'jsonschema' in sys.modules\n"
            "held = [m for m in policy_load.FORMAT_ONLY_MODULES if m in sys.modules]\n"
            "assert not held, held\n"
            "for m in policy_load.FORMAT_ONLY_MODULES:\n"
            "    importlib.util.find_spec(m)  # ValueError if a None placeholder were left behind\n"
            "print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr
