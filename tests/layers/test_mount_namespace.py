"""Each kernel's private view: its own /tmp, /dev/shm and Jupyter runtime
directory, other kernels' files out of reach, writable directories noexec (W^X).
Through real kernels, as root and as an ordinary user."""

import os
import shutil
import uuid

import kernelutil
import pytest
import tree_programs

pytestmark = pytest.mark.kernel  # every test here starts a real kernel

EXEC_ATTEMPTS = r"""
import ctypes, errno, os, shutil, subprocess, sys
def attempt(fn):
    try:
        fn()
        return "ran"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
out = {{}}
for d in {dirs!r}:
    d = os.path.expanduser(d)
    exe = os.path.join(d, "sbx-true")
    lib = os.path.join(d, "sbx-libm.so")
    shutil.copy("/usr/bin/true", exe); os.chmod(exe, 0o755)
    shutil.copy({libm!r}, lib)
    loader = subprocess.run(["/lib64/ld-linux-x86-64.so.2", exe], capture_output=True)
    out[d] = (attempt(lambda: subprocess.run([exe], check=True)),
              "ran" if loader.returncode == 0 else "refused",
              attempt(lambda: ctypes.CDLL(lib)))
    os.unlink(exe); os.unlink(lib)
print(out)
"""


def _libm() -> str:
    for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"):
        if os.path.exists(p):
            return p
    pytest.skip("no libm.so.6 to copy")


def test_no_program_runs_from_a_writable_directory(shared_kernels, who):
    """execve (Landlock), ld.so ./binary and dlopen (noexec mounts) all fail in every writable
    directory: home, the working directory, /tmp and /dev/shm."""
    if not os.path.exists("/lib64/ld-linux-x86-64.so.2"):
        pytest.skip("not an x86-64 glibc system")
    k = shared_kernels("free", who)
    dirs = ["~", ".", "/tmp", "/dev/shm"]
    r = k.ok(EXEC_ATTEMPTS.format(dirs=dirs, libm=_libm()))
    results = __import__("ast").literal_eval(r.stdout.strip())
    assert len(results) == len(dirs), results  # (keys: the directories, ~ expanded)
    for d, (execve, loader, dlopen) in results.items():
        assert execve == "EACCES", (d, results)
        assert loader == "refused", (d, results)
        assert dlopen != "ran", (d, results)


def test_tmp_and_shm_are_private_and_gone_with_the_kernel(make_kernel, who):
    name = f"sbx-private-{uuid.uuid4().hex}"
    a = make_kernel("free", user=who)
    b = make_kernel("free", user=who)
    a.ok(f"open('/tmp/{name}', 'w').write('a'); open('/dev/shm/{name}', 'w').write('a')")
    seen = b.ok(f"import os; print(os.path.exists('/tmp/{name}'), os.path.exists('/dev/shm/{name}'))").stdout.split()
    assert seen == ["False", "False"], "another kernel sees this kernel's /tmp or /dev/shm"
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/dev/shm/{name}"), "visible on the host"
    r = a.ok("import os; print(os.environ['TMPDIR'], os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize)")
    tmpdir, size = r.stdout.split()
    assert tmpdir == "/tmp" and int(size) <= 2 * 1024**3, r.stdout


def test_runtime_dir_holds_only_this_kernels_connection_file(make_kernel, who, tmp_path):
    """Another kernel's connection file (and so its HMAC key) is out of reach, even for the same uid."""
    a = make_kernel("free", user=who)
    b = make_kernel("free", user=who)
    r = a.ok(f"""
        import errno, os
        from sandbox_kernel.layers.jupyter_paths import jupyter_runtime_dir
        rt = jupyter_runtime_dir(os.environ)
        try:
            listing = sorted(os.listdir(rt))
        except OSError as e:
            listing = errno.errorcode[e.errno]
        try:
            open({b.km.connection_file!r}).read()
            other = "read"
        except OSError as e:
            other = errno.errorcode[e.errno]
        own = open({a.km.connection_file!r}).read() != ""
        print(listing, other, own)
        """)
    listing, other, own = r.stdout.rsplit(" ", 2)
    assert other.strip() in ("ENOENT", "EACCES"), r.stdout
    assert own.strip() == "True", r.stdout
    if os.path.dirname(a.km.connection_file) == os.path.dirname(b.km.connection_file):  # both in the runtime dir
        assert os.path.basename(b.km.connection_file) not in listing, r.stdout


