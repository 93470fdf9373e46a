"""Programs kept outside the program directories (layers/program_files.py): what counts as a
program, how a tree is grouped into mounts, and the host cache's trust and freshness. No kernel
here: the red-team attempts (redteam/test_exec.py::test_offline_runs_library_tree_program_through_ld_so,
::test_offline_runs_an_elf_program_from_the_environments_bin) and their controls
(layers/test_mount_namespace.py) run the programs through real kernels."""

from __future__ import annotations

import glob
import os
import shutil

import pytest
from testenv import IS_ROOT

from sandbox_kernel.layers import program_files

TRUE = "/usr/bin/true"


def _lib() -> str:
    found = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libm.so.6") + glob.glob("/lib*/libm.so.6")
                   + glob.glob("/usr/lib*/libm.so.6"))
    if not found or not os.path.exists(TRUE):
        pytest.skip("no /usr/bin/true or libm.so.6 to copy here")
    return found[0]


@pytest.mark.parametrize("name, lib", [("libm.so", True), ("libm.so.6", True), ("libfoo.so.1.2.3", True),
                                       ("_ssl.cpython-311-x86_64-linux-gnu.so", True), ("libfoo.so.x", False),
                                       ("chromium", False), ("so", False), (".so.1", False), ("x.sox", False)])
def test_library_names(name, lib):
    assert program_files.is_library_name(name) is lib


def test_what_counts_as_a_program(tmp_path):
    """An ELF executable with an entry point, whatever its mode; not a relocatable object, a text
    file, a truncated header, a FIFO (opened without blocking) or a symbolic link."""
    prog = tmp_path / "prog"
    shutil.copy(TRUE, prog)
    os.chmod(prog, 0o644)  # the loader maps it all the same
    assert program_files.is_program(str(prog))
    head = prog.read_bytes()[:64]
    rel = tmp_path / "x.o"
    rel.write_bytes(head[:16] + (1).to_bytes(2, "little") + head[18:])  # e_type ET_REL
    assert not program_files.is_program(str(rel))
    no_entry = tmp_path / "noentry"
    no_entry.write_bytes(head[:24] + bytes(8) + head[32:])
    assert not program_files.is_program(str(no_entry))
    (tmp_path / "text").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "short").write_bytes(head[:20])
    os.mkfifo(tmp_path / "fifo")
    os.symlink(prog, tmp_path / "link")
    for name in ("text", "short", "fifo", "link"):
        assert not program_files.is_program(str(tmp_path / name)), name


def _tree(tmp_path):
    """root/ with a library, and below it: progs/ (programs only, one in a subdirectory), mixed/
    (a library beside a program, an ELF named like data), split/ (programs only, but granted whole
    elsewhere: never taken whole), data/ (no program), link -> a program (not followed)."""
    lib = _lib()
    root = tmp_path / "root"
    for d in ("progs/sub", "mixed", "split", "data", "skipped"):
        (root / d).mkdir(parents=True)
    shutil.copy(lib, root / "libroot.so.6")
    shutil.copy(TRUE, root / "progs" / "a")
    shutil.copy(TRUE, root / "progs" / "sub" / "b")
    shutil.copy(lib, root / "mixed" / "libx.so")
    shutil.copy(TRUE, root / "mixed" / "helper")
    shutil.copy(TRUE, root / "mixed" / "named.py")
    shutil.copy(TRUE, root / "split" / "ruff")
    (root / "split" / "pip").write_text("#!/usr/bin/python3\n")
    (root / "data" / "readme").write_text("x")
    shutil.copy(TRUE, root / "skipped" / "c")
    os.symlink(root / "progs" / "a", root / "link")
    return root


def test_a_tree_is_mounted_by_directory_where_it_holds_no_library(tmp_path):
    root = _tree(tmp_path)
    found = program_files.scan([str(root)], [str(root / "skipped")], [str(root / "split")])
    assert found == sorted([str(root / "mixed" / "helper"), str(root / "progs"), str(root / "split" / "ruff")]), found


def test_a_kernelspecs_own_init_program_is_not_a_tenants_program(tmp_path):
    """sandbox-kernel-init (init_helper), which install puts in each kernelspec, runs as pid 1
    before the view is built: the scan passes it over there, so a first install's list (scanned
    before the kernelspec exists) is not stale once it does. Anywhere else, or under another
    name, an ELF program is a program."""
    from sandbox_kernel import init_helper

    root = tmp_path / "env"
    spec, other = root / "share" / "jupyter" / "kernels" / "sandbox-free", root / "share" / "elsewhere"
    spec.mkdir(parents=True)
    other.mkdir(parents=True)
    (spec / "kernel.json").write_text("{}")
    shutil.copy(TRUE, spec / init_helper.FILE_NAME)
    assert program_files.scan([str(root)], []) == []
    shutil.copy(TRUE, other / init_helper.FILE_NAME)  # not in a kernelspec
    shutil.copy(TRUE, spec / "renamed")
    assert program_files.scan([str(root)], []) == [str(root / "share")]


