"""Kernelspecs installed for a whole system or environment must be readable by every
user whose Jupyter server lists them (a root-only 0700 directory hides the kernel
from everyone else's JupyterLab launcher)."""

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
import sys

import kernelutil
import pytest

from sandbox_kernel import init_helper, install


def test_installed_kernelspec_is_readable_by_everyone(tmp_path):
    old = os.umask(0o077)  # a strict administrator's umask must not make it private either
    try:
        d = install.install("free", prefix=str(tmp_path / "prefix"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755
    for f in os.listdir(d):  # (the namespace's init, where a compiler built it: a program, run by the launcher)
        assert stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode) == (0o755 if f == init_helper.FILE_NAME else 0o644), f


def test_ordinary_user_lists_a_root_installed_kernelspec(unprivileged):
    prefix = kernelutil.PREFIX / "modes-test"  # every directory above it is searchable by others
    shutil.rmtree(prefix, ignore_errors=True)
    install.install("free", prefix=str(prefix))
    code = "from jupyter_client.kernelspec import KernelSpecManager as K; print(sorted(K().find_kernel_specs()))"
    env = dict(os.environ, JUPYTER_PATH=str(prefix / "share" / "jupyter"), HOME=unprivileged.pw_dir)
    proc = subprocess.run(["setpriv", f"--reuid={unprivileged.pw_uid}", f"--regid={unprivileged.pw_gid}",
                           "--init-groups", "--", sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "sandbox-free" in proc.stdout, proc.stdout
    shutil.rmtree(prefix, ignore_errors=True)


# --------------------------------------------------------------------------- the install's search path travels


def _platform_profile_dir(writable_by: int | None = None):
    """A platform's profile directory (root-owned, 0755) holding `acme`, outside /tmp."""
    d = kernelutil.PREFIX / f"platform-profiles-{os.urandom(4).hex()}"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "acme.yaml").write_text("extends: free\ndescription: the platform's own profile\n")
    os.chmod(d / "acme.yaml", 0o644)
    if writable_by is not None:
        os.chown(d, writable_by, -1)
    return d


def _install_acme(tmp_path, profiles):
    prefix = kernelutil.PREFIX / f"spec-{os.urandom(4).hex()}"
    env = dict(os.environ, SANDBOX_KERNEL_PROFILE_PATH=str(profiles))
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "install", "--profile", "acme", "--prefix",
                        str(prefix)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return prefix / "share" / "jupyter" / "kernels" / "sandbox-acme"


def _server_env(extra=None):
    """A Jupyter server's environment that lacks SANDBOX_KERNEL_PROFILE_PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("SANDBOX_KERNEL_PROFILE_PATH", "SANDBOX_KERNEL_CEILING")}
    env.update(extra or {})
    return env


@pytest.mark.kernel
def test_a_profile_found_on_the_install_search_path_starts_a_kernel_without_the_variable(tmp_path):
    """`install --profile acme` with SANDBOX_KERNEL_PROFILE_PATH set; the Jupyter server
    starting it does not have the variable: the kernel starts with acme's policy."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    profiles = _platform_profile_dir()
    spec_dir = _install_acme(tmp_path, profiles)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["env"]["SANDBOX_KERNEL_PROFILE_PATH"] == str(profiles), spec
    km = KernelManager(kernel_name="sandbox-acme",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]))
    km.start_kernel(cwd=str(tmp_path), env=_server_env())
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        outs = []
        reply = kc.execute_interactive("import json, os; print(json.loads(os.environ['SANDBOX_KERNEL_POLICY'])"
                                       "['data']['description'])", timeout=60, output_hook=lambda m: outs.append(m))
        assert reply["content"]["status"] == "ok", reply
        text = "".join(m["content"].get("text", "") for m in outs if m["msg_type"] == "stream")
        assert "the platform's own profile" in text, text
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _launch_from_spec(spec_dir, user, extra_env=None, use_cache=True, code=None, server_env=None):
    """The installed kernelspec's launcher (argv up to `--`, no connection file) on `python -c`,
    with the kernelspec's env over a server environment that lacks the variable."""
    spec = json.loads((spec_dir / "kernel.json").read_text())
    argv = spec["argv"][:spec["argv"].index("--")]
    cmd = []
    i = 0
    while i < len(argv):
        if argv[i] == "--connection-file" or (argv[i] == "--policy-cache" and not use_cache):
            i += 2
            continue
        cmd.append(argv[i].replace("{resource_dir}", str(spec_dir)))
        i += 1
    env = _server_env(server_env)
    env.update(spec.get("env") or {})  # as jupyter_client: the kernelspec's env over the server's
    env.update(extra_env or {})
    prefix, cwd = [], str(spec_dir)  # as Jupyter starts kernels: in a notebook's directory, not in this checkout
    if user is not None:
        prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        env.pop("TMPDIR", None)
        cwd = kernelutil.user_workdir(user)
    code = code or "import json, os; print(json.loads(os.environ['SANDBOX_KERNEL_POLICY'])['data']['description'])"
    return subprocess.run(prefix + cmd + ["--", sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.kernel
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_the_installed_search_path_serves_a_cache_hit_and_a_miss(who, tmp_path, use_cache):
    """As root and as an ordinary user: with the validated-policy cache and without it (the
    profile resolved from the files on the installed search path), acme's policy applies."""
    profiles = _platform_profile_dir()
    spec_dir = _install_acme(tmp_path, profiles)
    p = _launch_from_spec(spec_dir, who, use_cache=use_cache)
    assert p.returncode == 0, p.stderr
    assert "the platform's own profile" in p.stdout, p.stdout + p.stderr


@pytest.mark.kernel
def test_a_tenant_writable_installed_search_path_is_not_trusted(unprivileged, tmp_path):
    """The installed search path is checked at each start like the variable itself: a directory
    on it that the tenant can write refuses the start (trusted_start), cache or not."""
    profiles = _platform_profile_dir()
    spec_dir = _install_acme(tmp_path, profiles)
    os.chown(profiles, unprivileged.pw_uid, -1)
    p = _launch_from_spec(spec_dir, unprivileged)
    assert p.returncode != 0 and "the platform's own profile" not in p.stdout, p.stdout
    assert str(profiles) in p.stderr and "trusted_start" in p.stderr, p.stderr


# --------------------------------------------------------------------------- transport encryption


def _start_installed(spec_dir, cwd, **km_traits):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=spec_dir.name,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)]), **km_traits)
    if km_traits.get("transport") == "ipc":
        km.ip = os.path.join(cwd, "kernel-ipc")
    km.start_kernel(cwd=cwd, env=_server_env())
    kc = km.client()
    kc.start_channels()
    return km, kc


