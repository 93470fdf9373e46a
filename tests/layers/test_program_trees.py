"""The bin directories of packages' trees below the library directories (layers/program_trees.py):
the scan `install` runs, what the policy cache carries to the launcher, and the mount
namespace's plan for them (mounted noexec where exec.allow does not name them). The kernels
that run such programs are in tests/redteam/test_exec.py and tests/layers/test_mount_namespace.py."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from sandbox_kernel import policy, policy_cache
from sandbox_kernel.layers import mount_namespace, program_trees
from sandbox_kernel.layers.context import LaunchContext


def _dirs(root, *paths):
    for p in paths:
        os.makedirs(os.path.join(root, p), exist_ok=True)


@pytest.fixture
def tree(tmp_path):
    """Two roots (lib, opt) and a link to one of them, holding programs' directories at every depth
    the scan reaches and some it must not count."""
    lib, opt = tmp_path / "lib", tmp_path / "opt"
    _dirs(lib, "bin", "jvm/jdk-17/bin", "llvm-14/bin", "pg/15/sbin", "a/b/c/bin", "x86_64-linux-gnu/qt5/bin",
          "binaries", "covered/bin", "jdk-17-lib/lib")
    _dirs(opt, "tool/bin", "tool/bin/nested/bin")
    (lib / "jvm" / "alias").symlink_to("jdk-17")  # a distribution's alternative name: not followed
    (lib / "evil").mkdir()
    (lib / "evil" / "bin").symlink_to(lib)  # a link named bin to the libraries: never made noexec
    (opt / "link-out").symlink_to(tmp_path / "elsewhere")
    _dirs(tmp_path, "elsewhere/bin")
    (tmp_path / "lib-again").symlink_to(lib)
    (lib / "jvm" / "jdk-17" / "bin" / "java").write_text("")
    return tmp_path


def test_scan_finds_bin_directories_up_to_two_levels_below_each_root(tree):
    roots = [str(tree / "lib"), str(tree / "opt"), str(tree / "lib-again"), str(tree / "absent")]
    found = program_trees.scan(roots, skip=[str(tree / "lib" / "covered")])
    real = os.path.realpath(tree)
    assert found == sorted(os.path.join(real, p) for p in (
        "lib/bin", "lib/jvm/jdk-17/bin", "lib/llvm-14/bin", "lib/pg/15/sbin", "lib/x86_64-linux-gnu/qt5/bin",
        "opt/tool/bin")), found
    # not: a/b/c/bin (three levels down), binaries (another name), covered/bin (within skip),
    # evil/bin and jvm/alias (links: not followed), link-out/bin (outside the roots),
    # tool/bin/nested/bin (inside a bin directory, already covered by it)


def test_scan_leaves_out_what_program_dirs_cover_and_deduplicates_roots():
    found = program_trees.scan()
    assert found == sorted(set(found))
    for d in found:
        assert os.path.basename(d) in ("bin", "sbin") and d == os.path.realpath(d), d
        assert not any(d == p or d.startswith(p + "/") for p in map(os.path.realpath, program_trees.PROGRAM_DIRS)), d
    assert os.path.realpath("/usr/local/bin") not in found


def test_scan_passes_over_unreadable_directories(tree, monkeypatch):
    unreadable = os.path.join(os.path.realpath(tree), "lib", "jvm")
    real_scandir = os.scandir

    def scandir(path):
        if path == unreadable:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(program_trees.os, "scandir", scandir)
    found = program_trees.scan([str(tree / "lib")], skip=[])
    assert os.path.join(os.path.realpath(tree), "lib/llvm-14/bin") in found
    assert not any("/jvm/" in d for d in found), found


@pytest.mark.parametrize("damage", [
    lambda f: f.update(roots=["/usr/lib"]),
    lambda f: f.update(depth=3),
    lambda f: f.update(names=["bin"]),
    lambda f: f.update(dirs="/usr/lib/jvm/x/bin"),
    lambda f: f.update(dirs=["relative/bin"]),
    lambda f: f.pop("dirs"),
    lambda f: f.pop("files"),
    lambda f: f["files"].update(scan=0),
    lambda f: f["files"].update(roots=f["files"]["roots"][:-1]),  # another interpreter's environment
    lambda f: f["files"].update(paths=["relative/prog"]),
    lambda f: f["files"].update(paths="/usr/lib/x/prog"),
])
def test_facts_of_another_scan_or_malformed_are_not_taken(damage):
    facts = program_trees.facts(["/opt/x/bin"], ["/usr/lib/x/prog"])
    assert program_trees.cached_dirs(facts) == ["/opt/x/bin", "/usr/lib/x/prog"]
    damage(facts)
    assert program_trees.cached_dirs(facts) is None
    assert program_trees.cached_dirs(None) is None and program_trees.cached_dirs("x") is None


@pytest.fixture
def fresh(monkeypatch):
    """program_trees' remembered list reset for the test, and restored after it."""
    monkeypatch.setattr(program_trees, "_DIRS", None)


