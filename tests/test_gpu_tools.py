"""GPU tools (issue 10, item 2): `!nvidia-smi` under a GPU profile, refused elsewhere.

On the H100 host of ../shared/measurements/h100-2026-11-23, /usr/bin/nvidia-smi is a
shell script that execs the driver's own /usr/local/nvidia/bin/nvidia-smi, and
`!nvidia-smi` failed under `gpu` with "exec: /usr/local/nvidia/bin/nvidia-smi:
Permission denied" (Landlock: outside exec.allow). These tests build the same shape
with a fake driver tree: a root-owned directory outside /tmp holding the driver's
`nvidia-smi` (a script that prints FAKE-NVIDIA-SMI and its arguments) and a second
NVIDIA utility, and a wrapper script in another directory put first on PATH. Landlock
decides on the path, not on what the program does, so a fake program is granted or
refused exactly as the real one would be. Kernel tests run as root and as an ordinary
user (the `who` fixture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

import kernelutil
from sandbox_kernel import policy as policy_mod
from sandbox_kernel.errors import ProfileError
from sandbox_kernel import accelerators
from sandbox_kernel.layers import landlock
from sandbox_kernel.layers.base import LaunchContext

IS_ROOT = os.geteuid() == 0
SMI_OUT = "FAKE-NVIDIA-SMI"
TOOL_OUT = "FAKE-DEBUGDUMP"


def _need_root() -> None:
    if not IS_ROOT:
        pytest.skip("a fake driver tree must be owned by root (only root-owned tool paths are granted); run as root")


def _write(path: str, text: str, mode: int = 0o755) -> None:
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


@dataclass
class Driver:
    """root/nvidia/bin: the driver's programs; root/usrbin: the platform's wrapper."""
    root: str

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def bin(self) -> str:
        return self.p("nvidia", "bin")

    @property
    def smi(self) -> str:
        return self.p("nvidia", "bin", "nvidia-smi")

    @property
    def other_tool(self) -> str:
        return self.p("nvidia", "bin", "nvidia-debugdump")

    @property
    def wrapper_dir(self) -> str:
        return self.p("usrbin")

    @property
    def wrapper(self) -> str:
        return self.p("usrbin", "nvidia-smi")

    def env(self) -> dict[str, str]:
        # The wrapper's directory is on PATH, the driver's is not: what the wrapper execs is
        # found by reading it.
        return {"PATH": self.wrapper_dir + os.pathsep + os.environ["PATH"]}

    def profile(self, name: str, *, enabled: bool = True, tool_dirs: list[str] | None = None, **extra) -> str:
        gpu = {"enabled": enabled, "tool_dirs": ["{which:nvidia-smi}"] if tool_dirs is None else tool_dirs}
        if enabled:
            gpu["devices"] = [0]
        data = {"extends": "free", "description": f"GPU tool test profile {name}", "accelerators": {"gpu": gpu}, **extra}
        return str(kernelutil.write_profile(name, json.dumps(data, indent=1)))


def make_driver(parent: str = "/var/lib") -> Driver:
    """A fake driver tree shaped like the H100 host's, owned by root (the test runs as root)."""
    d = Driver(tempfile.mkdtemp(prefix="sbx-fakedriver-", dir=parent))
    os.chmod(d.root, 0o755)
    for sub in (d.p("nvidia"), d.bin, d.wrapper_dir):
        os.mkdir(sub, 0o755)
        os.chmod(sub, 0o755)
    _write(d.smi, f'#!/bin/sh\necho "{SMI_OUT} $*"\n')
    _write(d.other_tool, f'#!/bin/sh\necho "{TOOL_OUT} $*"\n')
    # As on the host: a guard against a loop, the driver's libraries, then exec.
    _write(d.wrapper, f"""#!/bin/sh
# Written by the platform. The NVIDIA driver's programs are in {d.bin}.
if test {d.smi} -ef "$0" 2>/dev/null; then
  echo "$0: {d.smi} leads back to this file" >&2
  exit 127
fi
export LD_LIBRARY_PATH="${{LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}}{d.p('nvidia', 'lib64')}"
exec {d.smi} "$@"
""")
    return d