@pytest.mark.kernel
@pytest.mark.skipif(not __import__("zmq").has("curve"), reason="pyzmq's libzmq has no CurveZMQ")
def test_a_manager_asking_for_curve_gets_a_clear_answer_not_a_dead_kernel(tmp_path):
    """docs/network.md, 'Transport encryption': the sandboxed kernel cannot yet use CurveZMQ keys
    (ipykernel rewrites its connection file, which the sandbox keeps read-only, and the kernel
    dies), so installed kernelspecs do not declare `supported_encryption: curve`. A manager with
    `transport_encryption = auto` then starts it without keys; with `required` jupyter_client
    refuses before starting anything, naming the kernelspec's metadata."""
    prefix = kernelutil.PREFIX / f"spec-{os.urandom(4).hex()}"
    spec_dir = Path(install.install("free", prefix=str(prefix)))
    assert "supported_encryption" not in json.loads((spec_dir / "kernel.json").read_text())["metadata"]
    km, kc = _start_installed(spec_dir, str(tmp_path), transport_encryption="auto")
    try:
        kc.wait_for_ready(timeout=120)
        outs = []
        reply = kc.execute_interactive("print(6 * 7)", timeout=60, output_hook=outs.append)
        assert reply["content"]["status"] == "ok", reply
        assert "42" in "".join(m["content"].get("text", "") for m in outs if m["msg_type"] == "stream")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    with pytest.raises(RuntimeError, match="supported_encryption"):
        _start_installed(spec_dir, str(tmp_path), transport_encryption="required")


@pytest.mark.kernel
def test_the_installed_search_path_replaces_the_servers_and_a_ceiling_outside_it_fails_closed(tmp_path):
    """The kernelspec's search path wins over the server's variable (docs/quickstart.md, step 4):
    a ceiling found only on the server's path is not found, and the kernel refuses to start
    naming the ceiling variable, never starting without the ceiling."""
    profiles = _platform_profile_dir()
    spec_dir = _install_acme(tmp_path, profiles)
    ceilings = _platform_profile_dir()
    (ceilings / "lid.yaml").write_text("extends: offline\n")
    p = _launch_from_spec(spec_dir, None, server_env={"SANDBOX_KERNEL_PROFILE_PATH": str(ceilings),
                                                      "SANDBOX_KERNEL_CEILING": "lid"})
    assert p.returncode != 0 and "the platform's own profile" not in p.stdout, p.stdout
    assert "SANDBOX_KERNEL_CEILING=lid" in p.stderr and "no such profile" in p.stderr, p.stderr
