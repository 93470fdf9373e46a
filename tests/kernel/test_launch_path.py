"""Trusted start (docs/architecture.md): nothing a tenant can write runs or is read before confinement.

The launcher runs as `python -I -S boot.py run ...`: no site, so no .pth/sitecustomize;
only the standard library and this package are importable; the connection file is read
once and validated; files on the launch path must not be writable by a non-root tenant.
"""

import json
import os
import subprocess
import sys
import sysconfig
import uuid

import kernelutil
import pytest
from testenv import IS_ROOT

from sandbox_kernel import connection, policy_cache, startup
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.install import kernel_argv

SITE_PACKAGES = sysconfig.get_paths()["purelib"]


def test_kernelspec_argv_is_the_trusted_start():
    argv = kernel_argv("free")
    assert argv[1:3] == ["-I", "-S"] and argv[3].endswith("/sandbox_kernel/boot.py"), argv
    assert argv[4] == "run"


@pytest.mark.kernel
def test_boot_refuses_to_run_with_site():
    boot = kernel_argv("free")[3]
    p = subprocess.run([sys.executable, "-I", boot, "run", "--profile", "free", "--", "/usr/bin/true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "must be started as `python -I -S" in p.stderr, p


@pytest.mark.kernel
def test_launch_path_imports_only_the_standard_library_and_the_package(tmp_path):
    """Every module the launcher has loaded when it execs (after every layer, in the process that
    becomes the kernel) comes from the standard library or from the sandbox_kernel package."""
    cache = tmp_path / "policy-cache.json"
    policy_cache.write(str(cache), ["free"])
    boot = kernel_argv("free")[3]
    code = (f"import os, sys, json, runpy\n"
            f"sys.argv = [{boot!r}, 'run', '--profile', 'free', '--policy-cache', {str(cache)!r}, '--', "
            f"{sys.executable!r}, '-c', 'pass']\n"
            "def dump(*args):\n"
            "    print(json.dumps({n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())}), flush=True)\n"
            "    os._exit(0)\n"
            "os.execve = dump\n"
            f"runpy.run_path({boot!r}, run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    modules = json.loads(p.stdout.strip().splitlines()[-1])
    stdlib = os.path.dirname(os.__file__)
    package = os.path.dirname(os.path.realpath(boot))
    foreign = sorted(n for n, f in modules.items()
                     if f and not os.path.realpath(f).startswith((stdlib + "/", package + "/")))
    assert "sandbox_kernel.launcher" in modules and "sandbox_kernel.layers.seccomp" in modules
    assert not foreign, f"the launcher loaded modules from outside the standard library and the package: {foreign}"
    assert "yaml" not in modules and "jsonschema" not in modules  # a cache hit needs neither


def _probe_pth(marker: str) -> str:
    """A .pth line that, when SBX_PTH_PROBE names a file, appends this interpreter's confinement."""
    return ("import os; f = os.environ.get('SBX_PTH_PROBE'); f and open(f, 'a').write(str(os.getpid()) + ' ' + "
            "' '.join(l.split()[1] for l in open('/proc/self/status') if l.startswith(('Seccomp:', 'NoNewPrivs:')))"
            f" + ' {marker}\\n')\n")


@pytest.mark.kernel
def test_pth_planted_in_site_packages_never_runs_unconfined(who, tmp_path):
    """A .pth planted in the environment's site-packages (as a tenant who may pip-install there
    could) runs in every interpreter that reads site-packages. The launcher reads none: every
    interpreter that does run it is already confined (Seccomp 2, NoNewPrivs 1)."""
    marker = uuid.uuid4().hex
    pth = os.path.join(SITE_PACKAGES, f"zz_sbx_probe_{marker}.pth")
    with open(pth, "w") as fh:
        fh.write(_probe_pth(marker))
    try:
        cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
        probe = os.path.join(cwd, "probe.log")
        p = kernelutil.run_launcher("free", sys.executable, "-c", "import subprocess, sys; "
                                    "subprocess.run([sys.executable, '-c', 'pass'])",
                                    user=who.pw_name if who else None, cwd=cwd, env={"SBX_PTH_PROBE": probe})
        assert p.returncode == 0, p.stderr[-2000:]
        records = open(probe).read().splitlines()
    finally:
        os.unlink(pth)
    # (a virtual environment's interpreter may read its site-packages twice, through lib64)
    assert len({r.split()[0] for r in records}) == 2, records  # the wrapped interpreter and its child
    assert all(r.split()[1:] == ["1", "2", marker] for r in records), records  # NoNewPrivs 1, Seccomp 2


@pytest.mark.kernel
def test_stdlib_and_environment_are_read_only_inside(make_kernel, who):
    """A sitecustomize.py in the standard library, or a module in the environment, would run at
    the next start: inside the sandbox both are read-only (root: read-only mounts where they lie
    in a writable directory, else Landlock; a user: also ordinary permissions)."""
    k = make_kernel("free", user=who)
    r = k.ok("""
        import errno, os, sys, sysconfig
        out = []
        for d in (os.path.dirname(os.__file__), sysconfig.get_paths()["purelib"], os.path.dirname(sys.executable)):
            try:
                open(os.path.join(d, "sitecustomize.py"), "w").close()
                out.append("written")
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        print(*out)
        """)
    assert all(x in ("EROFS", "EACCES", "EPERM") for x in r.stdout.split()), r.stdout


@pytest.mark.kernel
@pytest.mark.skipif(not IS_ROOT, reason="needs root to create the ordinary user")
def test_launch_file_writable_by_the_tenant_stops_the_start(unprivileged, tmp_path):
    """A profile directory the tenant owns is read at every start: refuse, naming it."""
    d = kernelutil.PREFIX / f"tenant-profiles-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    (d / "mine.yaml").write_text("extends: free\n")
    os.chown(d, unprivileged.pw_uid, unprivileged.pw_gid)
    env = {"SANDBOX_KERNEL_PROFILE_PATH": f"{d}:{os.environ['SANDBOX_KERNEL_PROFILE_PATH']}"}
    p = kernelutil.run_launcher("mine", user=unprivileged.pw_name, cwd=kernelutil.user_workdir(unprivileged), env=env)
    assert p.returncode == 1, p
    assert "trusted_start" in p.stderr and str(d) in p.stderr and f"uid {unprivileged.pw_uid}" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.kernel
def test_cache_miss_refuses_yaml_from_a_writable_site_packages():
    """Without a cache entry the launcher would import YAML and JSON Schema code from
    site-packages; where that lies in a directory the tenant may write (here: the working
    directory), it refuses and says how to refresh the cache."""
    p = kernelutil.run_launcher("free", cwd=os.path.dirname(SITE_PACKAGES))
    assert p.returncode == 1, p
    assert "validated-policy cache" in p.stderr and "sandbox-kernel install" in p.stderr, p.stderr


# --------------------------------------------------------------------------- connection file


def _conn(**over) -> dict:
    info = {"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "control_port": 50004,
            "hb_port": 50005, "ip": "127.0.0.1", "key": uuid.uuid4().hex, "transport": "tcp",
            "signature_scheme": "hmac-sha256", "kernel_name": "sandbox-free"}
    info.update(over)
    return {k: v for k, v in info.items() if v is not None}


@pytest.mark.parametrize("over,fragment", [
    ({"shell_port": 22}, "shell_port is 22"),
    ({"hb_port": 50001}, "not distinct"),
    ({"iopub_port": "50002"}, "iopub_port is '50002'"),
    ({"ip": "0.0.0.0"}, "not a loopback address"),
    ({"ip": "10.0.0.5"}, "--allow-kernel-ip 10.0.0.5"),
    ({"key": ""}, "HMAC key is empty"),
    ({"signature_scheme": "none"}, "not an HMAC scheme"),
    ({"transport": "udp"}, "transport 'udp'"),
])
def test_connection_file_values_a_manager_could_not_have_chosen(tmp_path, over, fragment):
    f = tmp_path / "kernel-x.json"
    f.write_text(json.dumps(_conn(**over)))
    os.chmod(f, 0o600)
    with pytest.raises(SandboxError, match="refusing to start") as e:
        connection.read(str(f))
    assert fragment in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize("text,fragment", [
    ("[" * 30000 + "]" * 30000, "nested too deeply"),
    ('{"a":' * 10000 + "1" + "}" * 10000, "nested too deeply"),
    ("{\"shell_port\": 1,", "not valid JSON"),
    ("[]", "not a JSON object"),
])
@pytest.mark.kernel
def test_connection_file_that_is_no_connection_file(who, tmp_path, text, fragment):
    """Refused with the file and the reason by the launcher, as root and as a user: never a traceback."""
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    f = os.path.join(cwd, "kernel-x.json")
    with open(f, "w") as fh:
        fh.write(text)
    os.chmod(f, 0o600)
    if who:
        os.chown(f, who.pw_uid, who.pw_gid)
    p = kernelutil.run_launcher("free", user=who.pw_name if who else None, cwd=cwd, connection_file=f)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"connection file {f}" in p.stderr and fragment in p.stderr and "refusing to start" in p.stderr, p.stderr


def test_connection_file_shape(tmp_path):
    good = tmp_path / "kernel-good.json"
    good.write_text(json.dumps(_conn()))
    os.chmod(good, 0o600)
    assert connection.read(str(good)).ports == [50001, 50002, 50003, 50004, 50005]
    assert connection.read(str(good)).sha256 == __import__("hashlib").sha256(good.read_bytes()).hexdigest()
    link = tmp_path / "kernel-link.json"
    link.symlink_to(good)
    with pytest.raises(SandboxError, match="symbolic link"):
        connection.read(str(link))
    os.chmod(good, 0o620)
    with pytest.raises(SandboxError, match="writable by group or others"):
        connection.read(str(good))
    os.chmod(good, 0o600)
    if IS_ROOT:
        os.chown(good, 12345, 12345)
        with pytest.raises(SandboxError, match="owned by uid 12345"):
            connection.read(str(good))
    remote = tmp_path / "kernel-remote.json"
    remote.write_text(json.dumps(_conn(ip="10.0.0.5")))
    os.chmod(remote, 0o600)
    assert connection.read(str(remote), ["10.0.0.5"]).info["ip"] == "10.0.0.5"


@pytest.mark.kernel
def test_connection_file_is_read_only_inside(who, tmp_path):
    """The kernel's own connection file cannot be rewritten from inside (it is bound read-only)."""
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    f = os.path.join(kernelutil.connection_dir(who), "kernel-ro.json")
    with open(f, "w") as fh:
        json.dump(_conn(), fh)
    os.chmod(f, 0o600)
    if who:
        os.chown(f, who.pw_uid, who.pw_gid)
    p = kernelutil.run_launcher("free", "/bin/sh", "-c", f"echo ' ' >> {f}", user=who.pw_name if who else None,
                                cwd=cwd, connection_file=f)
    assert p.returncode != 0 and "Read-only file system" in p.stderr, p


@pytest.mark.kernel
def test_connection_file_changed_after_validation_stops_the_kernel(who, tmp_path):
    """A file changed (from outside) between the launcher's read and the kernel's cannot take effect."""
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    ready, go = (os.path.join(cwd, n) for n in ("ready", "go"))
    f = os.path.join(kernelutil.connection_dir(who), "kernel-swap.json")
    with open(f, "w") as fh:
        json.dump(_conn(), fh)
    os.chmod(f, 0o600)
    if who:
        os.chown(f, who.pw_uid, who.pw_gid)
    argv = kernelutil.setpriv(who.pw_name) if who else []
    argv += __import__("sandbox_kernel.install", fromlist=["x"]).launch_argv("free", connection_file=f) + [
        "--", "/bin/sh", "-c", f"touch {ready}; while [ ! -e {go} ]; do sleep 0.05; done; "
                               f"exec {sys.executable} -P -m sandbox_kernel -f {f} --profile free"]
    env = dict(os.environ, HOME=who.pw_dir) if who else None
    launcher = subprocess.Popen(argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert kernelutil.wait_for(lambda: os.path.exists(ready), timeout=60)
        with open(f, "a") as fh:  # in place: the read-only bind inside shows the same file
            fh.write(" ")
        open(go, "w").close()
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode == 1, err
    assert "changed after the launcher validated it" in err, err[-2000:]


DEPLOYMENTS = {
    # JupyterLab / Notebook / a JupyterHub single-user server: Jupyter's runtime directory,
    # inside the tenant's writable home
    "runtime-dir-in-home": lambda home, who: _private(os.path.join(home, ".local/share/jupyter/runtime"), who),
    # nbclient / papermill (jupyter_client's KernelManager with no connection_file): mkstemp in /tmp
    "tmp-itself": lambda home, who: "/tmp",
    # the Enterprise Gateway launcher (sandbox_kernel.gateway): a mkdtemp directory under /tmp
    "private-dir-under-tmp": lambda home, who: kernelutil.connection_dir(who),
    # a platform's own directory, outside what the profile makes writable
    "private-dir-elsewhere": lambda home, who: _private(
        __import__("tempfile").mkdtemp(prefix="sbx-rt-", dir="/var/tmp"), who),
}


def _private(d: str, who) -> str:
    """Directory `d` (and the missing ones above it), mode 0700, owned by the kernel's account."""
    made = []
    a = d
    while not os.path.exists(a):
        made.append(a)
        a = os.path.dirname(a)
    os.makedirs(d, mode=0o700, exist_ok=True)
    for m in made + ([] if made else [d]):
        os.chmod(m, 0o700)
        if who:
            os.chown(m, who.pw_uid, who.pw_gid)
    return d


@pytest.mark.kernel
@pytest.mark.parametrize("mountns", ["mount namespace", "no mount namespace"])
@pytest.mark.parametrize("where", sorted(DEPLOYMENTS))
def test_connection_file_where_real_deployments_put_it_starts(who, where, mountns):
    """The connection-file directory check (layers.connection_dir.connection_dir_problem) refuses none
    of the places Jupyter's servers and clients put connection files; the kernel's own file is
    readable inside, another file in the same directory is not. Without a mount namespace (a
    container without user namespaces) the same holds, but under /tmp, then shared with the
    account's other kernels: refused."""
    import shutil
    import tempfile

    home = tempfile.mkdtemp(prefix="sbx-home-", dir="/var/tmp")
    os.chmod(home, 0o755)
    if who:
        os.chown(home, who.pw_uid, who.pw_gid)
    d = DEPLOYMENTS[where](home, who)
    files = []
    try:
        for name in ("kernel-mine.json", "kernel-other.json"):
            fd, f = tempfile.mkstemp(prefix=name[:-5] + "-", suffix=".json", dir=d)
            with os.fdopen(fd, "w") as fh:
                json.dump(_conn(), fh)
            if who:
                os.chown(f, who.pw_uid, who.pw_gid)
            files.append(f)
        mine, other = files
        env = {"HOME": home, "JUPYTER_RUNTIME_DIR": os.path.join(home, ".local/share/jupyter/runtime")}
        if mountns == "no mount namespace":
            env["SANDBOX_KERNEL_SIMULATE_MISSING"] = "mount_namespace"
        p = kernelutil.run_launcher("free", "/bin/sh", "-c", f"cat {mine} >/dev/null && echo own; cat {other} && "
                                    f"echo other; exit 0", user=who.pw_name if who else None, cwd=home, env=env,
                                    connection_file=mine)
        if mountns == "no mount namespace" and "tmp" in where:
            assert p.returncode == 1 and "own" not in p.stdout, (p.stdout, p.stderr[-2000:])
            assert "is under /tmp, which without a mount namespace" in p.stderr, p.stderr[-2000:]
            return
        assert p.returncode == 0 and "refusing" not in p.stderr, p.stderr[-2000:]
        assert "own" in p.stdout and "other" not in p.stdout, (p.stdout, p.stderr[-2000:])
    finally:
        for f in files:
            os.unlink(f)
        shutil.rmtree(home, ignore_errors=True)
        if d not in ("/tmp",) and not d.startswith(home):
            shutil.rmtree(d, ignore_errors=True)


@pytest.mark.kernel
def test_ipc_sockets_only_where_the_tenant_writes(tmp_path):
    f = tmp_path / "kernel-ipc.json"
    f.write_text(json.dumps(_conn(transport="ipc", ip="/etc/kernel-ipc", shell_port=1, iopub_port=2, stdin_port=3,
                                  control_port=4, hb_port=5)))
    os.chmod(f, 0o600)
    p = kernelutil.run_launcher("free", cwd=str(tmp_path), connection_file=str(f))
    assert p.returncode == 1 and "outside the profile's writable directories" in p.stderr, p


# --------------------------------------------------------------------------- {python}


@pytest.mark.kernel
def test_run_grants_no_exec_dir_for_the_wrapped_command(who, tmp_path):
    """`run --profile offline -- bash` used to add bash's own directory (/usr/bin) to {python}."""
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    user = who.pw_name if who else None
    p = kernelutil.run_launcher("offline", "bash", "-c", "ls /", user=user, cwd=cwd)
    assert p.returncode == 1 and "outside the profile's exec.allow" in p.stderr, p
    p = kernelutil.run_launcher("offline", sys.executable, "-c",
                                "import subprocess\ntry:\n subprocess.run(['ls', '/'])\n"
                                "except PermissionError as e:\n print('refused', e.errno)", user=user, cwd=cwd)
    assert p.returncode == 0 and p.stdout.strip() == "refused 13", p


@pytest.mark.kernel
def test_wrapped_command_not_on_path_is_refused_with_its_name(who, tmp_path):
    """The launcher finds the command as shutil.which does (standins.which, tests/kernel/test_standins.py):
    a name that is nowhere on PATH is refused with its name."""
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    p = kernelutil.run_launcher("free", "sandbox-no-such-command", user=who.pw_name if who else None, cwd=cwd)
    assert p.returncode == 1 and "command not found: sandbox-no-such-command" in p.stderr, p


def _import_log(argv: list[str], cwd) -> tuple[set[str], str]:
    """(modules in Python's own import log, stdout) of `argv` run with -X importtime."""
    p = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}, p.stdout  # (lines[0]: the header)


@pytest.mark.kernel
@pytest.mark.parametrize("profile", ["free", "gpu"])
def test_launch_path_imports_only_what_startup_declares(tmp_path, profile):
    """Python's own import log of a real launch (every layer applied, up to the exec): nothing
    too heavy for every kernel's start, and nothing the start-up boundary does not declare."""
    cache = tmp_path / "policy-cache.json"
    policy_cache.write(str(cache), [profile])
    imported, out = _import_log(["-I", "-S", kernel_argv(profile)[3], "run", "--profile", profile,
                                 "--policy-cache", str(cache), "--", sys.executable, "-c", "print('ran')"], tmp_path)
    assert out.strip() == "ran"
    assert "sandbox_kernel.launcher" in imported and "sandbox_kernel.layers.seccomp" in imported
    assert not startup.TOO_HEAVY & imported, sorted(startup.TOO_HEAVY & imported)
    # the guard hook's path comes from the cache written for this interpreter, not from sysconfig
    assert "sysconfig" not in imported
    baseline, _ = _import_log(["-I", "-S", "-c", "pass"], tmp_path)
    new = startup.undeclared(imported, baseline)
    assert not new, (f"the launch path (before confinement) now imports {new}: declare each in "
                     f"sandbox_kernel/startup.py (PACKAGE or STANDARD_LIBRARY), or keep it off the launch path")


def test_startup_declarations_are_consistent():
    """What startup.py declares exists, and nothing declared is too heavy for the launch path."""
    import importlib.util

    assert not startup.TOO_HEAVY & (startup.PACKAGE | startup.STANDARD_LIBRARY)
    assert set(startup.PRIVATE_FALLBACKS) <= startup.STANDARD_LIBRARY
    for name in sorted(startup.PACKAGE | startup.PACKAGES | startup.STANDARD_LIBRARY):
        assert name in sys.builtin_module_names or importlib.util.find_spec(name) is not None, name
    assert startup.undeclared({"sandbox_kernel.kernel", "shutil", "os"}, set()) == ["sandbox_kernel.kernel", "shutil"]
    # a new layer module needs no declaration (the layers package is on the launch path whole), a
    # module beside the package does
    assert startup.undeclared({"sandbox_kernel.layers", "sandbox_kernel.layers.newlayer", "sandbox_kernel.layersx"},
                              set()) == ["sandbox_kernel.layersx"]


@pytest.mark.kernel
@pytest.mark.parametrize("private", sorted(startup.PRIVATE_FALLBACKS))
def test_launch_without_a_private_module_uses_the_public_one(tmp_path, private):
    """A real launch (every layer applied) in an interpreter where `private` cannot be imported
    by this package (the standard library's own modules still may: `signal` is built on
    `_signal`): the public module stands in, and the command runs confined."""
    cache = tmp_path / "policy-cache.json"
    policy_cache.write(str(cache), ["default"])
    boot = kernel_argv("default")[3]
    log = tmp_path / "imports.json"
    code = (f"import builtins, os, sys, runpy\n"
            f"real_import, refused = builtins.__import__, []\n"
            "def importing(name, globals=None, locals=None, fromlist=(), level=0):\n"
            f"    if name == {private!r} and level == 0 and (globals or {{}}).get('__name__', '').startswith("
            "'sandbox_kernel'):\n"
            "        refused.append(globals['__name__'])\n"
            "        raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "    return real_import(name, globals, locals, fromlist, level)\n"
            "builtins.__import__ = importing\n"
            "real_execve = os.execve\n"
            "def execve(path, argv, env):\n"
            "    modules = sorted(sys.modules)\n"  # what the launcher imported (then json, to write it)
            "    import json\n"
            f"    with open({str(log)!r}, 'w') as fh:\n"
            "        fh.write(json.dumps({'modules': modules, 'refused': refused}))\n"
            "    real_execve(path, argv, env)\n"
            "os.execve = execve\n"
            f"sys.argv = [{boot!r}, 'run', '--profile', 'default', '--policy-cache', {str(cache)!r}, '--', "
            f"{sys.executable!r}, '-c', 'print(open(\"/proc/self/status\").read())']\n"
            f"runpy.run_path({boot!r}, run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    status = dict(line.split(":", 1) for line in p.stdout.splitlines() if ":" in line)
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1", p.stdout
    seen = json.loads(log.read_text())
    assert seen["refused"], f"nothing on the launch path imported {private}: drop it from startup.PRIVATE_FALLBACKS"
    assert startup.PRIVATE_FALLBACKS[private] in seen["modules"], (private, seen["refused"])