@pytest.fixture(scope="module")
def driver():
    _need_root()
    d = make_driver()
    yield d
    shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def fresh_driver():
    """A driver tree of the test's own, for tests that make it untrustworthy."""
    _need_root()
    d = make_driver()
    yield d
    shutil.rmtree(d.root, ignore_errors=True)


def _ctx(d: Driver | None = None, **env) -> LaunchContext:
    e = dict(os.environ)
    if d is not None:
        e.update(d.env())
    e.update(env)
    return LaunchContext(e)


def _resolve(path: str) -> policy_mod.Policy:
    return policy_mod.resolve(path)


def _verdicts(profile_path: str, ctx: LaunchContext) -> dict[str, tuple[str, str]]:
    return {path: (state, detail) for _e, path, state, detail in
            accelerators.tool_verdicts(_resolve(profile_path), ctx)}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "sandbox-kernel")
    cmd = [exe, *args] if os.path.exists(exe) else [sys.executable, "-m", "sandbox_kernel.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- what is granted (no kernel)


def test_wrapper_target_is_found_without_running_it(driver):
    path = driver.profile("gt-unit-which")
    v = _verdicts(path, _ctx(driver))
    assert v == {driver.wrapper: ("granted", "nvidia-smi on PATH"),
                 driver.smi: ("granted", f"named by the wrapper {driver.wrapper}")}, v
    # files only: the other programs of the driver's directory are not granted by {which:}
    assert accelerators.exec_dirs(_resolve(path), _ctx(driver)) == [driver.wrapper, driver.smi]


@pytest.mark.covers("accelerators.gpu.tool_dirs", "accelerators.gpu.enabled")
@pytest.mark.covers("accelerators.gpu.tool_dirs", "accelerators.gpu.enabled")
def test_gpu_disabled_grants_no_tool(driver):
    path = driver.profile("gt-unit-nogpu", enabled=False, tool_dirs=[driver.bin, "{which:nvidia-smi}"])
    assert accelerators.tool_verdicts(_resolve(path), _ctx(driver)) == []
    assert accelerators.exec_dirs(_resolve(path), _ctx(driver)) == []


def test_driver_binary_first_on_path_and_relative_path_entries(driver, tmp_path, monkeypatch):
    # The H100 host's PATH has the driver's directory before /usr/bin: both are found.
    env = {"PATH": os.pathsep.join([".", "", driver.bin, driver.wrapper_dir, os.environ["PATH"]])}
    path = driver.profile("gt-unit-order")
    # a relative PATH entry means the working directory: never searched, even if it holds one
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    v = _verdicts(path, _ctx(driver, **env))
    assert list(v) == [driver.smi, driver.wrapper], v
    assert all(state == "granted" for state, _ in v.values())


def test_wrapper_loops_and_chains_end(fresh_driver):
    d = fresh_driver
    # The driver's "binary" is itself a wrapper naming the platform's wrapper: a loop.
    _write(d.smi, f"#!/bin/sh\nexec {d.wrapper} \"$@\"\n")
    v = _verdicts(d.profile("gt-unit-loop"), _ctx(d))
    assert set(v) == {d.wrapper, d.smi}
    # A chain longer than WRAPPER_DEPTH stops there.
    chain = [d.p("nvidia", f"w{i}") for i in range(accelerators.WRAPPER_DEPTH + 2)]
    for i, w in enumerate(chain):
        os.mkdir(w, 0o755)
        nxt = os.path.join(chain[i + 1], "nvidia-smi") if i + 1 < len(chain) else "/bin/true"
        _write(os.path.join(w, "nvidia-smi"), f"#!/bin/sh\nexec {nxt}\n")
    v = _verdicts(d.profile("gt-unit-chain"), _ctx(d, PATH=chain[0]))
    assert list(v) == [os.path.join(w, "nvidia-smi") for w in chain[:accelerators.WRAPPER_DEPTH + 1]]


def test_untrusted_wrapper_is_not_followed(fresh_driver):
    # A wrapper the tenant could have written (its directory is writable by everyone) is
    # refused, and what it names is not granted through it, trusted or not.
    d = fresh_driver
    os.chmod(d.wrapper_dir, 0o777)
    v = _verdicts(d.profile("gt-unit-badwrapper"), _ctx(d))
    assert v == {d.wrapper: ("refused", f"{d.wrapper_dir} is writable by group and others (mode 0777) "
                                        f"(an ancestor of {d.wrapper})")}, v
    # a trusted wrapper naming an untrusted program: the program is refused
    os.chmod(d.wrapper_dir, 0o755)
    os.chmod(d.smi, 0o775)
    v = _verdicts(d.profile("gt-unit-badtarget"), _ctx(d))
    assert v == {d.wrapper: ("granted", "nvidia-smi on PATH"),
                 d.smi: ("refused", f"{d.smi} is writable by its group (mode 0775)")}, v


def test_absent_entries_grant_nothing(driver):
    path = driver.profile("gt-unit-absent", tool_dirs=[driver.p("nope"), "{which:nvidia-smi-nope}"])
    got = accelerators.tool_verdicts(_resolve(path), _ctx(driver))
    assert [(e, s) for e, _p, s, _d in got] == [(driver.p("nope"), "absent"), ("{which:nvidia-smi-nope}", "absent")]
    assert accelerators.exec_dirs(_resolve(path), _ctx(driver)) == []


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "user-owned", "acl", "file-beneath",
                                 "writable-profile-dir", "holds-writable", "sticky-ancestor"])
