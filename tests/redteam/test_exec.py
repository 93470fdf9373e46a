"""Running code the tenant wrote, and its neighbours: a downloaded
program executed from every place the tenant can write, through the ELF loader
(`ld.so ./binary`), as a shared object (`ctypes.CDLL`), mapped executable, through
/proc/self/fd, and copied into the directories programs are allowed to run from.

The effect checked from outside the sandbox: the program is a copy of /usr/bin/touch told
to create a marker file (or, for a library, a function of it returned a value)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
import kernelutil
import tree_programs
from rtutil import attempt, new_cwd, probe, start, stop, tenant_venv

pytestmark = pytest.mark.redteam

WRITABLE = ["tmp", "home", "cwd", "dev_shm"]

SETUP = r"""
import os, shutil, subprocess, sys
place = {place!r}
d = {{"tmp": "/tmp", "home": os.path.expanduser("~"), "cwd": os.getcwd(), "dev_shm": "/dev/shm",
      "env_bin": os.path.dirname(sys.executable), "base_bin": os.path.dirname(os.path.realpath(sys.executable)),
      "none": None}}[place]
tag = os.urandom(4).hex()
mark = os.path.join(os.getcwd(), f"rt-mark-{{tag}}")
res = {{"mark": mark}}
def plant(src, name):
    dst = os.path.join(d, name)
    res["copy"] = rt_try(lambda: shutil.copy(src, dst) and None)
    if res["copy"] == "ok":
        os.chmod(dst, 0o755)
    return dst
def cleanup(path):
    try:
        os.unlink(path)
    except OSError:
        pass
def run(argv, **kw):
    return rt_try(lambda: subprocess.run(argv, capture_output=True, timeout=30, **kw).returncode)
"""


def _ran(res: dict) -> bool:
    return os.path.exists(res["mark"])


def _cleanup(res: dict) -> None:
    if os.path.exists(res["mark"]):
        os.unlink(res["mark"])


@pytest.mark.parametrize("place", WRITABLE)
@attempt("mount_namespace")
@pytest.mark.covers("exec.allow")
def test_exec_downloaded_binary_from_writable_dir(pool, who, place):
    k = pool.get("free", who)
    res = probe(k, SETUP.format(place=place) + """
dst = plant("/usr/bin/touch", f"rt-tool-{tag}")
res["run"] = run([dst, mark])
cleanup(dst)
rt_out(res)
""")
    try:
        assert res["copy"] == "ok", res  # the tenant can write there: the point is that it cannot run
        assert not _ran(res), f"a program copied into {place} ran: {res}"
    finally:
        _cleanup(res)


@pytest.mark.parametrize("place", WRITABLE)
@attempt("mount_namespace")
@pytest.mark.covers("filesystem.noexec_writable")
def test_ld_so_runs_binary_from_writable_dir(pool, who, place):
    """`ld.so ./binary`: the loader is allowed, it maps the file itself (no execve of it)."""
    k = pool.get("free", who)
    res = probe(k, SETUP.format(place=place) + """
dst = plant("/usr/bin/touch", f"rt-tool-{tag}")
loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
res["run"] = run([loader, dst, mark])
cleanup(dst)
rt_out(res)
""")
    try:
        assert not _ran(res), f"ld.so ran a program copied into {place}: {res}"
    finally:
        _cleanup(res)


@pytest.mark.parametrize("place", WRITABLE)
@attempt("mount_namespace")
@pytest.mark.covers("filesystem.noexec_writable")
def test_ctypes_loads_shared_object_from_writable_dir(pool, who, place):
    """dlopen of a downloaded .so (a copy of libz, so that calling into it proves it loaded)."""
    k = pool.get("free", who)
    res = probe(k, SETUP.format(place=place) + """
import ctypes, zlib
libz = next(l.split()[-1] for l in open("/proc/self/maps") if "/libz.so" in l)
dst = plant(libz, f"rt-lib-{tag}.so")
def load():
    lib = ctypes.CDLL(dst)
    lib.zlibVersion.restype = ctypes.c_char_p
    return "loaded " + lib.zlibVersion().decode()
res["load"] = rt_try(load)
cleanup(dst)
rt_out(res)
""")
    assert not str(res["load"]).startswith("loaded"), f"a shared object copied into {place} was loaded: {res}"


@pytest.mark.parametrize("place", ["tmp", "dev_shm"])
@attempt("mount_namespace")
@pytest.mark.covers("filesystem.noexec_writable")
def test_mmap_prot_exec_of_file_in_writable_dir(pool, who, place):
    k = pool.get("free", who)
    res = probe(k, SETUP.format(place=place) + """
