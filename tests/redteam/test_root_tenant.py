"""A root tenant is not host root: set-id bits, ownership, file capabilities and reads.

A hostile tenant (often uid 0 on a platform) tries, from a cell of a `free` kernel, to make
a program the host will run with privileges (a setuid or setgid file in its notebook
directory, which the host sees without the kernel's nosuid mount; a file capability), to
give a file away (chown), to become another uid, and to read what is not its own: the
host's credential files, another account's private file, another tenant's connection file.
The effect is checked from outside: the file's mode, owner and xattrs on the host, the
secret's bytes in the cell's output. (Host files outside the writable directories are the
mount view's attempts, in test_host_files.py.)"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile

import pytest
from rtutil import attempt, probe

pytestmark = pytest.mark.redteam

NOBODY = 65534
SETID = stat.S_ISUID | stat.S_ISGID

# Each way of putting a set-id bit on a file: (name, cell code that acts on `path`).
SETID_WAYS = {
    "chmod_setuid": "os.chmod(path, 0o4755)",
    "chmod_setgid": "os.chmod(path, 0o2755)",
    "fchmod": "fd = os.open(path, os.O_RDONLY); os.fchmod(fd, 0o4755); os.close(fd)",
    "fchmodat_dir_fd": "d = os.open(os.path.dirname(path), os.O_RDONLY); os.chmod(os.path.basename(path), 0o6755, dir_fd=d)",
    "fchmodat2_raw": ("lib = _rt_ctypes.CDLL(None, use_errno=True); "
                      "r = lib.syscall(452, -100, path.encode(), 0o4755, 0); "
                      "r == 0 or (_ for _ in ()).throw(OSError(_rt_ctypes.get_errno(), 'fchmodat2'))"),
    "open_creat_mode": "os.unlink(path); os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o4755))",
    "creat_raw": ("os.unlink(path); lib = _rt_ctypes.CDLL(None, use_errno=True); fd = lib.creat(path.encode(), 0o4755); "
                  "fd >= 0 or (_ for _ in ()).throw(OSError(_rt_ctypes.get_errno(), 'creat')); os.close(fd)"),
    "mknod_regular": "os.unlink(path); os.mknod(path, stat.S_IFREG | 0o6755)",
    "chmod_in_child": ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
                       "f'import os; os.chmod({path!r}, 0o4755)'], check=False)"),
    "shell_chmod": "import subprocess; subprocess.run(['chmod', 'u+s,g+s', path], check=False)",
}


@pytest.mark.parametrize("way", [pytest.param(w, marks=attempt("seccomp")) for w in SETID_WAYS])
def test_setid_bit_on_a_file_the_host_can_run(pool, who, way):
    """A set-id bit on a program in the notebook directory (the host's own mount of it is not nosuid)."""
    k = pool.get("free", who)
    path = os.path.join(k.cwd, f"rt-setid-{way}")
    shutil.copy("/usr/bin/id", path)
    if who is not None:
        os.chown(path, who.pw_uid, who.pw_gid)
    os.chmod(path, 0o755)
    try:
        res = probe(k, f"""
            import os, stat
            path = {path!r}
            rt_out({{"try": rt_try(lambda: exec({SETID_WAYS[way]!r}))}})
        """)
        st = os.lstat(path) if os.path.lexists(path) else None
        assert st is None or not st.st_mode & SETID, \
            f"{way}: the host sees mode {oct(st.st_mode)} ({res})"
    finally:
        if os.path.lexists(path):
            os.unlink(path)


@attempt("capabilities")
@pytest.mark.covers("capabilities.keep")
def test_chown_a_file_to_another_uid(pool, who):
    """chown of the tenant's own file to another uid (a file given away, e.g. to root or another tenant)."""
    k = pool.get("free", who)
    path = os.path.join(k.cwd, "rt-chown")
    with open(path, "w") as fh:
        fh.write("x")
    if who is not None:
        os.chown(path, who.pw_uid, who.pw_gid)
    before = os.stat(path)
    target = 1 if who is None else 0  # daemon for root's kernel, root for the user's
    try:
        res = probe(k, f"""
            import os
            rt_out({{"chown": rt_try(lambda: os.chown({path!r}, {target}, {target})),
                     "lchown": rt_try(lambda: os.lchown({path!r}, {target}, -1))}})
        """)
        after = os.stat(path)
        assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid), f"owner changed: {res}"
    finally:
        os.unlink(path)


@attempt("capabilities")
def test_file_capability_on_a_program(pool, who):
    """security.capability on a program in the notebook directory (cap_setuid+ep on a copy of python)."""
    k = pool.get("free", who)
    path = os.path.join(k.cwd, "rt-fcap")
    shutil.copy("/usr/bin/id", path)
    if who is not None:
        os.chown(path, who.pw_uid, who.pw_gid)
    # VFS_CAP_REVISION_2, effective, CAP_SETUID in permitted
    value = (0x02000001).to_bytes(4, "little") + (1 << 7).to_bytes(4, "little") + bytes(12)
    try:
        res = probe(k, f"""
            import os
            rt_out({{"setxattr": rt_try(lambda: os.setxattr({path!r}, "security.capability", {value!r}))}})
        """)
        try:
            got = os.getxattr(path, "security.capability")
        except OSError:
            got = None
        assert got is None, f"the host program now has file capabilities {got!r}: {res}"
    finally:
        os.unlink(path)


