"""Host files outside every writable directory: a root tenant once changed
the mode, owner, times and extended attributes of root's and other accounts' files in a
directory the profile never makes writable (Landlock has no right for chmod, chown, utime
or xattrs), and made a copy of `id` setuid root, which an ordinary user then ran as euid 0.

The kernel's view of / is read-only, with only the writable directories bound back
read-write (mount namespace). Each attempt here works on fresh host files in a directory
under /var/tmp that no profile makes writable: a root-owned file, a file of another account
(the test user), a copy of /usr/bin/id and a subdirectory. The effect is checked from the
host: content, mode, owner, times, extended attributes and the directory's entries are as
they were."""

from __future__ import annotations

import os
import shutil
import tempfile

import kernelutil
import pytest
from rtutil import attempt, probe

pytestmark = pytest.mark.redteam


@pytest.fixture
def host_dir(who):
    """A directory outside every writable one, holding files of root and of another account."""
    other = who if who is not None else kernelutil.ensure_user()
    d = tempfile.mkdtemp(prefix="sbx-hostfiles-", dir="/var/tmp")
    os.chmod(d, 0o755)
    files = {
        "root_file": os.path.join(d, "root-owned.txt"),
        "user_file": os.path.join(d, "user-owned.txt"),
        "prog": os.path.join(d, "id-copy"),
    }
    with open(files["root_file"], "w") as fh:
        fh.write("root's data\n")
    os.chmod(files["root_file"], 0o644)
    with open(files["user_file"], "w") as fh:
        fh.write("another account's data\n")
    os.chown(files["user_file"], other.pw_uid, other.pw_gid)
    os.chmod(files["user_file"], 0o644)
    shutil.copy("/usr/bin/id", files["prog"])
    os.chmod(files["prog"], 0o755)
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    os.chmod(sub, 0o755)
    try:
        yield d, files
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _state(d: str) -> dict:
    """Everything about the host directory a cell could have changed."""
    out = {"entries": sorted(os.listdir(d))}
    for name in os.listdir(d):
        p = os.path.join(d, name)
        st = os.lstat(p)
        data = open(p, "rb").read() if os.path.isfile(p) else None
        try:
            xattrs = sorted(os.listxattr(p, follow_symlinks=False))
        except OSError:
            xattrs = []
        out[name] = (data, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, xattrs)
    return out


METADATA = r"""
import os
files = {files!r}
uid = {uid}
caps = bytes.fromhex("0100000200200000000000000000000000000000")  # v2 file caps: cap_setuid permitted+effective
res = {{}}
for name, p in files.items():
    res[name] = {{
        "chmod": rt_try(lambda: os.chmod(p, 0o666)),
        "chown": rt_try(lambda: os.chown(p, uid, uid)),
        "chown_root": rt_try(lambda: os.chown(p, 0, 0)),
        "utime": rt_try(lambda: os.utime(p, (0, 0))),
        "utime_now": rt_try(lambda: os.utime(p)),
        "xattr_user": rt_try(lambda: os.setxattr(p, "user.rt", b"x")),
        "xattr_caps": rt_try(lambda: os.setxattr(p, "security.capability", caps)),
        "setuid": rt_try(lambda: os.chmod(p, 0o4755)),
        "setgid": rt_try(lambda: os.chmod(p, 0o2755)),
    }}
    fd = rt_try(lambda: os.open(p, os.O_PATH))
    if isinstance(fd, int):  # through a file descriptor instead of the path
        res[name]["fchmod_proc_fd"] = rt_try(lambda: os.chmod(f"/proc/self/fd/{{fd}}", 0o4755))
        os.close(fd)
    fd = rt_try(lambda: os.open(p, os.O_RDONLY))
    if isinstance(fd, int):
        res[name]["fchmod"] = rt_try(lambda: os.fchmod(fd, 0o4777))
        res[name]["fchown"] = rt_try(lambda: os.fchown(fd, uid, uid))
        res[name]["futime"] = rt_try(lambda: os.utime(fd, (0, 0)))
        res[name]["fsetxattr"] = rt_try(lambda: os.setxattr(fd, "user.rt", b"x"))
        os.close(fd)
rt_out(res)
"""