import mmap
dst = plant("/usr/bin/true", f"rt-code-{tag}")
fd = os.open(dst, os.O_RDONLY)
def m():
    mm = mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC)
    mm.close()
res["map"] = rt_try(m)
os.close(fd)
cleanup(dst)
rt_out(res)
""")
    assert res["map"] != "ok", f"a file in {place} was mapped executable: {res}"


@attempt("mount_namespace")
def test_exec_through_proc_self_fd(pool, who):
    k = pool.get("free", who)
    res = probe(k, SETUP.format(place="tmp") + """
dst = plant("/usr/bin/touch", f"rt-tool-{tag}")
fd = os.open(dst, os.O_RDONLY)
res["run"] = run([f"/proc/self/fd/{fd}", mark], pass_fds=(fd,))
os.close(fd)
cleanup(dst)
rt_out(res)
""")
    try:
        assert not _ran(res), res
    finally:
        _cleanup(res)


@attempt("trusted_start+mount_namespace")
def test_program_copied_into_base_interpreter_dir(pool, who):
    """The base interpreter's directory (here under /root, root's home): {python} grants the
    interpreter file in it, not the directory, and the directory is read-only."""
    k = pool.get("free", who)
    res = probe(k, SETUP.format(place="base_bin") + """
dst = plant("/usr/bin/touch", f"rt-tool-{tag}")
res["run"] = run([dst, mark])
res["dst"] = dst
cleanup(dst)
rt_out(res)
""")
    try:
        assert not _ran(res), f"a program copied into the interpreter's directory ran: {res}"
    finally:
        _cleanup(res)
        if res.get("copy") == "ok" and os.path.exists(res["dst"]):
            os.unlink(res["dst"])


@pytest.fixture(scope="module")
def venv_kernel(mwho):
    """A kernel whose environment lies in the tenant's working directory (the setup.sh layout)."""
    cwd = new_cwd(mwho)
    py = tenant_venv(cwd, mwho)
    try:
        k = start("free", mwho, cwd=cwd, python=py, spec_suffix="-venv")
    except RuntimeError as e:
        yield {"refused_start": str(e)}
        return
    try:
        yield {"kernel": k}
    finally:
        stop(k)
        shutil.rmtree(cwd, ignore_errors=True)


@attempt("trusted_start+mount_namespace")
def test_program_copied_into_environment_bin(venv_kernel):
    if "refused_start" in venv_kernel:  # a tenant-writable environment is refused outright
        assert "writable" in venv_kernel["refused_start"], venv_kernel["refused_start"]
        return
    res = probe(venv_kernel["kernel"], SETUP.format(place="env_bin") + """
dst = plant("/usr/bin/touch", f"rt-tool-{tag}")
res["run"] = run([dst, mark])
cleanup(dst)
rt_out(res)
""")
    try:
        assert not _ran(res), f"a program copied into the environment's bin ran: {res}"
    finally:
        _cleanup(res)


# --------------------------------------------------------------------------- offline


@attempt("mount_namespace")
@pytest.mark.covers("exec.allow")
def test_offline_runs_a_system_program(pool, who):
    k = pool.get("offline", who)
    res = probe(k, SETUP.format(place="none") + """
res["run"] = run(["/usr/bin/touch", mark])
rt_out(res)
""")
    try:
        assert not _ran(res), res
    finally:
        _cleanup(res)


@pytest.mark.parametrize("view", [pytest.param("offline", marks=attempt("mount_namespace")),
                                  pytest.param("no-mount-view", marks=attempt("landlock"))])
@pytest.mark.covers("exec.allow")
def test_offline_runs_an_elf_program_from_the_environments_bin(pool, kernels, who, view):
    """{python} grants a virtual environment's own bin directory whole, for its interpreter links
    and console scripts; a wheel can put an ELF program there too (ruff, uv, ninja, cmake), and
    under offline ({python} only) `ruff` then ran by execve as well as through the loader. The
    effect checked: its exit status 0 and the version it prints. The control, in the same cell: a
    console script of that directory (pip, a Python script run by the granted interpreter) still
    runs. `no-mount-view`: offline with the mount namespace off (a container that allows none),
    where Landlock's exec grant of that bin leaves the program out."""
    program = os.path.join(sys.prefix, "bin", "ruff")
    if not tree_programs.installed("venv"):
        pytest.skip(f"{program} is not installed here (scripts/setup.sh installs ruff)")
    if view == "offline":
        k = pool.get("offline", who)
    else:
        kernelutil.write_profile("rt-offline-no-view", "extends: offline\nenforcement:\n  mount_namespace: 'off'\n")
        # (without a mount namespace the launcher refuses a connection file under the shared /tmp)
        k = kernels("rt-offline-no-view", who, connection_dir=kernelutil.connection_dir(who, "/var/tmp"))
    r = k.ok(f"""
import subprocess, sys
for argv in ([{program!r}, "--version"], [{os.path.join(sys.prefix, "bin", "pip")!r}, "--version"]):
    try:
        p = subprocess.run(argv, capture_output=True, timeout=60)
        print("RAN", p.returncode, (p.stdout + p.stderr).decode(errors="replace").splitlines()[:1])
    except OSError as e:
        print("REFUSED", e.errno)
""", timeout=120)
    ruff, pip = r.stdout.strip().splitlines()[-2:]
    assert ruff.startswith("REFUSED"), f"offline ran {program}: {ruff}"
    assert pip.startswith("RAN 0") and "pip" in pip, f"the environment's console script did not run: {r.stdout}"


