"""A profile edited into an invalid one while its kernel runs.

The kernel keeps its policy until it restarts; at the restart the launcher finds the
policy-cache entry stale (the file's SHA-256 changed), loads the file, and refuses to
start with the file and the key in the message. It never falls back to the cached
(older) policy, and never to a looser one: nothing after `--` runs.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import kernelutil
import pytest

from sandbox_kernel import policy_cache
from sandbox_kernel.install import kernel_argv

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("no_orphaned_specs")]  # every test starts a kernel

PROFILE = "restart-corrupt"
VALID = "extends: free\nlimits: {processes: 300}\n"
# Each would be looser than VALID if it were accepted (full network, no deny lists, ...).
CORRUPTIONS = {
    "unknown-key": ("extends: free\nnetwork: {mode: full, bogus: 1}\n", "network.bogus", "unknown key 'bogus'"),
    "bad-value": ("extends: free\nnetwork: {mode: everything}\n", "network.mode",
                  "'everything' is not allowed; expected one of 'none', 'restricted', 'full'"),
    "bad-type": ("extends: free\nenforcement: {seccomp: [off]}\n", "enforcement.seccomp", "expected one of"),
    "bad-parent": ("extends: nosuchparent\nnetwork: {mode: full}\n", "extends",
                   "parent profile 'nosuchparent' not found"),
    "not-yaml": ("extends: free\nnetwork: {mode: full\n", "", "not valid YAML"),
}


@pytest.fixture
def profile_file():
    path = kernelutil.write_profile(PROFILE, VALID)
    yield path
    path.unlink(missing_ok=True)


def _run_env(k: kernelutil.Kernel) -> dict:
    env = dict(os.environ)
    if k.user:
        pw = pwd.getpwnam(k.user)
        env.update(HOME=pw.pw_dir, USER=k.user, LOGNAME=k.user)
        env.pop("TMPDIR", None)
    return env


def _launch_directly(k: kernelutil.Kernel, marker: str | None = None) -> subprocess.CompletedProcess:
    """The command jupyter_client runs for this kernelspec (optionally with a marker-writing
    command in place of the kernel, to prove nothing after `--` runs)."""
    cmd = k.km.format_kernel_cmd()
    # without the connection file: a refused start exits 1 instead of serving the refusal kernel
    at = cmd.index("--connection-file")
    cmd = cmd[:at] + cmd[at + 2:]
    if marker:
        # the launcher's own `--` (a setpriv prefix has one too): kernel_argv ends the command
        launcher = len(cmd) - len(kernel_argv(PROFILE))
        cut = launcher + kernel_argv(PROFILE).index("--")
        assert cmd[cut] == "--"
        cmd = cmd[:cut + 1] + ["/usr/bin/touch", marker]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=k.km._launch_args.get("cwd"),
                          env=_run_env(k))


def test_the_kernelspec_runs_the_installed_launcher(make_kernel, profile_file, who):
    """The command under test is the one `sandbox-kernel install` writes (kernel_argv)."""
    k = make_kernel(PROFILE, user=who)
    argv = k.km.kernel_spec.argv
    assert argv[len(argv) - len(kernel_argv(PROFILE)):] == kernel_argv(PROFILE)
    assert (kernelutil.SPECS / kernelutil.spec_name(PROFILE, k.user) / policy_cache.FILE_NAME).is_file()


def test_corrupt_profile_at_restart_refuses_naming_file_and_key(make_kernel, profile_file, who):
    k = make_kernel(PROFILE, user=who)
    assert k.ok("import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[0])").stdout.strip() == "300"
    text, key, fragment = CORRUPTIONS["unknown-key"]
    kernelutil.write_profile(PROFILE, text)

    def stderr_so_far() -> str:
        return Path(k.stderr_path).read_text()

    k.km.restart_kernel(now=True)
    # The launcher refuses: no kernel runs; what answers is the refusal kernel, which names the
    # file and key to the notebook (sandbox_kernel/refusal.py) and executes nothing.
    k.kc.wait_for_ready(timeout=120)
    assert f"{profile_file.resolve()}: {key}: {fragment}" in (kernelutil.refused_reason(k.kc) or ""), \
        kernelutil.refused_reason(k.kc)
    marker = Path(k.km._launch_args["cwd"]) / "ran-in-refusal"
    reply = k.run(f"open({str(marker)!r}, 'w').write('x')")
    assert reply.ename == "SandboxStartRefused" and not marker.exists(), str(reply)
    expected = f"sandbox-kernel: error: {profile_file.resolve()}: {key}: {fragment}"
    # the launcher's stderr (kernelutil.Kernel keeps it in a file)
    assert kernelutil.wait_for(lambda: expected in stderr_so_far(), timeout=30), stderr_so_far()
    assert "Traceback" not in stderr_so_far()
    # The same command, run directly: the same refusal, and nothing after `--` ran.
    proc = _launch_directly(k)
    assert proc.returncode == 1
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    marker = Path(k.km._launch_args["cwd"]) / "ran"  # the kernel's cwd: writable by its user, in and out of the sandbox
    proc = _launch_directly(k, str(marker))
    assert proc.returncode == 1 and not marker.exists(), proc.stderr
    assert expected in proc.stderr, proc.stderr
    # Fixed again, it starts again (the file holds the cached content again: the cache entry is valid).
    kernelutil.write_profile(PROFILE, VALID)
    k.restart()
    assert k.ok("import resource; print(resource.getrlimit(resource.RLIMIT_NPROC)[0])").stdout.strip() == "300"


def test_every_corruption_is_refused_by_the_launcher(make_kernel, profile_file):
    """The launcher command of a running kernel, after each kind of corruption: exit 1,
    the file and the key named, and the kernel command never runs."""
    k = make_kernel(PROFILE)
    tmp_path = Path(k.km._launch_args["cwd"])  # writable by the kernel's user, in and out of the sandbox
    for kind, (text, key, fragment) in sorted(CORRUPTIONS.items()):
        kernelutil.write_profile(PROFILE, text)
        marker = tmp_path / f"ran-{kind}"
        proc = _launch_directly(k, str(marker))
        assert proc.returncode == 1, (kind, proc.stderr)
        assert not marker.exists(), kind
        where = f"{profile_file.resolve()}: {key}: " if key else f"{profile_file.resolve()}: "
        assert f"sandbox-kernel: error: {where}" in proc.stderr and fragment in proc.stderr, (kind, proc.stderr)
        assert "Traceback" not in proc.stderr, kind
    kernelutil.write_profile(PROFILE, VALID)  # and the check can fail: the valid profile runs the command
    proc = _launch_directly(k, str(tmp_path / "ran-valid"))
    assert proc.returncode == 0 and (tmp_path / "ran-valid").exists(), proc.stderr