@attempt("mount_namespace")
def test_change_metadata_of_host_files(pool, who, host_dir):
    """chmod (0666, setuid, setgid), chown, utime and setxattr (user.* and security.capability),
    by path, by /proc/self/fd and on an open file, on files outside every writable directory."""
    d, files = host_dir
    other = who if who is not None else kernelutil.ensure_user()
    before = _state(d)
    res = probe(pool.get("free", who), METADATA.format(files=files, uid=other.pw_uid))
    assert _state(d) == before, f"a host file outside the writable directories changed: {res}"


CONTENT = r"""
import os
d, files, writable = {d!r}, {files!r}, {writable!r}
res = {{}}
for name, p in files.items():
    res[name] = {{
        "open_trunc": rt_try(lambda: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))),
        "open_append": rt_try(lambda: rt_write(p, "x", "a")),
        "truncate": rt_try(lambda: os.truncate(p, 0)),
        "rename_out": rt_try(lambda: os.rename(p, os.path.join(writable, name))),
        "rename_in_place": rt_try(lambda: os.rename(p, p + ".moved")),
        "link_out": rt_try(lambda: os.link(p, os.path.join(writable, name + ".lnk"))),
        "unlink": rt_try(lambda: os.unlink(p)),
    }}
    lnk = os.path.join(writable, name + ".lnk")
    if os.path.exists(lnk):  # a hard link in a writable directory is the same inode
        res[name]["chmod_link"] = rt_try(lambda: os.chmod(lnk, 0o4777))
        res[name]["write_link"] = rt_try(lambda: rt_write(lnk, "x", "a"))
        os.unlink(lnk)
res["mknod"] = rt_try(lambda: os.mknod(os.path.join(d, "null"), 0o20666, os.makedev(1, 3)))
res["mkfifo"] = rt_try(lambda: os.mkfifo(os.path.join(d, "fifo")))
res["create"] = rt_try(lambda: rt_write(os.path.join(d, "new"), "x"))
res["symlink"] = rt_try(lambda: os.symlink("/etc/shadow", os.path.join(d, "sym")))
res["mkdir"] = rt_try(lambda: os.mkdir(os.path.join(d, "newdir")))
res["rmdir"] = rt_try(lambda: os.rmdir(os.path.join(d, "sub")))
res["chmod_dir"] = rt_try(lambda: os.chmod(d, 0o777))
res["chmod_sub"] = rt_try(lambda: os.chmod(os.path.join(d, "sub"), 0o1777))
rt_out(res)
"""


@attempt("mount_namespace")
@pytest.mark.covers("filesystem.writable")
def test_change_content_or_names_of_host_files(pool, who, host_dir):
    """Truncate (O_TRUNC, truncate()), append, rename and hard-link into a writable directory (then
    chmod the link), unlink, mknod, mkfifo, create, symlink, mkdir, rmdir and chmod of the directory."""
    d, files = host_dir
    k = pool.get("free", who)
    before = _state(d)
    res = probe(k, CONTENT.format(d=d, files=files, writable=k.cwd))
    assert _state(d) == before, f"a host file or directory outside the writable directories changed: {res}"
    for name in files:
        assert not os.path.exists(os.path.join(k.cwd, name)), res
        assert not os.path.exists(os.path.join(k.cwd, name + ".lnk")), res