def test_exec_dirs_are_read_only(shared_kernels, who):
    """W^X: directories programs run from (the environment's bin, the interpreter's directory)
    cannot gain new programs from a cell, wherever they lie."""
    k = shared_kernels("free", who)
    r = k.ok("""
        import errno, os, sys
        out = []
        for d in {os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}:
            try:
                open(os.path.join(d, "sbx-planted"), "w").close()
                out.append("written")
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        print(*out)
        """)
    assert all(x in ("EROFS", "EACCES") for x in r.stdout.split()), r.stdout


def test_layers_report_the_private_view(shared_kernels, who):
    k = shared_kernels("free", who)
    out = k.ok("%sandbox").stdout
    for fragment in ("pid_namespace", "trusted_start", "/tmp (tmpfs", "/dev/shm (tmpfs", "noexec", "/ read-only (",
                     "read-write: "):
        assert fragment in out, (fragment, out)


@pytest.mark.covers("filesystem.tmp_size", "filesystem.shm_size")
@pytest.mark.covers("filesystem.tmp_size", "filesystem.shm_size")
def test_tmp_and_shm_are_sized_by_the_profile(make_kernel, who):
    kernelutil.write_profile("small-tmp", """
        extends: free
        filesystem:
          tmp_size: 16MiB
          shm_size: 8MiB
        """)
    k = make_kernel("small-tmp", user=who)
    r = k.ok("""
        import errno, os
        def fill(path, mib):
            try:
                with open(path, "wb") as fh:
                    for _ in range(mib):
                        fh.write(b"x" * 1024 * 1024)
                return "written"
            except OSError as e:
                return errno.errorcode[e.errno]
        print(fill("/tmp/big", 24), fill("/dev/shm/big", 12))
        """)
    assert r.stdout.split() == ["ENOSPC", "ENOSPC"], r.stdout


@pytest.mark.covers("exec.allow")
@pytest.mark.parametrize("kind", list(tree_programs.TREES))
def test_exec_allow_naming_a_package_trees_bin_runs_its_programs(make_kernel, who, kind):
    """The control of redteam/test_exec.py::test_offline_runs_library_tree_program_through_ld_so:
    where exec.allow names a package tree's bin directory (offline plus
    /usr/lib/jvm/<jdk>/bin), the same cell runs its program through the ELF loader (that
    directory is not mounted noexec), while another tree's program stays refused."""
    program, arg, expect = tree_programs.find(kind)
    others = [tree_programs.find(o) for o in tree_programs.TREES if o != kind and tree_programs.installed(o)]
    bin_dir = os.path.realpath(os.path.dirname(program))
    kernelutil.write_profile(f"offline-{kind}", f"""
        extends: offline
        exec:
          allow: ["{{python}}", "{bin_dir}"]
        """)
    k = make_kernel(f"offline-{kind}", user=who)
    res = tree_programs.result(k.ok(tree_programs.cell(program, arg), timeout=180).stdout)
    assert tree_programs.ran(res, expect), f"{program} did not run where exec.allow names {bin_dir}: {res}"
    for other, other_arg, other_expect in others:
        res = tree_programs.result(k.ok(tree_programs.cell(other, other_arg), timeout=180).stdout)
        assert res[0] is not None and not tree_programs.ran(res, other_expect), (other, res)


@pytest.mark.covers("filesystem.hidden")
def test_a_hidden_package_tree_leaves_the_private_view_whole(make_kernel, who):
    """A profile that hides a package's tree (offline plus filesystem.hidden: /usr/lib/llvm-14):
    its bin directory, which the view would mount noexec, is not reachable in the view; the view
    is built all the same (before, the mount of that directory failed and the best-effort layer
    was dropped whole)."""
    kind = next((k for k in tree_programs.TREES if tree_programs.installed(k)), None)
    if kind is None:
        pytest.skip("no JDK, LLVM or PostgreSQL tree below /usr/lib here")
    program, arg, expect = tree_programs.find(kind)
    tree = os.path.realpath(os.path.dirname(os.path.dirname(program)))
    kernelutil.write_profile("offline-hidden-tree", f"""
        extends: offline
        filesystem:
          hidden: ["{tree}"]
        """)
    k = make_kernel("offline-hidden-tree", user=who)
    r = k.ok("import json, os; print(json.loads(os.environ['SANDBOX_KERNEL_LAYERS'])['mount_namespace']['state'])")
    assert r.stdout.strip() == "active", r.stdout
    res = tree_programs.result(k.ok(tree_programs.cell(program, arg), timeout=180).stdout)
    assert res[0] is not None and not tree_programs.ran(res, expect), res


