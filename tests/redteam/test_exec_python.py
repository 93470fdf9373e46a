"""`{python}` is the interpreter, not its directory.

`offline` allows only `exec.allow: ["{python}"]`. With the kernel's environment built on the
distribution's Python (`/usr/bin/python3 -m venv`), `{python}` used to grant /usr/bin, so under
`offline` bash, gcc, curl, ssh, git and perl all ran; an interpreter in its own prefix (conda,
pyenv) granted that prefix's bin, shared with every program installed there.

Three environments, each started under `offline` as root and as an ordinary user:

- `system_venv`: `/usr/bin/python3 -m venv --system-site-packages`, root-owned (the trusted start
  refuses tenant-writable launch files), seeing this checkout's packages through a .pth;
- `conda_prefix`: an interpreter in its own prefix (a copy of the base interpreter in
  PREFIX/bin with PREFIX/lib/python3.X), next to other programs a conda prefix ships (bash, perl);
- `repo_venv`: this checkout's .venv (whose base interpreter is wherever setup.sh found it).

Every probe also runs the environment's interpreter (the control): a refusal must be of the
program, not of every exec.

The effect checked from outside the sandbox: the program would have created a marker file in
the working directory, or printed what it prints (`ld.so /usr/bin/id`: `uid=`). What must still
work: `subprocess.run([sys.executable, ...])`, multiprocessing (spawn and forkserver), and a
script in a virtual environment's own bin (the environment's bin is not shared with other
programs, so `{python}` keeps it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import kernelutil
import pytest
from testenv import REPO
from rtutil import attempt, probe, see_outer_env, start, stop

pytestmark = pytest.mark.redteam

VER = f"python{sys.version_info.major}.{sys.version_info.minor}"
ENVS = ["system_venv", "conda_prefix", "repo_venv"]
LOADER = "/lib64/ld-linux-x86-64.so.2"


# --------------------------------------------------------------------------- environments


def _see_this_checkout(site_packages: Path) -> None:
    """The environment sees this checkout's packages (ipykernel, sandbox_kernel) and arms the
    child-process guard, as an environment the platform installed the kernel into would."""
    site_packages.mkdir(parents=True, exist_ok=True)
    see_outer_env(site_packages)
    shutil.copy(REPO / "sandbox_kernel_guard.pth", site_packages / "sandbox_kernel_guard.pth")


def _script(path: Path, interpreter: str) -> None:
    """A console script with its environment's interpreter in the shebang (as pip writes them)."""
    path.write_text(f"#!{interpreter}\nimport os, sys\nopen(sys.argv[1], 'w').close()\n")
    path.chmod(0o755)