@attempt("mount_namespace")
@pytest.mark.covers("filesystem.writable")
def test_view_of_root_is_read_only(pool, who):
    """Every mount outside the writable directories is read-only in the kernel's view (the
    bubblewrap `--ro-bind / /` idea), while the writable ones, the devices and ptys still work."""
    k = pool.get("free", who)
    res = probe(k, r"""
        import os, pty
        res = {"root": os.statvfs("/").f_flag & os.ST_RDONLY, "etc": os.statvfs("/etc").f_flag & os.ST_RDONLY,
               "usr": os.statvfs("/usr").f_flag & os.ST_RDONLY, "sys": os.statvfs("/sys").f_flag & os.ST_RDONLY,
               "cwd": os.statvfs(".").f_flag & os.ST_RDONLY, "tmp": os.statvfs("/tmp").f_flag & os.ST_RDONLY,
               "shm": os.statvfs("/dev/shm").f_flag & os.ST_RDONLY,
               "home": os.statvfs(os.path.expanduser("~")).f_flag & os.ST_RDONLY}
        res["dev_null"] = rt_try(lambda: rt_write("/dev/null", "x"))
        res["write_cwd"] = rt_try(lambda: rt_write("rt-probe.txt", "x"))
        res["write_tmp"] = rt_try(lambda: rt_write("/tmp/rt-probe.txt", "x"))
        res["write_shm"] = rt_try(lambda: rt_write("/dev/shm/rt-probe.txt", "x"))
        def openpty():
            m, s = pty.openpty()
            os.write(m, b"x\n"); os.read(s, 2)
            os.close(m); os.close(s)
        res["pty"] = rt_try(openpty)
        rt_out(res)
        """)
    assert res["root"] and res["etc"] and res["usr"] and res["sys"], res
    assert not (res["cwd"] or res["tmp"] or res["shm"]), res
    assert res["dev_null"] == res["write_cwd"] == res["write_tmp"] == res["write_shm"] == res["pty"] == "ok", res
    os.unlink(os.path.join(k.cwd, "rt-probe.txt"))


@attempt("mount_namespace")
def test_change_host_files_without_mount_setattr(kernels, who, host_dir):
    """Where the machine has no mount_setattr(2) (Linux before 5.12, simulated here), every mount
    is remounted read-only one by one from /proc/self/mountinfo, keeping the flags a user
    namespace locks: the same attempts change nothing."""
    d, files = host_dir
    other = who if who is not None else kernelutil.ensure_user()
    k = kernels("free", who, env={"SANDBOX_KERNEL_SIMULATE_MISSING": "mount_setattr"}, spec_suffix="-nosetattr")
    detail = probe(k, "import json, os\nrt_out(json.loads(os.environ['SANDBOX_KERNEL_LAYERS'])['mount_namespace'])")
    assert "/ read-only (bind remounts)" in detail["detail"], detail
    before = _state(d)
    res = probe(k, METADATA.format(files=files, uid=other.pw_uid))
    res.update(probe(k, CONTENT.format(d=d, files=files, writable=k.cwd)))
    assert _state(d) == before, f"a host file outside the writable directories changed: {res}"
    r = probe(k, "rt_out({'cwd': rt_try(lambda: rt_write('rt-probe.txt', 'x')), "
                 "'tmp': rt_try(lambda: rt_write('/tmp/rt-probe.txt', 'x'))})")
    assert r == {"cwd": "ok", "tmp": "ok"}, r