@pytest.fixture
def daemon_socket():
    """A listening UNIX socket in a directory of its own, as a host daemon's would be."""
    import socket
    import tempfile
    d = tempfile.mkdtemp(prefix="sbx-daemon-", dir="/var/tmp")
    os.chmod(d, 0o755)
    path = os.path.join(d, "daemon.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o777)
    s.listen(8)
    s.settimeout(0.5)
    yield d, path, s
    s.close()
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.covers("filesystem.hidden")
@pytest.mark.covers("filesystem.hidden")
def test_hidden_daemon_socket_cannot_be_reached(make_kernel, who, daemon_socket):
    """filesystem.hidden: a host daemon's socket directory is covered in the kernel's view, so its
    pathname socket cannot be connected to (Landlock has no rule for that connect on ABI 7)."""
    d, path, server = daemon_socket
    kernelutil.write_profile("hide-daemon", f"""
        extends: free
        filesystem:
          hidden: [{d}]
        """)
    k = make_kernel("hide-daemon", user=who)
    r = k.ok(f"""
        import errno, os, socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect({path!r}); print("connected")
        except OSError as e:
            print(errno.errorcode[e.errno])
        try:
            print(os.listdir({d!r}))
        except (PermissionError, FileNotFoundError) as e:
            print(errno.errorcode[e.errno])  # not in filesystem.readable either: refused, or absent from the view
        """)
    assert r.stdout.split("\n")[0] == "ENOENT" and r.stdout.split("\n")[1] in ("[]", "EACCES", "ENOENT"), r.stdout
    with pytest.raises(OSError):
        server.accept()  # nothing reached the daemon


@pytest.mark.covers("filesystem.home")
@pytest.mark.covers("filesystem.home")
def test_tenants_sharing_a_uid_get_their_own_home(make_kernel, who):
    """filesystem.home with {tenant}: HOME and {home} are the tenant's own directory; with the
    tenants' parent directory hidden, no tenant can read another's home."""
    import tempfile
    root = tempfile.mkdtemp(prefix="sbx-tenants-", dir="/var/tmp")
    os.chmod(root, 0o755)
    for t in ("alice", "bob"):
        os.mkdir(os.path.join(root, t))
        with open(os.path.join(root, t, "secret.txt"), "w") as fh:
            fh.write(f"{t}'s secret")
        if who:
            os.chown(os.path.join(root, t), who.pw_uid, who.pw_gid)
    kernelutil.write_profile("tenant-home", f"""
        extends: free
        filesystem:
          home: {root}/{{tenant}}
          hidden: [{root}]
        """)
    try:
        alice = make_kernel("tenant-home", user=who, env={"SANDBOX_KERNEL_TENANT": "alice"})
        r = alice.ok(f"""
            import errno, os
            print(os.environ["HOME"], open(os.path.expanduser("~/secret.txt")).read())
            open(os.path.expanduser("~/note.txt"), "w").write("from alice")
            try:
                print(open({root!r} + "/bob/secret.txt").read())
            except OSError as e:
                print(errno.errorcode[e.errno])
            """)
        home, secret, other = r.stdout.strip().split("\n")[0].split(" ", 1) + r.stdout.strip().split("\n")[1:]
        assert home == f"{root}/alice" and secret == "alice's secret", r.stdout
        assert other in ("ENOENT", "EACCES"), r.stdout
        assert open(os.path.join(root, "alice", "note.txt")).read() == "from alice"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.covers("filesystem.home")
@pytest.mark.covers("filesystem.home")
def test_tenant_home_needs_the_tenant_name(who, tmp_path):
    kernelutil.write_profile("tenant-home-unset", """
        extends: free
        filesystem:
          home: /var/tmp/{tenant}
        """)
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    p = kernelutil.run_launcher("tenant-home-unset", user=who.pw_name if who else None, cwd=cwd,
                                env={"SANDBOX_KERNEL_TENANT": "../etc"})
    assert p.returncode == 1 and "SANDBOX_KERNEL_TENANT" in p.stderr and "Traceback" not in p.stderr, p
