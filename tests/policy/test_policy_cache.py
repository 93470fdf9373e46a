"""The validated-policy cache that `install` writes beside kernel.json and the launcher uses."""

import json
import os
import subprocess
import sys

import kernelutil
import pytest
import tree_programs

from sandbox_kernel import policy_cache

SHOW_MODE = "import os, json; print(json.loads(os.environ['SANDBOX_KERNEL_POLICY'])['data']['network']['mode'])"


def launch_mode(profile, cache, env=None):
    p = subprocess.run([sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile,
                        "--policy-cache", str(cache), "--", sys.executable, "-c", SHOW_MODE],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, **(env or {})))
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.fixture
def cached(tmp_path):
    kernelutil.write_profile("cachetest", "extends: free\nnetwork: {mode: none}\n")
    cache = tmp_path / policy_cache.FILE_NAME
    policy_cache.write(str(cache), ["cachetest", "free"])
    return cache


def _rewrite(cache, fn):
    data = json.loads(cache.read_text())
    fn(data)
    cache.write_text(json.dumps(data))


def test_install_writes_the_cache(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--profile", "free", "--prefix",
                        str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    spec = tmp_path / "share" / "jupyter" / "kernels" / "sandbox-free"
    cache = json.loads((spec / policy_cache.FILE_NAME).read_text())
    assert {"free", "base", "default"} <= set(cache["profiles"])
    argv = json.loads((spec / "kernel.json").read_text())["argv"]
    assert argv[argv.index("--policy-cache") + 1] == "{resource_dir}/" + policy_cache.FILE_NAME


@pytest.mark.kernel
def test_a_valid_entry_is_used(cached):
    assert launch_mode("cachetest", cached) == "none"
    # Proof that the entry (not the files) was read: change the cached data, keep the hashes.
    _rewrite(cached, lambda d: d["profiles"]["cachetest"]["policy"]["data"]["network"].update(mode="full"))
    assert launch_mode("cachetest", cached) == "full"


@pytest.mark.kernel
def test_an_edited_profile_invalidates_its_entry(cached):
    _rewrite(cached, lambda d: d["profiles"]["cachetest"]["policy"]["data"]["network"].update(mode="full"))
    kernelutil.write_profile("cachetest", "extends: free\nnetwork: {mode: none}\n# edited\n")
    assert launch_mode("cachetest", cached) == "none"


@pytest.mark.kernel
def test_an_edited_parent_invalidates_the_child(cached, tmp_path, monkeypatch):
    _rewrite(cached, lambda d: d["profiles"]["cachetest"]["policy"]["data"]["network"].update(mode="full"))
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "free.yaml").write_text("extends: base\nnetwork: {mode: restricted, tcp_connect_ports: [443]}\n")
    # a new `free` earlier on the search path changes what `extends: free` means
    path = f"{shadow}:{kernelutil.PROFILES}"
    assert launch_mode("cachetest", cached, env={"SANDBOX_KERNEL_PROFILE_PATH": path}) == "none"


@pytest.mark.parametrize("damage", [
    lambda d: d.update(version="0.0.0"),
    lambda d: d.update(schema="0" * 64),
    lambda d: d["profiles"].pop("cachetest"),
    lambda d: d["profiles"]["cachetest"].update(chain="not a list"),
])
@pytest.mark.kernel
def test_stale_or_malformed_caches_are_ignored(cached, damage):
    _rewrite(cached, lambda d: d["profiles"]["cachetest"]["policy"]["data"]["network"].update(mode="full"))
    _rewrite(cached, damage)
    assert launch_mode("cachetest", cached) == "none"


@pytest.mark.kernel
def test_unreadable_or_missing_cache_is_ignored(cached, tmp_path):
    cached.write_text("{not json")
    assert launch_mode("cachetest", cached) == "none"
    assert launch_mode("cachetest", tmp_path / "absent.json") == "none"


@pytest.mark.kernel
def test_the_ceiling_is_cached_and_narrows(cached):
    assert launch_mode("free", cached) == "restricted"
    assert launch_mode("free", cached, env={"SANDBOX_KERNEL_CEILING": "cachetest"}) == "none"


@pytest.mark.parametrize("other", [None, "executable", "prefix", "version", "name"])
def test_the_guard_hook_path_is_taken_only_for_the_interpreter_that_wrote_the_cache(cached, monkeypatch, other):
    """The cache records where `install` found site-packages (sysconfig) for its interpreter; a
    lookup takes that path only for the same executable, prefix and version, and only a path to
    the hook file itself. Otherwise guard_hook_path() asks sysconfig, as without a cache."""
    from sandbox_kernel import resources

    expected = resources.guard_hook_path()
    data = json.loads(cached.read_text())
    assert data["python"] == {"executable": sys.executable, "prefix": sys.prefix, "version": sys.version,
                              "guard_hook": expected}
    planted = "/srv/elsewhere/" + ("other.pth" if other == "name" else resources.GUARD_HOOK_NAME)
    data["python"]["guard_hook"] = planted
    if other in ("executable", "prefix", "version"):
        data["python"][other] += "-another"
    cached.write_text(json.dumps(data))
    monkeypatch.setattr(resources, "_purelib", None)
    assert policy_cache.lookup(str(cached), "free") is not None
    taken = other is None
    assert (resources._purelib == "/srv/elsewhere") is taken, resources._purelib
    monkeypatch.setattr(resources, "_purelib", None)
    assert resources.guard_hook_path() == expected


def launch_tree_program(cache, profile="offline"):
    """[exit status, output] of `ld.so PROGRAM --version` (a package tree's program, such as
    /usr/lib/llvm-14/bin/llvm-config) run by the launcher under `profile` with `cache`."""
    program, arg, expect = next(tree_programs.find(k) for k in tree_programs.TREES if tree_programs.installed(k))
    p = subprocess.run([sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile,
                        "--policy-cache", str(cache), "--", sys.executable, "-c", tree_programs.cell(program, arg)],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    return tree_programs.ran(tree_programs.result(p.stdout), expect)


@pytest.mark.kernel
def test_the_launcher_mounts_the_caches_program_trees_noexec_and_scans_without_one(tmp_path):
    """The program directories of packages' trees come from the cache's list (written by
    install), not from a scan at every start: a tree the list lacks (installed after install) is
    not mounted noexec, so the loader runs its program under offline. Where the cache has no
    valid list, or there is no cache, the launcher scans: refused."""
    if not any(tree_programs.installed(k) for k in tree_programs.TREES):
        pytest.skip("no JDK, LLVM or PostgreSQL tree below /usr/lib here")
    cache = tmp_path / policy_cache.FILE_NAME
    policy_cache.write(str(cache), ["offline"])
    assert not launch_tree_program(cache)
    _rewrite(cache, lambda d: d["programs"].update(dirs=[]))
    assert launch_tree_program(cache), "the launcher scanned although the cache carried a list"
    _rewrite(cache, lambda d: d.pop("programs"))
    assert not launch_tree_program(cache)
    assert not launch_tree_program(tmp_path / "absent.json")