@attempt("pid_namespace")
def test_change_inherited_output_file(kernels, who):
    """The kernel's stderr is a host file (Jupyter's output redirected to a log): an open file is
    reached through the mount it was opened on, the host's, not the kernel's read-only view. The
    kernel gets a pipe instead, which its supervisor copies into the file: fchmod (setuid),
    fchown, futimens, ftruncate and fsetxattr on fds 0, 1 and 2 leave the log as it was, and
    what the kernel writes there still arrives."""
    k = kernels("free", who, spec_suffix="-logfile")
    log = k.stderr_path
    os.chmod(log, 0o644)
    st = os.stat(log)
    res = probe(k, r"""
        import os
        res = {}
        for fd in (0, 1, 2):
            res[fd] = {"fchmod": rt_try(lambda: os.fchmod(fd, 0o4755)), "fchown": rt_try(lambda: os.fchown(fd, 0, 0)),
                       "futime": rt_try(lambda: os.utime(fd, (0, 0))), "ftruncate": rt_try(lambda: os.ftruncate(fd, 0)),
                       "fsetxattr": rt_try(lambda: os.setxattr(fd, "user.rt", b"x")),
                       "reopen": rt_try(lambda: os.chmod(f"/proc/self/fd/{fd}", 0o4755))}
        os.write(2, b"rt-marker-from-the-kernel\n")
        rt_out(res)
        """)
    after = os.stat(log)
    assert (after.st_mode, after.st_uid, after.st_gid) == (st.st_mode, st.st_uid, st.st_gid), res
    assert after.st_mtime_ns >= st.st_mtime_ns and after.st_size >= st.st_size, res
    assert not os.listxattr(log), res
    assert kernelutil.wait_for(lambda: "rt-marker-from-the-kernel" in open(log).read()), "the kernel's output was lost"


PROC_WRITES = r"""
import os, subprocess
tid = os.getpid()
watched = ("/proc/self/comm", "/proc/self/oom_score_adj", "/proc/self/coredump_filter")
before = {p: open(p).read() for p in watched}
res = {}
for p, v in [("/proc/self/comm", "rt-evil"), (f"/proc/self/task/{tid}/comm", "rt-evil"),
             ("/proc/self/oom_score_adj", "1000"), ("/proc/self/coredump_filter", "0x7f"),
             ("/proc/self/clear_refs", "1"), ("/proc/sys/kernel/core_pattern", "|/tmp/rt-evil"),
             ("/proc/sys/vm/drop_caches", "1"), ("/proc/sysrq-trigger", "h"),
             ("/proc/irq/default_smp_affinity", "1"), ("/proc/pressure/cpu", "some 150000 1000000"),
             # the neighbours Landlock also held under the view: a new file in the view's own /dev, sysfs
             ("/dev/rt-new", "x"), ("/sys/kernel/mm/transparent_hugepage/enabled", "never")]:
    if os.path.exists(p) or p == "/dev/rt-new":
        res[p] = rt_try(lambda: rt_write(p, v))
res["child"] = subprocess.run(["/bin/sh", "-c", "echo rt-evil > /proc/self/comm && echo written"],
                              capture_output=True, text=True).stdout.strip()
res["unchanged"] = {p: open(p).read() == before[p] for p in watched}
rt_out(res)
"""


@attempt("mount_namespace")
def test_write_proc_files(pool, who):
    """Under the read view Landlock handles no filesystem right (layers.landlock.files_handled), so
    /proc is read-only in the kernel's view: the kernel's own task files (comm, oom_score_adj,
    coredump_filter, clear_refs), the host-wide ones a root tenant could write without a capability
    (core_pattern, drop_caches, sysrq-trigger, IRQ affinity, a pressure trigger), from a cell and from
    a child's shell; and the neighbours: a new file in the view's own /dev, a sysfs setting. The effects
    are checked: the files read back as before, the host's core_pattern and THP setting are unchanged,
    no file was created."""
    k = pool.get("free", who)
    host_core = open("/proc/sys/kernel/core_pattern").read()
    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    host_thp = open(thp).read() if os.path.exists(thp) else None
    res = probe(k, PROC_WRITES)
    assert open("/proc/sys/kernel/core_pattern").read() == host_core, res
    assert host_thp is None or open(thp).read() == host_thp, res
    assert all(res["unchanged"].values()), res
    assert res["child"] == "", res
    assert res["/dev/rt-new"] == "EROFS", res
    written = {p: got for p, got in res.items() if p.startswith("/") and got not in ("EROFS", "EACCES", "EPERM")}
    assert not written, res
    assert res["/proc/self/comm"] == "EROFS", res  # (the mount refuses it, not a permission)