def test_untrusted_tool_paths_are_refused(how, tmp_path):
    _need_root()
    parent = tempfile.mkdtemp(prefix="sbx-sticky-", dir="/var/tmp") if how == "sticky-ancestor" else "/var/lib"
    d = make_driver(parent)
    try:
        extra, tool_dirs, refused = {}, [d.bin], d.bin
        if how == "world-writable":
            os.chmod(d.bin, 0o777)
            want = f"{d.bin} is writable by group and others (mode 0777)"
        elif how == "group-writable":
            os.chmod(d.p("nvidia"), 0o775)
            want = f"{d.p('nvidia')} is writable by its group (mode 0775) (an ancestor of {d.bin})"
        elif how == "user-owned":
            pw = kernelutil.ensure_user()
            os.chown(d.bin, pw.pw_uid, pw.pw_gid)
            want = f"{d.bin} is owned by uid {pw.pw_uid} ({pw.pw_name}), not root"
        elif how == "acl":
            # a named user with rwx: the mask (shown as the group bits) makes it effective
            import struct
            entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 7, 12345), (0x04, 5, 0xFFFFFFFF), (0x10, 7, 0xFFFFFFFF),
                       (0x20, 5, 0xFFFFFFFF)]
            try:
                os.setxattr(d.bin, "system.posix_acl_access",
                            struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))
            except OSError as e:
                pytest.skip(f"POSIX ACLs are not supported here ({e.strerror})")
            want = f"{d.bin} is writable by its group (mode 0775)"
        elif how == "file-beneath":
            os.chmod(d.other_tool, 0o757)
            want = f"{d.other_tool} is writable by others (mode 0757) (beneath {d.bin})"
        elif how == "writable-profile-dir":
            extra = {"filesystem": {"writable": ["{home}", "{cwd}", "{tmp}", "/dev/shm", d.p("nvidia")]}}
            want = f"{d.bin} is inside the writable directory {d.p('nvidia')} (filesystem.writable)"
        elif how == "holds-writable":
            os.makedirs(d.p("nvidia", "bin", "cache"), 0o755)
            extra = {"filesystem": {"writable": ["{home}", "{cwd}", "{tmp}", "/dev/shm", d.p("nvidia", "bin", "cache")]}}
            want = (f"{d.bin} holds the writable directory {d.p('nvidia', 'bin', 'cache')} (filesystem.writable): "
                    "programs written there could run")
        else:  # /var/tmp: sticky and writable by everyone (1777)
            mode = stat.S_IMODE(os.stat("/var/tmp").st_mode)
            if mode != 0o1777:
                pytest.skip(f"/var/tmp has mode {mode:04o} here, not 1777")
            want = f"/var/tmp is writable by group and others (mode 1777) (an ancestor of {d.bin})"
        path = d.profile(f"gt-unit-{how}", tool_dirs=tool_dirs, **extra)
        v = _verdicts(path, _ctx(d))
        assert v == {refused: ("refused", want)}, v
        assert accelerators.exec_dirs(_resolve(path), _ctx(d)) == []
        # landlock: no execute right on it, and the refusal is in the layer's notes
        pl = landlock.plan(_resolve(path), _ctx(d))
        assert "execute" not in pl.paths.get(refused, set())
        assert any(want in n for n in pl.notes), pl.notes
    finally:
        shutil.rmtree(d.root, ignore_errors=True)
        if how == "sticky-ancestor":
            shutil.rmtree(parent, ignore_errors=True)