@attempt("capabilities")
@pytest.mark.covers("capabilities.keep")
def test_become_another_uid(pool, who):
    """setuid/setresuid/setgroups to another account from a child (the kernel must survive)."""
    k = pool.get("free", who)
    res = probe(k, """
        import subprocess, sys
        src = ("import os\\n"
               "for f in (lambda: os.setgroups([0]), lambda: os.setresgid(1, 1, 1), lambda: os.setresuid(1, 1, 1)):\\n"
               "    try: f()\\n"
               "    except OSError: pass\\n"
               "print(os.getresuid(), os.getresgid(), os.getgroups())")
        p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True)
        rt_out({"ids": p.stdout.strip(), "own": str((os.getresuid(), os.getresgid()))})
    """)
    uid = 0 if who is None else who.pw_uid
    assert "(1, 1, 1)" not in res["ids"] and f"({uid}, {uid}, {uid})" in res["ids"], res


@attempt("capabilities")
@pytest.mark.covers("capabilities.keep")
def test_no_capability_is_held(pool, who):
    """What a root tenant holds: no capability in any set (the profile keeps none)."""
    k = pool.get("free", who)
    res = probe(k, """
        sets = {l.split(":")[0]: int(l.split()[1], 16) for l in open("/proc/self/status")
                if l.startswith(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))}
        rt_out(sets)
    """)
    assert res == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}, res


# --------------------------------------------------------------------------- reads


@pytest.fixture(scope="module")
def secrets():
    """Private files of an account that is not the tenant's (nobody): one in a directory every
    profile lets tenants read (/usr/local/share), one in a home under /home with its own
    Jupyter runtime directory and connection file, one in a directory no profile names."""
    out, made = {}, []
    token = os.urandom(8).hex()
    readable_dir = tempfile.mkdtemp(prefix="sbx-rt-", dir="/usr/local/share")
    other_home = tempfile.mkdtemp(prefix="sbx-rt-other-", dir="/home")
    var_dir = tempfile.mkdtemp(prefix="sbx-rt-", dir="/var/lib")
    made += [readable_dir, other_home, var_dir]
    runtime = os.path.join(other_home, ".local/share/jupyter/runtime")
    os.makedirs(runtime)
    files = {
        "in_readable_dir": os.path.join(readable_dir, "secret"),
        "in_other_home": os.path.join(other_home, "secret"),
        "other_tenants_connection_file": os.path.join(runtime, "kernel-rt-other.json"),
        "in_unlisted_dir": os.path.join(var_dir, "secret"),
    }
    for name, path in files.items():
        with open(path, "w") as fh:
            fh.write(f'{{"key": "rt-{name}-{token}"}}')
        out[name] = (path, f"rt-{name}-{token}")
    for root in (readable_dir, other_home, var_dir):
        os.chmod(root, 0o755 if root == readable_dir else 0o700)
        for dirpath, dirs, names in os.walk(root):
            for n in dirs + names:
                p = os.path.join(dirpath, n)
                os.chown(p, NOBODY, NOBODY)
                os.chmod(p, 0o700 if os.path.isdir(p) else 0o600)
        os.chown(root, NOBODY, NOBODY)
    yield out
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


READS = ["in_readable_dir", "in_other_home", "other_tenants_connection_file", "in_unlisted_dir"]


@pytest.mark.parametrize("which", [
    pytest.param("in_readable_dir", marks=attempt("capabilities")),
    pytest.param("in_other_home", marks=attempt("mount_namespace+capabilities")),
    pytest.param("other_tenants_connection_file", marks=attempt("mount_namespace+capabilities")),
    pytest.param("in_unlisted_dir", marks=attempt("mount_namespace+capabilities")),
])
@pytest.mark.covers("filesystem.readable")
def test_read_another_accounts_private_file(pool, who, secrets, which):
    """Another account's 0600 file (and its 0700 home, its Jupyter runtime directory)."""
    k = pool.get("free", who)
    path, secret = secrets[which]
    res = probe(k, f"""
        import subprocess
        def via_child():
            return subprocess.run(["cat", {path!r}], capture_output=True, text=True).stdout
        rt_out({{"open": rt_try(lambda: open({path!r}).read()), "cat": rt_try(via_child),
                 "listdir": rt_try(lambda: str(os.listdir(os.path.dirname({path!r}))))}})
    """)
    assert secret not in str(res), f"read {which}: {res}"


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=attempt("mount_namespace")) for p in
    ["/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_ed25519_key"]])