def test_a_root_without_a_library_is_never_taken_whole(tmp_path):
    root = tmp_path / "etc"
    (root / "tool").mkdir(parents=True)
    shutil.copy(TRUE, root / "prog")
    shutil.copy(TRUE, root / "tool" / "t")
    (root / "conf").write_text("x")
    assert program_files.scan([str(root)], []) == [str(root / "prog"), str(root / "tool")]


def test_a_split_directory_stays_split_in_a_root_without_a_library(tmp_path):
    """A venv of pure-Python packages holds no library; its bin, which {python} grants whole, must
    still list the wheel's program itself, not the bin (a grant would cover the bin)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(TRUE, venv / "bin" / "ruff")
    (venv / "bin" / "pip").write_text("#!/usr/bin/python3\n")
    assert program_files.scan([str(venv)], [], [str(venv / "bin")]) == [str(venv / "bin" / "ruff")]


def test_roots_within_another_are_scanned_once(tmp_path):
    root = _tree(tmp_path)
    assert program_files.distinct_roots([str(root / "progs"), str(root), str(tmp_path / "gone")]) == [str(root)]


@pytest.fixture
def host_cache(tmp_path):
    """A host cache path in a directory as root's cache directory is (root's, 0755, in /var/cache)."""
    if not IS_ROOT:
        pytest.skip("the host cache is root's: written by a root install only")
    import tempfile

    d = tempfile.mkdtemp(prefix="sbx-test-host-cache-", dir="/var/cache")  # (/tmp is writable by all)
    os.chmod(d, 0o755)
    program_files._MEMO.clear()
    yield os.path.join(d, "program-files.json")
    program_files._MEMO.clear()
    shutil.rmtree(d)


def test_the_host_cache_is_reused_until_its_tree_changes(tmp_path, host_cache, monkeypatch):
    root = _tree(tmp_path)
    scans = []
    real_scan = program_files.scan
    monkeypatch.setattr(program_files, "scan", lambda *a: scans.append(a) or real_scan(*a))
    args = ([str(root)], [str(root / "skipped")], [str(root / "split")])
    first = program_files.programs(*args, host_cache=host_cache)
    assert len(scans) == 1 and os.path.exists(host_cache)
    program_files._MEMO.clear()
    assert program_files.programs(*args, host_cache=host_cache) == first and len(scans) == 1  # unchanged tree
    shutil.copy(TRUE, root / "data" / "new")  # a program installed since
    program_files._MEMO.clear()
    assert program_files.programs(*args, check=False, host_cache=host_cache) == first and len(scans) == 1
    program_files._MEMO.clear()
    now = program_files.programs(*args, host_cache=host_cache)
    assert str(root / "data") in now and len(scans) == 2, now
    program_files._MEMO.clear()
    assert program_files.programs([str(root)], [], host_cache=host_cache) != now and len(scans) == 3  # other skip


@pytest.mark.parametrize("spoil", ["group-writable file", "other-writable directory", "not root's", "malformed",
                                   "another scan", "in /tmp"])
def test_a_host_cache_root_alone_could_write_is_the_only_one_taken(tmp_path, host_cache, spoil):
    root = _tree(tmp_path)
    program_files.programs([str(root)], [], host_cache=host_cache)
    assert program_files.read_host_cache(host_cache)
    if spoil == "group-writable file":
        os.chmod(host_cache, 0o664)
    elif spoil == "other-writable directory":
        os.chmod(os.path.dirname(host_cache), 0o777)
    elif spoil == "not root's":
        os.chown(host_cache, 1000, 1000)
    elif spoil == "malformed":
        with open(host_cache, "w") as fh:
            fh.write('{"scan": 1, "roots": [')
    elif spoil == "another scan":
        with open(host_cache) as fh:
            text = fh.read()
        with open(host_cache, "w") as fh:
            assert f'"scan":{program_files.SCAN}' in text
            fh.write(text.replace(f'"scan":{program_files.SCAN}', f'"scan":{program_files.SCAN - 1}'))
    else:  # a copy in a directory below /tmp, which every account can write
        copy = tmp_path / "program-files.json"
        shutil.copy(host_cache, copy)
        os.chmod(tmp_path, 0o755)
        host_cache = str(copy)
    assert program_files.read_host_cache(host_cache) == {}


def test_another_interpreters_venv_bin_does_not_spoil_the_other_roots_entries(tmp_path, host_cache, monkeypatch):
    """The venv bin split out (never taken whole) is one interpreter's: the entries of roots that
    do not hold it (/usr, /etc) serve kernels of every interpreter without a new scan."""
    root = _tree(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(TRUE, venv / "bin" / "ruff")
    scans = []
    real_scan = program_files.scan
    monkeypatch.setattr(program_files, "scan", lambda *a: scans.append(a[0]) or real_scan(*a))
    first = program_files.programs([str(root), str(venv)], [], [str(venv / "bin")], host_cache=host_cache)
    assert str(venv / "bin" / "ruff") in first and len(scans) == 2, first
    program_files._MEMO.clear()
    other = tmp_path / "other-venv"
    other.mkdir()
    program_files.programs([str(root), str(other)], [], [str(other / "bin")], host_cache=host_cache)
    assert scans[2:] == [[str(other)]], scans