def test_landlock_plan_grants_execute_on_granted_tools_only(driver):
    path = driver.profile("gt-unit-plan")
    pl = landlock.plan(_resolve(path), _ctx(driver))
    assert "execute" in pl.paths[driver.smi] and "execute" in pl.paths[driver.wrapper]
    assert driver.bin not in pl.paths and driver.other_tool not in pl.paths
    nogpu = driver.profile("gt-unit-plan-nogpu", enabled=False, tool_dirs=[driver.bin, "{which:nvidia-smi}"])
    pl = landlock.plan(_resolve(nogpu), _ctx(driver))
    assert not any("execute" in r for p, r in pl.paths.items() if p.startswith(driver.root)), pl.paths


@pytest.mark.covers("accelerators.gpu.tool_dirs")
@pytest.mark.covers("accelerators.gpu.tool_dirs")
def test_tool_dirs_schema_and_narrowing(profile_dir):
    (profile_dir / "bad.yaml").write_text('extends: free\naccelerators:\n  gpu:\n    enabled: true\n'
                                          '    tool_dirs: ["bin", "{which:../x}", "/opt/../tmp"]\n')
    with pytest.raises(ProfileError) as info:
        policy_mod.resolve("bad")
    assert [k for _f, k, _m in info.value.problems] == [f"accelerators.gpu.tool_dirs[{i}]" for i in range(3)]
    assert "{which:NAME}" in str(info.value) and "Traceback" not in str(info.value)
    # defaults, and a ceiling keeps only the entries both sides list
    assert policy_mod.resolve("gpu").gpu["tool_dirs"] == ["/usr/local/nvidia/bin", "{which:nvidia-smi}",
                                                          "/usr/local/cuda/bin"]
    (profile_dir / "ceil.yaml").write_text('extends: gpu\naccelerators:\n  gpu:\n    tool_dirs: ["{which:nvidia-smi}"]\n')
    (profile_dir / "req.yaml").write_text('extends: gpu\naccelerators:\n  gpu:\n    tool_dirs: ["/opt/x", "{which:nvidia-smi}"]\n')
    n = policy_mod.narrow(policy_mod.resolve("req"), policy_mod.resolve("ceil"))
    assert n.gpu["tool_dirs"] == ["{which:nvidia-smi}"]


# --------------------------------------------------------------------------- through real kernels


def _shell(k, line: str) -> str:
    return k.ok(line).output


def test_nvidia_smi_runs_under_gpu_profile(make_kernel, who, driver):
    driver.profile("gt-gpu")
    k = make_kernel("gt-gpu", user=who, env=driver.env())
    assert f"{SMI_OUT} -L" in _shell(k, "!nvidia-smi -L")
    r = k.ok("import subprocess; print(subprocess.run(['nvidia-smi', '-q'], capture_output=True, text=True).stdout)")
    assert f"{SMI_OUT} -q" in r.stdout, str(r)
    # the driver's binary by its own path; its directory's other programs are not granted by {which:}
    assert f"{SMI_OUT} direct" in _shell(k, f"!{driver.smi} direct")
    out = _shell(k, f"!{driver.other_tool} x")
    assert TOOL_OUT not in out and "Permission denied" in out, out
    report = k.ok("%sandbox").stdout
    assert f"accelerators.gpu.tool_dirs: {driver.smi} (from {{which:nvidia-smi}}): may run" in report, report
    assert re.search(r"^  landlock\s+hard\s+active: .*GPU tool .*nvidia-smi", report, re.M), report


def test_launcher_wraps_nvidia_smi_under_gpu_profile_only(who, driver, tmp_path):
    """`run --profile gpu -- nvidia-smi -L` (found on the H100 host: the launcher's own check of
    the wrapped command ignored the tool grants)."""
    driver.profile("gt-run-gpu")
    driver.profile("gt-run-nogpu", enabled=False)
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    user = who.pw_name if who else None
    p = kernelutil.run_launcher("gt-run-gpu", "nvidia-smi", "-L", user=user, cwd=cwd, env=driver.env())
    assert p.returncode == 0 and f"{SMI_OUT} -L" in p.stdout, p
    p = kernelutil.run_launcher("gt-run-nogpu", "nvidia-smi", "-L", user=user, cwd=cwd, env=driver.env())
    assert p.returncode == 1 and "outside the profile's exec.allow" in p.stderr, p


