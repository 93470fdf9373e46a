"""Never fail open: a layer the profile requires but the machine cannot give stops start-up."""

import os
import subprocess
import sys

import kernelutil
import pytest

from sandbox_kernel import launcher, policy, resources
from sandbox_kernel.errors import LayerUnavailable

IS_ROOT = os.geteuid() == 0
REQUIRED = ["no_new_privs", "capabilities", "rlimits", "landlock", "seccomp"] + (["cgroup"] if IS_ROOT else [])


def launch(profile, *cmd, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile, "--",
                           *(cmd or ["/usr/bin/true"])], capture_output=True, text=True, env=e, timeout=60)


@pytest.mark.parametrize("layer", REQUIRED)
@pytest.mark.covers("enforcement.import_guard", "enforcement.no_new_privs", "enforcement.capabilities",
                    "enforcement.rlimits", "enforcement.cgroup", "enforcement.mount_namespace",
                    "enforcement.pid_namespace", "enforcement.landlock", "enforcement.seccomp")
def test_missing_layer_stops_the_launcher(layer):
    p = launch("free", env={"SANDBOX_KERNEL_SIMULATE_MISSING": layer})
    assert p.returncode == 1, p
    assert f"sandbox layer '{layer}' is required" in p.stderr
    assert f"enforcement: {{{layer}: best-effort}}" in p.stderr
    assert "will not start unconfined" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("layer", REQUIRED)
def test_missing_layer_stops_the_kernel(make_kernel, layer):
    with pytest.raises(RuntimeError, match=f"refused to start: sandbox layer '{layer}' is required"):
        make_kernel("free", env={"SANDBOX_KERNEL_SIMULATE_MISSING": layer}, startup_timeout=20)


@pytest.mark.covers("enforcement.import_guard", "enforcement.no_new_privs", "enforcement.capabilities",
                    "enforcement.rlimits", "enforcement.cgroup", "enforcement.mount_namespace",
                    "enforcement.pid_namespace", "enforcement.landlock", "enforcement.seccomp")
def test_best_effort_starts_and_says_so(make_kernel):
    kernelutil.write_profile("weak-landlock", """
        extends: free
        enforcement:
          landlock: best-effort
        """)
    k = make_kernel("weak-landlock", env={"SANDBOX_KERNEL_SIMULATE_MISSING": "landlock"})
    out = k.ok("%sandbox").stdout
    assert "landlock" in out and "unavailable" in out
    assert "enforcement.landlock: best-effort" in out
    # the other layers still hold
    r = k.run("import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)")
    assert r.ename == "PermissionError"
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "profiles", "show", "weak-landlock"],
                       capture_output=True, text=True)
    assert "enforcement.landlock" in p.stdout and "best-effort" in p.stdout


def test_landlock_absent_from_the_os_kernel():
    """Emulate a kernel without Landlock: a seccomp filter makes its syscalls return ENOSYS."""
    wrapper = (
        "import errno, os, sys\n"
        "from sandbox_kernel import libseccomp as sc\n"
        "f = sc.Filter(sc.ALLOW)\n"
        "for nr in (444, 445, 446):\n"
        "    f.add_rule(sc.ERRNO(errno.ENOSYS), nr)\n"
        "f.load()\n"
        "os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n")
    p = subprocess.run([sys.executable, "-c", wrapper, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", "free",
                        "--", "/usr/bin/true"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "sandbox layer 'landlock' is required" in p.stderr and "no Landlock" in p.stderr


def test_kernel_without_the_launcher_refuses(tmp_path):
    p = subprocess.run([sys.executable, "-P", "-m", "sandbox_kernel", "-f", str(tmp_path / "kernel-x.json"),
                        "--profile", "free"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "requires the OS layers" in p.stderr and "sandbox-kernel run" in p.stderr


def test_missing_guard_hook_refuses(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "guard_hook_path", lambda: tmp_path / "absent.pth")
    pol = policy.resolve("free")
    ctx = launcher.context_for(pol, ["/usr/bin/true"], None)
    with pytest.raises(LayerUnavailable, match="guard hook"):
        launcher.apply_layers(pol, ctx)


def test_mount_namespace_fallback_keeps_protection(make_kernel):
    # (its connection file outside the then shared /tmp: there the kernel would refuse to start)
    k = make_kernel("free", env={"SANDBOX_KERNEL_SIMULATE_MISSING": "mount_namespace"}, connection_base="/var/tmp")
    out = k.ok("%sandbox").stdout
    assert "mount_namespace" in out and "unavailable" in out
    r = k.ok("""
        import os, errno
        try:
            os.makedirs(os.path.expanduser('~/.local/share/jupyter/kernels/evil'))
            print('WRITTEN')
        except OSError as e:
            print(errno.errorcode[e.errno])
        """)
    assert r.stdout.strip() == "EACCES"


def test_doctor_inside_a_kernel(make_kernel):
    k = make_kernel("free")
    out = k.ok("!sandbox-kernel doctor").stdout
    for layer in ("landlock", "seccomp", "no_new_privs", "rlimits", "capabilities"):
        assert any(line.split()[:3][0] == layer and "active" in line for line in out.splitlines() if line.strip()), out
    assert "seccomp mode 2" in out and "no_new_privs=yes" in out
    assert "Landlock: ABI" in out