@pytest.mark.covers("filesystem.hidden")
def test_read_host_credentials(pool, who, path):
    """The host's credential files, which uid 0 owns: hidden in the view and excluded from the read rules."""
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist on this host")
    with open(path) as fh:
        content = fh.read().strip()
    if not content:
        pytest.skip(f"{path} is empty on this host")
    k = pool.get("free", who)
    res = probe(k, f"""
        import subprocess
        rt_out({{"open": rt_try(lambda: open({path!r}).read()),
                 "cat": rt_try(lambda: subprocess.run(["cat", {path!r}], capture_output=True, text=True).stdout)}})
    """)
    line = content.splitlines()[0]
    assert line not in str(res), f"read {path}: {res}"


@attempt("mount_namespace")
@pytest.mark.covers("filesystem.readable")
def test_list_other_homes(pool, who, secrets):
    """The names in another account's home and in /root (which files another tenant has)."""
    k = pool.get("free", who)
    other_home = os.path.dirname(secrets["in_other_home"][0])
    res = probe(k, f"""
        rt_out({{"home": rt_try(lambda: os.listdir({other_home!r})),
                 "var": rt_try(lambda: os.listdir({os.path.dirname(secrets["in_unlisted_dir"][0])!r}))}})
    """)
    assert not isinstance(res["home"], list) and not isinstance(res["var"], list), res


# --------------------------------------------------------------------------- the tenant's uid on the host

SUBUID_PROFILES = {
    # each kernel a host uid of its own (user_namespace.host_uid: subordinate)
    "rt-subuid": "extends: free\nuser_namespace:\n  host_uid: subordinate\n",
    # the same where the platform keeps capabilities a root tenant may want in its own files
    "rt-subuid-caps": ("extends: free\nuser_namespace:\n  host_uid: subordinate\ncapabilities:\n  keep:\n"
                       "    CAP_DAC_OVERRIDE: test\n    CAP_FOWNER: test\n    CAP_CHOWN: test\n"),
}


@pytest.fixture(scope="module")
def own_uids_files(mwho):
    """0600 files of the tenant's own host uid (root for a root tenant) in readable
    directories that no profile hides or makes writable: one directly in /etc, one in a
    directory of /usr/local/share. A root tenant is uid 0: by plain ownership it read them."""
    uid, gid = (0, 0) if mwho is None else (mwho.pw_uid, mwho.pw_gid)
    token = os.urandom(8).hex()
    d = tempfile.mkdtemp(prefix="sbx-rt-own-", dir="/usr/local/share")
    os.chmod(d, 0o755)
    files = {"in_etc": f"/etc/sbx-rt-own-{token}", "in_usr_local": os.path.join(d, "secret")}
    for name, path in files.items():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, f"rt-own-{name}-{token}".encode())
        os.close(fd)
        os.chown(path, uid, gid)
    os.chown(d, uid, gid)
    yield {name: (path, f"rt-own-{name}-{token}") for name, path in files.items()}
    os.unlink(files["in_etc"])
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("profile", [pytest.param(p, marks=attempt("pid_namespace+mount_namespace"))
                                     for p in SUBUID_PROFILES])
def test_read_own_uids_file_outside_the_writable_directories(own_uids_files, mwho, profile):
    """A 0600 file of the tenant's own host uid (root's, for a root tenant) in /etc and in
    /usr/local/share, readable directories not in `hidden`: read by open, by a child's `cat`,
    through a hard link into the notebook directory, after chmod; the kernel runs on a host
    uid of its own (user_namespace.host_uid: subordinate), also with CAP_DAC_OVERRIDE,
    CAP_FOWNER and CAP_CHOWN kept."""
    import kernelutil
    from rtutil import start, stop

    if mwho is not None:
        pytest.skip("user_namespace.host_uid: subordinate needs a root launcher; an ordinary account's kernel is "
                    "its uid on the host and reads that uid's files (docs/security.md)")
    kernelutil.write_profile(profile, SUBUID_PROFILES[profile])
    k = start(profile, mwho, spec_suffix="-own")
    try:
        for name, (path, secret) in own_uids_files.items():
            link = os.path.join(k.cwd, f"rt-own-link-{name}")
            res = probe(k, f"""
                import os, subprocess
                path, link = {path!r}, {link!r}
                def via_link():
                    os.link(path, link)
                    return open(link).read()
                rt_out({{"open": rt_try(lambda: open(path).read()),
                         "cat": rt_try(lambda: subprocess.run(["cat", path], capture_output=True, text=True).stdout),
                         "chmod": rt_try(lambda: os.chmod(path, 0o644)), "then": rt_try(lambda: open(path).read()),
                         "link": rt_try(via_link), "uid": os.getuid()}})
            """)
            assert secret not in json.dumps(res), f"read {path}: {res}"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, res
            assert res["uid"] == 0, f"a root tenant should still be uid 0 inside: {res}"
            if os.path.lexists(link):
                os.unlink(link)
    finally:
        stop(k)