def test_the_policy_cache_carries_the_scan_and_lookup_hands_it_on(tmp_path, fresh):
    cache = tmp_path / policy_cache.FILE_NAME
    policy_cache.write(str(cache), ["free"])
    data = json.loads(cache.read_text())
    assert data["programs"] == program_trees.facts(), data["programs"]
    assert data["programs"]["files"]["roots"] == program_trees.file_roots()
    # what the launcher then uses is the cache's list, not a new scan
    data["programs"]["dirs"] = ["/opt/from-the-cache/bin"]
    data["programs"]["files"]["paths"] = ["/usr/lib/from-the-cache/prog"]
    cache.write_text(json.dumps(data))
    assert policy_cache.lookup(str(cache), "free") is not None
    assert program_trees.program_tree_dirs() == ["/opt/from-the-cache/bin", "/usr/lib/from-the-cache/prog"]


@pytest.mark.parametrize("damage", [lambda d: d.pop("programs"), lambda d: d["programs"].update(roots=["/x"]),
                                    lambda d: d["programs"]["files"].update(roots=["/x"]),
                                    lambda d: d.update(version="0.0.0")])
def test_without_a_valid_list_the_launcher_scans(tmp_path, fresh, damage):
    cache = tmp_path / policy_cache.FILE_NAME
    policy_cache.write(str(cache), ["free"])
    data = json.loads(cache.read_text())
    data["programs"]["dirs"] = ["/opt/from-the-cache/bin"]
    damage(data)
    cache.write_text(json.dumps(data))
    policy_cache.lookup(str(cache), "free")
    assert program_trees.program_tree_dirs() == program_trees.current(check=False)


def _with_allow(name, allow):
    p = copy.deepcopy(policy.effective(name, dict(os.environ)))
    p.data["exec"] = {**p.data["exec"], "allow": allow}
    return p


