"""user_namespace.host_uid: subordinate (sandbox_kernel/layers/subuid.py): a root tenant's kernel
on a host uid of its own keeps what it legitimately does (its notebook directory, its home,
packages installed into them), and those ids are allocated one per live kernel.

The attempts against it (root's own files outside the writable directories, shares above the
host's limits) are in tests/redteam/test_root_tenant.py and test_counters.py."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile

import kernelutil
import pytest

from sandbox_kernel.errors import SandboxError
from sandbox_kernel.layers import subuid

IS_ROOT = os.geteuid() == 0
PROFILE = "hostuid-sub"


def _wheel(path: str) -> None:
    """A minimal pure-Python wheel (installable offline, no build step)."""
    files = {"sbxhostuidpkg/__init__.py": b"VALUE = 42\n",
             "sbxhostuidpkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: sbxhostuidpkg\nVersion: 0.1\n",
             "sbxhostuidpkg-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append("sbxhostuidpkg-0.1.dist-info/RECORD,,")
        z.writestr("sbxhostuidpkg-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    with open(path, "wb") as fh:
        fh.write(buf.getvalue())


@pytest.fixture
def root_only(who):
    if who is not None:
        pytest.skip("user_namespace.host_uid: subordinate needs a root launcher (an ordinary account's kernel is "
                    "refused: test_an_ordinary_account_is_refused)")


@pytest.mark.covers("user_namespace.host_uid")
@pytest.mark.covers("user_namespace.host_uid")
def test_root_tenant_keeps_its_files_on_a_host_uid_of_its_own(make_kernel, who, root_only, tmp_path):
    """Notebook writes, a package installed into the home (pip), chmod of its own file: all work,
    the kernel is uid 0 inside, and on the host what it made belongs to root (the tenant)."""
    kernelutil.write_profile(PROFILE, "extends: free\nuser_namespace:\n  host_uid: subordinate\n")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    wheel = tmp_path / "sbxhostuidpkg-0.1-py3-none-any.whl"
    _wheel(str(wheel))
    k = make_kernel(PROFILE, env={"HOME": str(home)})
    r = k.ok(f"""
        import os, subprocess, sys
        open("notebook-output.txt", "w").write("written")
        os.mkdir("made-dir")
        os.chmod("notebook-output.txt", 0o600)
        p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                            "--no-warn-script-location", "--prefix", os.path.expanduser("~/.local"), {str(wheel)!r}],
                           capture_output=True, text=True)
        print("PIP", p.returncode, p.stderr[-800:].replace(chr(10), " "))
        site = os.path.expanduser("~/.local/lib/python%d.%d/site-packages" % sys.version_info[:2])
        sys.path.insert(0, site)
        import sbxhostuidpkg
        print("IMPORTED", sbxhostuidpkg.VALUE, "UID", os.getuid(), os.stat("notebook-output.txt").st_uid)
        print("MAP", open("/proc/self/uid_map").read().split())
    """)
    assert "PIP 0 " in r.stdout and "IMPORTED 42 UID 0 0" in r.stdout, r.stdout
    inside, outside = r.stdout.split("MAP")[1].split("]")[0].strip(" ['").replace("'", "").split(", ")[:2]
    assert inside == "0" and int(outside) != 0, r.stdout
    made = [tmp_path / "notebook-output.txt", tmp_path / "made-dir"]
    made += [p for p in home.rglob("*")]
    assert any(p.name == "__init__.py" for p in made), made
    for p in made:
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (0, 0), f"{p} belongs to {st.st_uid}:{st.st_gid} on the host"
    assert (tmp_path / "notebook-output.txt").read_text() == "written"
    assert oct(os.stat(tmp_path / "notebook-output.txt").st_mode & 0o777) == oct(0o600)


@pytest.mark.covers("user_namespace.host_uid")
@pytest.mark.covers("user_namespace.host_uid")
def test_an_ordinary_account_is_refused(who, tmp_path):
    """An ordinary account's launcher cannot give its kernel a host uid of its own: one clear line, no start."""
    if who is None:
        pytest.skip("the refusal is the ordinary account's")
    import subprocess
    import sys

    kernelutil.write_profile(PROFILE, "extends: free\nuser_namespace:\n  host_uid: subordinate\n")
    cwd = kernelutil.user_workdir(who)
    env = dict(os.environ, HOME=who.pw_dir, USER=who.pw_name, LOGNAME=who.pw_name)
    p = subprocess.run(kernelutil.setpriv(who.pw_name) + [os.path.join(os.path.dirname(sys.executable), "sandbox-kernel"),
                                                          "run", "--profile", PROFILE, "--", "/usr/bin/true"],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "user_namespace.host_uid is subordinate" in lines[0] and "not root" in lines[0], p.stderr


@pytest.mark.covers("user_namespace.host_uid")
@pytest.mark.skipif(not IS_ROOT, reason="the allocation's lock directory must be root's")
@pytest.mark.covers("user_namespace.host_uid")
def test_ids_are_one_per_live_kernel(tmp_path, monkeypatch):
    """Two allocations never share an id; a full range refuses with one line; an id is free
    again once its holder's lock is gone (the supervisor, relay and init hold it)."""
    import pwd

    name = pwd.getpwuid(0).pw_name
    (tmp_path / "subuid").write_text(f"someone:5000:10\n{name}:7000:2\n")
    (tmp_path / "subgid").write_text(f"{name}:8000:3\n")
    run = tmp_path / "run"
    monkeypatch.setattr(subuid, "SUBUID", str(tmp_path / "subuid"))
    monkeypatch.setattr(subuid, "SUBGID", str(tmp_path / "subgid"))
    monkeypatch.setattr(subuid, "RUN_DIR", str(run))
    a = subuid.allocate()
    b = subuid.allocate()
    assert {(a.uid, a.gid), (b.uid, b.gid)} == {(7000, 8000), (7001, 8001)}
    with pytest.raises(SandboxError) as e:
        subuid.allocate()
    assert "held by a live kernel" in str(e.value) and "\n" not in str(e.value)
    os.close(a.lock_fd)
    c = subuid.allocate()
    assert (c.uid, c.gid) == (a.uid, a.gid)
    os.close(b.lock_fd)
    os.close(c.lock_fd)
    os.chmod(run, 0o777)
    with pytest.raises(SandboxError) as e:
        subuid.allocate()
    assert "only root can write" in str(e.value)
    (tmp_path / "subuid").write_text("someone:5000:10\n")
    with pytest.raises(SandboxError) as e:
        subuid.allocate()
    assert "has no range for" in str(e.value) and "usermod --add-subuids" in str(e.value)


def test_an_audited_kernel_on_a_host_uid_of_its_own(make_kernel, who, root_only):
    """user_namespace.host_uid: subordinate with an audit log: the kernel (a subordinate host uid)
    still sends its events to the supervisor, which writes the trail."""
    import json

    log = kernelutil.AUDIT_DIR / "hostuid.jsonl"
    kernelutil.write_profile(PROFILE + "-audited", f"extends: free\nuser_namespace:\n  host_uid: subordinate\n"
                                                   f"audit:\n  log: {log}\n")
    k = make_kernel(PROFILE + "-audited")
    assert k.run("import roop").status == "error"
    assert kernelutil.wait_for(lambda: log.exists() and any(
        json.loads(line).get("what") == "import roop" for line in log.read_text().splitlines()), timeout=20)
    assert k.run("open(%r, 'a')" % str(log)).status == "error"