@pytest.mark.covers("accelerators.gpu.tool_dirs")
@pytest.mark.covers("accelerators.gpu.tool_dirs")
def test_tool_directory_grants_its_programs(make_kernel, who, driver):
    driver.profile("gt-gpu-dir", tool_dirs=[driver.bin])
    k = make_kernel("gt-gpu-dir", user=who, env=driver.env())
    assert f"{SMI_OUT} a" in _shell(k, f"!{driver.smi} a")
    assert f"{TOOL_OUT} b" in _shell(k, f"!{driver.other_tool} b")
    # the wrapper's directory is not listed this time: the wrapper itself may not run
    out = _shell(k, "!nvidia-smi -L")
    assert SMI_OUT not in out and "Permission denied" in out, out


def test_gpu_tools_refused_under_gpu_less_profile(make_kernel, who, driver):
    driver.profile("gt-nogpu", enabled=False, tool_dirs=[driver.bin, "{which:nvidia-smi}"])
    k = make_kernel("gt-nogpu", user=who, env=driver.env())
    for line in ("!nvidia-smi -L", f"!{driver.smi} -L", f"!{driver.other_tool}"):
        out = _shell(k, line)
        assert SMI_OUT not in out and TOOL_OUT not in out and "Permission denied" in out, (line, out)
    r = k.run("import subprocess; subprocess.run(['nvidia-smi', '-L'])")
    assert r.ename == "PermissionError", str(r)
    assert "GPU tools run only where accelerators.gpu.enabled is true" in r.traceback + r.output, str(r)
    report = k.ok("%sandbox").stdout
    assert "accelerators.gpu.tool_dirs: not granted: GPU disabled" in report, report


@pytest.mark.covers("accelerators.gpu.tool_dirs")
@pytest.mark.parametrize("how", ["world-writable", "user-owned", "inside-writable"])
@pytest.mark.covers("accelerators.gpu.tool_dirs")
def test_tenant_writable_tool_dir_is_refused(make_kernel, who, fresh_driver, how):
    d = fresh_driver
    extra = {}
    if how == "world-writable":
        os.chmod(d.bin, 0o777)
        why = f"{d.bin} is writable by group and others (mode 0777) (an ancestor of {d.smi})"
    elif how == "user-owned":
        pw = kernelutil.ensure_user()
        os.chown(d.bin, pw.pw_uid, pw.pw_gid)
        why = f"{d.bin} is owned by uid {pw.pw_uid} ({pw.pw_name}), not root (an ancestor of {d.smi})"
    else:  # root-owned and 0755, but a writable directory of the profile: root could plant a program
        extra = {"filesystem": {"writable": ["{home}", "{cwd}", "{tmp}", "/dev/shm", d.p("nvidia")]}}
        why = f"{d.smi} is inside the writable directory {d.p('nvidia')} (filesystem.writable)"
    path = d.profile(f"gt-bad-{how}", **extra)
    k = make_kernel(f"gt-bad-{how}", user=who, env=d.env())
    out = _shell(k, "!nvidia-smi -L")
    assert SMI_OUT not in out and "Permission denied" in out, out
    r = k.run(f"import subprocess; subprocess.run([{d.smi!r}])")
    assert r.ename == "PermissionError", str(r)
    assert f"accelerators.gpu.tool_dirs: {d.smi} may not run: {why}" in r.traceback + r.output, str(r)
    line = f"accelerators.gpu.tool_dirs: {d.smi} (from {{which:nvidia-smi}}): REFUSED: {why}"
    assert line in k.ok("%sandbox").stdout
    # and before any kernel starts: doctor on this machine says the same
    doc = cli("doctor", "--profile", path, "--json", env=d.env())
    assert doc.returncode == 0, doc.stdout + doc.stderr
    tools = [f"{x['rule']}: {x['value']}" for x in json.loads(doc.stdout)["rules"] if x["rule"] == line.split(":")[0]]
    assert line in tools, (line, tools)