@pytest.fixture
def outside():
    """A directory outside every writable directory of the plan ({tmp} is /tmp, {cwd} this checkout,
    {home} the test's home): a listed path in a writable one is left to W^X, never planned."""
    import tempfile

    d = tempfile.mkdtemp(prefix="sbx-test-trees-", dir="/var/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_plan_mounts_each_listed_directory_outside_exec_allow_noexec(outside, fresh):
    """The plan takes the remembered list: a directory that still exists is mounted noexec unless
    exec.allow covers it; an exec.allow entry inside one is bound back; a gone one is passed over."""
    a, b, c = (outside / n / "bin" for n in ("jdk", "llvm", "pg"))
    for d in (a, b, c):
        d.mkdir(parents=True)
    (b / "clang").write_text("")
    program_trees.remember(program_trees.facts([str(a), str(b), str(c), str(outside / "gone" / "bin")], []))
    env = dict(os.environ)
    offline = _with_allow("offline", ["{python}", str(c), str(b / "clang")])
    programs = dict(mount_namespace.plan(offline, LaunchContext(env)).programs)
    assert programs[str(a)] == [] and programs[str(b)] == [str(b / "clang")], programs
    assert str(c) not in programs and str(outside / "gone" / "bin") not in programs, programs
    whole = _with_allow("offline", ["{python}", str(outside)])
    assert not {str(a), str(b), str(c)} & set(dict(mount_namespace.plan(whole, LaunchContext(env)).programs))


def test_profiles_granting_the_library_directories_get_no_mount_for_trees_there(fresh):
    """default ({system}: /usr/lib whole) mounts no tree below /usr/lib; offline mounts each."""
    env = dict(os.environ)
    found = program_trees.program_tree_dirs()
    under_lib = [d for d in found if d.startswith(("/usr/lib/", "/usr/lib64/"))]
    if not under_lib:
        pytest.skip("no program tree below /usr/lib here")
    default = dict(mount_namespace.plan(policy.effective("default", env), LaunchContext(env)).programs)
    offline = dict(mount_namespace.plan(policy.effective("offline", env), LaunchContext(env)).programs)
    assert not set(under_lib) & set(default), default
    assert set(found) <= set(offline), offline


def test_plan_mounts_listed_program_files_noexec_and_a_venvs_bin_programs_despite_python(outside, tmp_path, fresh):
    """A program file the deep scan listed (layers/program_files.py: one kept beside libraries) is
    planned noexec on its own, as a bind mount of the file; so is an ELF program in a virtual
    environment's bin, which {python} grants whole for its console scripts, unless the profile
    names that directory itself ({system} does: default runs ruff)."""
    from sandbox_kernel.layers import python_files

    env_bin = python_files.environment_bin()
    if env_bin is None:
        pytest.skip("the tests do not run in a virtual environment here")
    lib = outside / "lib"
    lib.mkdir()
    (lib / "libx.so").write_text("")
    (lib / "helper").write_text("")
    elf = os.path.join(env_bin, "ruff")  # an ELF program a wheel put there (scripts/setup.sh installs ruff)
    if not os.path.isfile(elf):
        pytest.skip(f"{elf} is not installed here")
    gone = str(lib / "gone")
    program_trees.remember(program_trees.facts([], [str(lib / "helper"), elf, gone]))
    env = dict(os.environ)
    offline = dict(mount_namespace.plan(policy.effective("offline", env), LaunchContext(env)).programs)
    assert offline.get(str(lib / "helper")) == [] and offline.get(elf) == [], offline
    assert gone not in offline, "a listed path that does not exist is passed over"
    in_tmp = tmp_path / "helper"  # in {tmp}, writable: noexec by W^X, and a tenant could swap it for a link
    in_tmp.write_text("")
    program_trees.remember(program_trees.facts([], [str(in_tmp)]))
    assert str(in_tmp) not in dict(mount_namespace.plan(policy.effective("offline", env), LaunchContext(env)).programs)
    program_trees.remember(program_trees.facts([], [str(lib / "helper"), elf, gone]))
    named = _with_allow("offline", ["{python}", env_bin])
    assert elf not in dict(mount_namespace.plan(named, LaunchContext(env)).programs)
    default = dict(mount_namespace.plan(policy.effective("default", env), LaunchContext(env)).programs)
    assert elf not in default, "default's {system} grants the environment's bin whole"


def test_a_venv_brought_back_read_only_into_a_cover_keeps_its_programs_listed(fresh):
    """A checkout cloned into /tmp: the private /tmp covers it and the view brings the environment
    back read-only (``kept``), inside a writable directory. Its ELF programs are read-only there
    before the program mounts, so they stay planned noexec (a listed path in a writable directory
    outside what is read-only is left to W^X). Shaped here by hiding the environment's parent."""
    from sandbox_kernel.layers import python_files

    env_bin = python_files.environment_bin()
    elf = os.path.join(env_bin or "/nonexistent", "ruff")
    if env_bin is None or not os.path.isfile(elf):
        pytest.skip("no virtual environment with ruff in its bin here")
    parent = os.path.dirname(os.path.realpath(sys.prefix))
    if not parent.startswith(os.path.realpath(os.getcwd())):
        pytest.skip("the environment does not lie in the working directory ({cwd}, writable) here")
    program_trees.remember(program_trees.facts([], [elf]))
    env = dict(os.environ)
    p = copy.deepcopy(policy.effective("offline", env))
    p.data["filesystem"] = {**p.data["filesystem"], "hidden": [*p.data["filesystem"].get("hidden", []), parent]}
    view = mount_namespace.plan(p, LaunchContext(env))
    assert any(os.path.realpath(sys.prefix).startswith(k) and ro for k, ro in view.kept.items()), view.kept
    assert dict(view.programs).get(elf) == [], view.programs