@attempt("mount_namespace")
def test_offline_shell_line(pool, who):
    k = pool.get("offline", who)
    r = k.run("import os; mark = os.path.join(os.getcwd(), 'rt-shell-mark'); print(mark)\n!touch rt-shell-mark")
    mark = os.path.join(k.cwd, "rt-shell-mark")
    try:
        assert not os.path.exists(mark), f"a shell line ran a program under offline: {r}"
    finally:
        if os.path.exists(mark):
            os.unlink(mark)


# Programs kept beside libraries rather than in a bin directory: git's helpers (and git itself),
# Debian's /usr/libexec programs. The loader maps them as readily as /usr/bin's.
HELPERS = [("/usr/lib/git-core/git", "init -q {mark}"), ("/usr/libexec/man-db/manconv", "-f UTF-8 -t UTF-8 /etc/hostname")]


@pytest.mark.parametrize("program,args", HELPERS, ids=["git-core", "libexec"])
@attempt("mount_namespace")
@pytest.mark.covers("exec.allow")
def test_offline_runs_helper_program_through_ld_so(pool, who, program, args):
    """Under offline ({python} only) `ld.so /usr/lib/git-core/git` ran git, and `ld.so` any
    program in /usr/libexec: their directories hold programs, not libraries, and were not
    mounted noexec like /usr/bin. The effect checked: git made a repository; manconv (which
    writes to stdout) succeeded, and the probe then marks it."""
    if not os.path.exists(program):
        pytest.skip(f"{program} is not installed here")
    k = pool.get("offline", who)
    res = probe(k, SETUP.format(place="none") + f"""
loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
res["run"] = run([loader, {program!r}] + {args!r}.format(mark=mark).split())
if res["run"] == 0 and not os.path.exists(mark):
    open(mark, "w").close()
rt_out(res)
""")
    try:
        assert not _ran(res), f"ld.so ran {program} under offline: {res}"
    finally:
        if os.path.isdir(res["mark"]):
            shutil.rmtree(res["mark"])
        _cleanup(res)


@attempt("mount_namespace")
def test_offline_runs_system_program_through_ld_so(pool, who):
    """NEW: offline allows only {python}, which includes the ELF loader; the loader maps any
    program it is given, so `ld.so /usr/bin/touch` (or /bin/bash) runs under offline."""
    k = pool.get("offline", who)
    res = probe(k, SETUP.format(place="none") + """
loader = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
res["run"] = run([loader, "/usr/bin/touch", mark])
rt_out(res)
""")
    try:
        assert not _ran(res), f"ld.so ran /usr/bin/touch under offline: {res}"
    finally:
        _cleanup(res)


@pytest.mark.parametrize("kind", list(tree_programs.TREES))
@attempt("mount_namespace")
@pytest.mark.covers("exec.allow")
def test_offline_runs_library_tree_program_through_ld_so(pool, who, kind):
    """Under offline ({python} only) `ld.so /usr/lib/jvm/*/bin/java -version` ran the JDK (and
    `ld.so` LLVM's and PostgreSQL's programs): the bin directories of packages' own trees below
    the library directories were not mounted noexec like /usr/bin. So did a program kept beside
    its libraries (/usr/lib/chromium/chromium), one in a directory of programs only
    (/usr/lib/systemd's helpers) and an ELF program in the environment's bin (ruff), which no
    bin-directory scan finds. The effect checked: the program's exit status 0 and the version it
    prints (the same cell runs it where exec.allow names the directory:
    tests/layers/test_mount_namespace.py)."""
    program, arg, expect = tree_programs.find(kind)
    k = pool.get("offline", who)
    res = tree_programs.result(k.run(tree_programs.cell(program, arg), timeout=180).stdout)
    assert res[0] is not None, f"the loader did not start: {res}"
    assert not tree_programs.ran(res, expect), f"ld.so ran {program} under offline: {res}"
