"""The container guide (docs/deploy-containers.md) in real Docker containers: an image made
with `docker import` (scripts/docker-image.sh: the host's interpreter and libraries, a venv
with this project, kernelspecs installed as root) and dockerd started by scripts/engines.sh.

In each shape, tests/docker_check.py (mounted read-only) starts the `offline` kernel through
jupyter_client inside the container, tries a banned import and a connection to a listener in
the same container, and runs `sandbox-kernel doctor --json`. The simulated container of
tests/layers/test_cgroup.py and tests/cli/test_doctor.py stays: it covers a cgroup v2 host's shapes,
which Docker on this cgroup v1 host cannot make.
"""

from __future__ import annotations

import json
import subprocess

import engines
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.engines,
              pytest.mark.serial]  # the host's Docker daemon (scripts/engines.sh starts it), its images and containers

CHECK = engines.REPO / "tests" / "docker_check.py"


@pytest.fixture(scope="module")
def image():
    engines.start("docker")
    proc = subprocess.run([str(engines.REPO / "scripts" / "docker-image.sh")], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def _check(image: str, *docker_args: str, profile: str = "offline") -> dict:
    proc = subprocess.run(["docker", "run", "--rm", "--network", "none", *docker_args,
                           "-v", f"{CHECK}:/check.py:ro", image, "python", "/check.py", profile],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _works(r: dict) -> None:
    """The kernel started and behaved as the profile says: the import and the connection refused."""
    assert r["started"], r
    assert r["import"]["ename"] == "ProhibitedImportError", r
    assert r["connect"]["stdout"].startswith("refused"), r
    assert r["accepted"] is False
    assert r["compute"]["stdout"].strip() == "45"
    assert r["doctor_rc"] == 0 and r["doctor"]["offline"]["starts"], r["doctor"]


def _layers(r: dict) -> dict[str, str]:
    return {k: v["state"] for k, v in r["doctor"]["offline"]["layers"].items()}


def test_default_root_container_refuses_with_the_fix(image):
    """`docker run` as root with Docker's defaults: no group can be made (read-only cgroupfs) and
    nothing bounds a root fork bomb, so the kernel does not start: the client gets the refusal
    kernel, which answers every cell with the reason and runs none; doctor says why and how."""
    r = _check(image)
    assert r["uid"] == 0
    assert r["accepted"] is False
    for cell in ("import", "connect", "compute"):
        assert r[cell]["ename"] == "SandboxStartRefused" and "45" not in r[cell]["stdout"], r
    off = r["doctor"]["offline"]
    assert r["doctor_rc"] == 1 and off["starts"] is False and off["layer"] == "cgroup"
    assert "Read-only file system" in off["why"]
    assert "--user 1000" in off["fix"] and "--pids-limit 256 --memory 8g" in off["fix"]


def test_root_container_bounded_by_its_own_limits_starts(image):
    """`--pids-limit 256 --memory 8g` (the profile's limits): the cgroup layer accepts the
    container's own group, capabilities are dropped."""
    r = _check(image, "--pids-limit", "256", "--memory", "8g")
    assert r["uid"] == 0
    _works(r)
    layers = _layers(r)
    assert layers["cgroup"] == "active" and r["doctor"]["offline"]["layers"]["cgroup"].get("enclosing") is True
    assert layers["capabilities"] == "active"
    assert layers["landlock"] == "active" and layers["seccomp"] == "active"
    assert layers["pid_namespace"] == "unavailable"  # Docker's seccomp profile refuses unshare


@pytest.mark.parametrize("shape", ["default", "recommended"])
def test_uid_1000_container_starts(image, shape):
    """As uid 1000 (the guide's recommended shape): every required layer applies; the cgroup
    layer is not needed (RLIMIT_NPROC). 'recommended' adds what the guide's pod spec has:
    all capabilities dropped and no_new_privs from the runtime."""
    extra = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"] if shape == "recommended" else []
    r = _check(image, "--user", "1000", *extra)
    assert r["uid"] == 1000
    _works(r)
    layers = _layers(r)
    assert layers["cgroup"] == "not needed" and layers["rlimits"] in ("active", "partial")
    assert layers["landlock"] == "active" and layers["seccomp"] == "active"
    assert layers["no_new_privs"] == "active"
    assert layers["pid_namespace"] == "unavailable" and layers["mount_namespace"] == "unavailable"


def _export(image: str, profile: str, path) -> str:
    proc = subprocess.run(["docker", "run", "--rm", image, "sandbox-kernel", "export", "--profile", profile,
                           "--format", "oci-seccomp"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["defaultAction"] == "SCMP_ACT_ALLOW"
    path.write_text(proc.stdout)
    return f"seccomp={path}"


def test_exported_seccomp_profile_applied_by_docker(image, tmp_path):
    """`sandbox-kernel export --format oci-seccomp` of `free` (network: restricted) given to
    Docker (`--security-opt seccomp=`) in place of its default profile: the kernel still starts
    and works, its own filter stacked on the exported one."""
    r = _check(image, "--user", "1000", "--security-opt", _export(image, "free", tmp_path / "free.json"),
               profile="free")
    assert r["started"], r
    assert r["import"]["ename"] == "ProhibitedImportError", r
    assert r["connect"]["stdout"].startswith("refused"), r  # port not in tcp_connect_ports: Landlock
    assert r["accepted"] is False and r["compute"]["stdout"].strip() == "45"
    assert {k: v["state"] for k, v in r["doctor"]["free"]["layers"].items()}["seccomp"] == "active"


def test_exported_network_none_profile_refuses_ip_sockets_to_the_whole_container(image, tmp_path):
    """The export of a `network: none` profile refuses IPv4/IPv6 sockets from the container's
    first process on: the kernel's TCP ports (and jupyter_client in the same container) cannot
    be made, so no kernel starts there. The guide says to export such a profile only for
    containers without the Jupyter side (or to use a restricted profile's export)."""
    r = _check(image, "--user", "1000", "--security-opt", _export(image, "offline", tmp_path / "offline.json"))
    assert r["listener"] == 1  # EPERM: socket(AF_INET) refused by Docker applying the exported rules
    assert r["started"] is False and r["accepted"] is False
    assert r["doctor_rc"] == 0 and r["doctor"]["offline"]["starts"]  # the launcher itself starts (python -c)
