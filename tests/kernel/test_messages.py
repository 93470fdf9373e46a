"""Messages a user meets in a notebook, through real kernels, as root and as an
ordinary user: raising an rlimit names the profile rule; `sandbox-kernel doctor` piped
into a reader that stops early ends quietly."""

from __future__ import annotations

import json

import kernelutil
import pytest

pytestmark = pytest.mark.kernel  # every test here starts a real kernel


def _events(path):
    if not path.exists():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture
def audited(who):
    """A profile like `free` whose refusals go to an audit log of its own; returns (name, log)."""
    name = "rlimits-audited-" + ("user" if who else "root")
    log = kernelutil.AUDIT_DIR / f"{name}.jsonl"
    log.unlink(missing_ok=True)
    kernelutil.write_profile(name, f"""
        extends: free
        limits:
          file_size: 1GiB
        audit:
          log: {log}
        """)
    return name, log


def _sandbox_line(r) -> str:
    lines = [line for line in r.traceback.splitlines() + r.stderr.splitlines() if line.startswith("sandbox: ")]
    assert len(lines) <= 1, r.traceback
    return lines[0] if lines else ""


def test_raising_an_rlimit_names_the_rule(make_kernel, who, audited):
    profile, log = audited
    k = make_kernel(profile, user=who)
    r = k.run("import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))")
    assert r.ename == "ValueError" and r.evalue == "not allowed to raise maximum limit", str(r)
    assert _sandbox_line(r) == (f"sandbox: refused by profile '{profile}': limits.open_files: RLIMIT_NOFILE is fixed "
                                f"at 8192 (soft and hard) for the kernel and its children and cannot be raised "
                                f"inside the sandbox"), r.traceback
    events = [e for e in _events(log) if e["layer"] == "rlimits"]
    assert len(events) == 1, _events(log)
    assert events[0]["what"] == "ValueError: not allowed to raise maximum limit"
    assert events[0]["detail"].startswith("limits.open_files: RLIMIT_NOFILE is fixed at 8192")
    assert events[0]["profile"] == profile


@pytest.mark.parametrize("code,ename,rule", [
    # the soft limit above the sandbox's hard one
    ("resource.setrlimit(resource.RLIMIT_NOFILE, (9000, 8192))", "ValueError", "limits.open_files: RLIMIT_NOFILE"),
    # prlimit on itself: EPERM comes back as PermissionError
    ("resource.prlimit(0, resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))", "PermissionError",
     "limits.open_files: RLIMIT_NOFILE"),
    # the resource in a variable, a size limit, a call spread over lines inside a function
    ("which = resource.RLIMIT_DATA\nresource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))",
     "ValueError", "limits.memory: RLIMIT_DATA is fixed at 8 GiB"),
    ("from resource import setrlimit, RLIMIT_FSIZE\ndef grow():\n    setrlimit(\n        RLIMIT_FSIZE,\n"
     "        (-1, -1),\n    )\ngrow()", "ValueError", "limits.file_size: RLIMIT_FSIZE is fixed at 1 GiB"),
    ("resource.setrlimit(resource.RLIMIT_CORE, (1 << 30, 1 << 30))", "ValueError",
     "core dumps: off: RLIMIT_CORE is fixed at 0"),
])
def test_raising_an_rlimit_neighbours(make_kernel, who, audited, code, ename, rule):
    profile, log = audited
    k = make_kernel(profile, user=who)
    r = k.run("import resource\n" + code)
    assert r.ename == ename, str(r)
    assert _sandbox_line(r).startswith(f"sandbox: refused by profile '{profile}': {rule}"), r.traceback
    assert any(e["layer"] == "rlimits" and e["detail"].startswith(rule) for e in _events(log)), _events(log)


def test_rlimit_the_profile_does_not_set(make_kernel, who, audited):
    """RLIMIT_MEMLOCK is not in the profile: root cannot raise it because the sandbox dropped
    CAP_SYS_RESOURCE (named); an ordinary user never could (no sandbox line)."""
    profile, _ = audited
    k = make_kernel(profile, user=who)
    r = k.run("import resource\nsoft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)\n"
              "resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))")
    if r.status == "ok":
        pytest.skip("RLIMIT_MEMLOCK is already unlimited here")
    assert r.ename == "ValueError", str(r)
    if who is None:
        assert _sandbox_line(r).startswith(
            f"sandbox: refused by profile '{profile}': capabilities: CAP_SYS_RESOURCE is dropped, so root cannot "
            f"raise RLIMIT_MEMLOCK above its hard limit"), r.traceback
    else:
        assert _sandbox_line(r) == "", r.traceback


def test_other_value_errors_get_no_sandbox_line(make_kernel, who, audited):
    profile, log = audited
    k = make_kernel(profile, user=who)
    r = k.run("int('not a number')")
    assert r.ename == "ValueError" and _sandbox_line(r) == "", r.traceback
    r = k.run("raise ValueError('not allowed to raise maximum limit')")  # the words alone, no setrlimit call
    assert r.ename == "ValueError" and _sandbox_line(r) == "", r.traceback
    assert not [e for e in _events(log) if e["layer"] == "rlimits"]
    # and the handler is still in place afterwards
    r = k.run("import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))")
    assert "limits.open_files" in _sandbox_line(r), r.traceback


def test_doctor_piped_into_head_in_a_cell(make_kernel, who):
    """The tour's `!sandbox-kernel doctor | head -8`, and (deterministically) doctor writing
    into a pipe whose reader has gone: no BrokenPipeError traceback."""
    k = make_kernel("free", user=who)
    r = k.ok("!sandbox-kernel doctor | head -3")
    assert r.stdout.startswith("profile: free"), str(r)
    assert "Traceback" not in r.output and "BrokenPipeError" not in r.output, str(r)
    r = k.ok("""
        import os, subprocess, sys
        cli = os.path.join(os.path.dirname(sys.executable), 'sandbox-kernel')
        r, w = os.pipe()
        os.close(r)
        p = subprocess.run([cli, 'doctor'], stdout=w, stderr=subprocess.PIPE, text=True)
        os.close(w)
        print('status', p.returncode)
        print('stderr', repr(p.stderr))
        """)
    assert "status 141\nstderr ''\n" in r.stdout, str(r)