def build_system_venv(root: Path) -> str | None:
    system = "/usr/bin/python3"
    if not os.path.exists(system):
        return None
    ver = subprocess.run([system, "-c", "import sys; print(f'python{sys.version_info[0]}.{sys.version_info[1]}')"],
                         capture_output=True, text=True).stdout.strip()
    if ver != VER:
        return None  # this checkout's compiled packages would not load in another Python version
    venv = root / "system-venv"
    subprocess.run([system, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True,
                   capture_output=True)
    _see_this_checkout(venv / "lib" / VER / "site-packages")
    _script(venv / "bin" / "rt-touch", str(venv / "bin" / "python"))
    return str(venv / "bin" / "python")


def _standalone_interpreter() -> tuple[str, str] | None:
    """(an interpreter of this Python version that does not load a libpython of its own prefix,
    its standard library directory): copied into another prefix, it runs from there."""
    for exe in dict.fromkeys([os.path.realpath(sys._base_executable), f"/usr/bin/{VER}"]):
        if not os.path.exists(exe):
            continue
        libs = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
        if "libpython" in libs:
            continue
        p = subprocess.run([exe, "-c", "import sys, sysconfig; print(f'python{sys.version_info[0]}."
                                       "{sys.version_info[1]}'); print(sysconfig.get_paths()['stdlib'])"],
                           capture_output=True, text=True)
        ver, stdlib = (p.stdout.split() + ["", ""])[:2]
        if ver == VER and os.path.isdir(stdlib):
            return exe, stdlib
    return None


def build_conda_prefix(root: Path) -> str | None:
    """A prefix of its own (conda's layout): bin/python3.X (a copy of an interpreter, so that it
    finds lib/python3.X here), lib/python3.X with the standard library, and in bin the other
    programs a conda environment ships (bash, perl)."""
    found = _standalone_interpreter()
    if found is None:
        return None
    exe, base_stdlib = found
    prefix = root / "conda"
    (prefix / "bin").mkdir(parents=True)
    shutil.copy2(exe, prefix / "bin" / VER)
    for name in ("python3", "python"):
        (prefix / "bin" / name).symlink_to(VER)
    stdlib = prefix / "lib" / VER
    stdlib.mkdir(parents=True)
    for entry in os.listdir(base_stdlib):
        if entry not in ("site-packages", "dist-packages"):
            (stdlib / entry).symlink_to(os.path.join(base_stdlib, entry))
    site_dir = subprocess.run([str(prefix / "bin" / VER), "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert site_dir.startswith(str(prefix) + "/"), site_dir
    _see_this_checkout(Path(site_dir))
    for prog in ("bash", "perl"):
        if shutil.which(prog):
            shutil.copy2(os.path.realpath(shutil.which(prog)), prefix / "bin" / prog)
    _script(prefix / "bin" / "rt-touch", str(prefix / "bin" / VER))
    return str(prefix / "bin" / "python3")


@pytest.fixture(scope="module")
def envs():
    root = Path(kernelutil.PREFIX) / "exec-python-envs"  # root-owned, 0755 up to /var/tmp (sticky)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o755)
    out = {"system_venv": build_system_venv(root), "conda_prefix": build_conda_prefix(root),
           "repo_venv": sys.executable}
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=ENVS)
def offline(request, mwho, envs):
    py = envs[request.param]
    if py is None:
        pytest.skip(f"{request.param}: no interpreter of {VER} to build it from (/usr/bin/python3, or a base "
                    f"interpreter that does not load its own libpython)")
    # PATH as a platform sets it: the kernel's environment first (`!python` is that python)
    path = os.pathsep.join([os.path.dirname(py), "/usr/local/bin", "/usr/bin", "/bin"])
    k = start("offline", mwho, python=py, spec_suffix=f"-{request.param.replace('_', '-')}", env={"PATH": path})
    k.env_name, k.python = request.param, py
    try:
        yield k
    finally:
        stop(k)


# --------------------------------------------------------------------------- attempts

SETUP = r"""
import os, subprocess, sys
tag = os.urandom(4).hex()
mark = os.path.join(os.getcwd(), f"rt-mark-{tag}")
res = {"mark": mark, "exe": sys.executable}
def run(argv, **kw):
    def go():
        p = subprocess.run(argv, capture_output=True, timeout=60, text=True, **kw)
        res["out"] = (p.stdout + p.stderr)[-500:]
        return p.returncode
    return rt_try(go)
prefix_bin = os.path.dirname(os.path.realpath(sys.executable))
"""


def _ran(res: dict) -> bool:
    return os.path.exists(res["mark"])


CONTROL = r"""
def _control():
    p = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=60)
    return p.stdout.strip()
res["control"] = rt_try(_control)
"""


def _probe(k, code: str) -> dict:
    """Run `code`, then the interpreter itself (the control: a refusal must be of the program,
    not of every exec)."""
    res = probe(k, SETUP + code.replace("rt_out(res)", CONTROL + "rt_out(res)"))
    if _ran(res):
        os.unlink(res["mark"])
        res["ran"] = True
    assert res["control"] == "42", f"the environment's own interpreter did not run: {res}"
    return res


def _needs(prog: str) -> str:
    path = shutil.which(prog, path="/usr/bin:/bin")
    if not path:
        pytest.skip(f"{prog} is not installed here")
    return path


# Each runs a program that, had it run, would have created the marker (or printed SIGN).
PROGRAMS = {
    "bash": (["/bin/bash", "-c", 'echo > "$0"', "{mark}"], None),
    "sh": (["/bin/sh", "-c", 'echo > "$0"', "{mark}"], None),
    "perl": (["/usr/bin/perl", "-e", 'open(F, ">", $ARGV[0])', "{mark}"], None),
    "touch": (["/usr/bin/touch", "{mark}"], None),
    "gcc": (["/usr/bin/gcc", "--version"], "Free Software Foundation"),
    "curl": (["/usr/bin/curl", "--version"], "Protocols:"),
    "git": (["/usr/bin/git", "--version"], "git version"),
    "ssh": (["/usr/bin/ssh", "-V"], "OpenSSH"),
}


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
@attempt("mount_namespace")
def test_offline_runs_system_program_with_env(offline, prog):
    """A system program from /usr/bin (the directory of a distribution's interpreter)."""
    argv, sign = PROGRAMS[prog]
    _needs(os.path.basename(argv[0]))
    res = _probe(offline, f"res['run'] = run([a.replace('{{mark}}', mark) for a in {argv!r}])\nrt_out(res)\n")
    assert not res.get("ran"), f"{prog} ran under offline in {offline.env_name}: {res}"
    assert not (sign and sign in res.get("out", "")), f"{prog} ran under offline in {offline.env_name}: {res}"
    assert res["run"] != 0, res


@attempt("mount_namespace")
def test_offline_shell_line_with_env(offline):
    """`!bash -c ...`, `!/bin/sh -c ...` and a line that needs the shell (a redirection): no shell
    may start. A plain `!python -c ...` line still runs: where the profile lets no shell run, the
    kernel runs a one-command line without one (sandbox_kernel.shellless)."""
    mark = os.path.join(offline.cwd, f"rt-shell-{os.urandom(4).hex()}")
    r = offline.run(f"!bash -c 'echo > {mark}'\n!/bin/sh -c 'echo > {mark}'\n!echo > {mark}\n!python -c \"print(6 * 7)\"")
    try:
        assert not os.path.exists(mark), f"a shell line ran under offline in {offline.env_name}: {r}"
    finally:
        if os.path.exists(mark):
            os.unlink(mark)
    assert "42" in r.stdout, f"`!python -c` did not run under offline in {offline.env_name}: {r}"


@pytest.mark.parametrize("target", ["id", "touch", "bash"])
@attempt("mount_namespace")
def test_offline_ld_so_runs_system_program_with_env(offline, target):
    """`ld.so /usr/bin/id`: the loader is granted (every dynamic program needs it) and maps the
    program itself, with no execve of it: /usr/bin must be mounted noexec but for the interpreter."""
    path = _needs(target)
    argv = {"id": [LOADER, path], "touch": [LOADER, path, "{mark}"],
            "bash": [LOADER, path, "-c", 'echo > "$0"', "{mark}"]}[target]
    res = _probe(offline, f"res['run'] = run([a.replace('{{mark}}', mark) for a in {argv!r}])\nrt_out(res)\n")
    assert not res.get("ran"), f"ld.so ran {path} under offline in {offline.env_name}: {res}"
    assert "uid=" not in res.get("out", ""), f"ld.so ran {path} under offline in {offline.env_name}: {res}"


@pytest.mark.parametrize("how", ["exec", "ld.so"])
@attempt("mount_namespace")
def test_offline_runs_program_beside_interpreter(offline, how):
    """Whatever else lies in the interpreter's own directory (a conda prefix's bash, perl and
    console scripts; /usr/bin's programs): never granted by {python}, neither run directly nor
    mapped by the ELF loader."""
    res = _probe(offline, r"""
progs = [os.path.join(prefix_bin, n) for n in ("bash", "perl", "rt-touch")]
res["progs"] = progs = [p for p in progs if os.path.exists(p) and (HOW == "exec" or not p.endswith("rt-touch"))]
res["runs"] = {}
for p in progs:
    argv = {"bash": [p, "-c", 'echo > "$0"', mark], "perl": [p, "-e", 'open(F, ">", $ARGV[0])', mark],
            "rt-touch": [p, mark]}[os.path.basename(p)]
    if HOW == "ld.so":
        argv = [os.path.realpath("/lib64/ld-linux-x86-64.so.2")] + argv
    res["runs"][p] = run(argv)
rt_out(res)
""".replace("HOW", repr(how)))
    if not res["progs"]:
        pytest.skip(f"no bash, perl or script beside the interpreter of {offline.env_name}")
    assert not res.get("ran"), f"a program beside the interpreter ran under offline ({how}) in {offline.env_name}: {res}"
    if how == "exec":  # the refusal names the rule, and says what {python} is
        r = offline.run(f"import subprocess; subprocess.run([{res['progs'][0]!r}, '--version'])")
        assert "{python} is the interpreter, not the directory" in r.output + r.traceback, r


# --------------------------------------------------------------------------- what must still work


@attempt("mount_namespace")
def test_offline_runs_only_the_interpreter(offline):
    """Only the interpreter: /usr/bin/touch is refused while sys.executable (through a venv's
    symlink chain), `python -m`, multiprocessing spawn and forkserver, and a script in a virtual
    environment's own bin (that bin belongs to the environment) still run."""
    script = os.path.join(os.path.dirname(offline.python), "rt-touch")
    res = _probe(offline, r"""
import multiprocessing as mp
res["touch"] = run(["/usr/bin/touch", mark])
res["m"] = run([sys.executable, "-m", "json.tool", "--help"])
for method in ("spawn", "forkserver"):
    try:
        with mp.get_context(method).Pool(2) as pool:
            res[method] = pool.map(abs, [-1, -2, -3])
    except Exception as e:
        res[method] = f"{type(e).__name__}: {e}"
if SCRIPT:
    res["script"] = run([SCRIPT, mark + "-script"])
    res["script_ran"] = os.path.exists(mark + "-script")
    if res["script_ran"]:
        os.unlink(mark + "-script")
rt_out(res)
""".replace("SCRIPT", repr(script if offline.env_name == "system_venv" else "")))
    assert not res.get("ran"), f"/usr/bin/touch ran under offline in {offline.env_name}: {res}"
    assert res["m"] == 0, res
    assert res["spawn"] == [1, 2, 3] and res["forkserver"] == [1, 2, 3], res
    if offline.env_name == "system_venv":
        assert res["script_ran"] and res["script"] == 0, f"the environment's own script did not run: {res}"
