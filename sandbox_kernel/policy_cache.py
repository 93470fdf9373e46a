"""Validated-policy cache, written by `sandbox-kernel install` next to kernel.json.

Resolving a profile at every kernel start means parsing YAML and validating with
jsonschema (about 50 ms). ``install`` (run by the platform, which owns the kernelspec
directory) resolves every profile on the search path once and stores each result
with the SHA-256 of every file it came from and of the schema. The launcher
(``run --policy-cache FILE``, which installed kernelspecs pass) uses an entry only
when each of those files still resolves by the same name to the same path with the
same content, under the same package version (parents looked up as the resolver does:
``profile_files.chain_dirs``); otherwise it loads and validates the files as usual. A
missing, unreadable, stale or malformed cache only costs time.

Trust: the cache is as trusted as the kernel.json beside it (whoever can write one
can rewrite the other); the kernelspec directory is read-only inside the sandbox.

Imports: ``lookup`` is the launcher's cache-hit path, before any layer is applied, so
this module imports only the standard library and our own stdlib-only modules
(``profile_files``, ``resolved``, ``layers.program_trees``); ``build`` and ``write`` (run by
``install``) import the loader and resolver when called. tests/policy/test_policy_split.py
checks this.

Host facts: besides the profiles, the cache carries the interpreter it was written for (where
its guard hook lies) and the program directories of packages' trees below the library
directories (``programs``: ``layers.program_trees``, too slow to scan at every start), which
the mount namespace mounts noexec; ``lookup`` hands both to the launcher.
"""

from __future__ import annotations

from . import __version__, resources, standins
from .layers import program_trees
from .profile_files import chain_dirs, find_profile
from .resolved import Policy

FILE_NAME = "policy-cache.json"


def _sha(path: str) -> str:
    with open(path, "rb") as fh:
        return standins.sha256_hex(fh.read())


def _chain_refs(name: str, chain: list[str]) -> list[list[str]]:
    """[name used to find it, path, sha256] for each file of an `extends` chain."""
    from .policy_load import load_file

    refs, ref = [], name
    for path in chain:
        refs.append([ref, path, _sha(path)])
        ref = load_file(path).get("extends", "")
    return refs


def build(names: list[str], env: dict[str, str] | None = None) -> dict:
    from .policy_merge import resolve

    profiles = {}
    for name in names:
        policy = resolve(name, env)
        profiles[name] = {"chain": _chain_refs(name, policy.sources), "policy": standins.json_loads(policy.to_json())}
    return {"version": __version__, "schema": _sha(resources.schema_path()), "profiles": profiles,
            "python": _python_facts(resources.guard_hook_path()), "programs": program_trees.facts()}


def _python_facts(guard_hook: str) -> dict:
    """The interpreter this cache was written for, and where its guard hook lies (what the
    launcher would otherwise ask sysconfig: its import and scheme expansion take ~5 ms in a bare
    interpreter, less in the launcher, which has imported much of what sysconfig needs)."""
    import sys

    return {"executable": sys.executable, "prefix": sys.prefix, "version": sys.version, "guard_hook": guard_hook}


def _remember_guard_hook(facts) -> None:
    """Take the guard hook's path from the cache where it was written for this very interpreter."""
    if isinstance(facts, dict) and isinstance(facts.get("guard_hook"), str) \
            and facts == _python_facts(facts["guard_hook"]):
        resources.remember_guard_hook_path(facts["guard_hook"])


def write(path: str, names: list[str], env: dict[str, str] | None = None) -> None:
    with open(path, "w") as fh:
        fh.write(standins.json_dumps(build(names, env), separators=(",", ":")))


def lookup(path: str | None, name: str, env: dict[str, str] | None = None) -> Policy | None:
    """The cached resolution of `name`, or None when it is absent or no longer valid."""
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            cache = standins.json_loads(fh.read())
        if cache.get("version") != __version__ or cache.get("schema") != _sha(resources.schema_path()):
            return None
        _remember_guard_hook(cache.get("python"))
        program_trees.remember(cache.get("programs"))  # (else mount_namespace scans at start)
        entry = cache["profiles"].get(name)
        if entry is None:
            return None
        dirs = chain_dirs(name, env)  # as the resolver looks parents up
        for ref, file, sha in entry["chain"]:
            if find_profile(ref, env, dirs) != file or _sha(file) != sha:
                return None
        return Policy.from_dict(entry["policy"])
    except Exception:  # unreadable, malformed, a profile gone: resolve from the files
        return None
