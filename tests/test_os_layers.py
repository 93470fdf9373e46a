"""The OS-enforced layer through real kernels: network by mode, syscalls, exec, protected
paths, restart, resource bombs, forked children's output. As root and as an ordinary user."""

import json
import os
import socket
from pathlib import Path

import kernelutil
import pytest

from sandbox_kernel import resources


@pytest.fixture(scope="module")
def listeners():
    """Two TCP listeners on 127.0.0.1: `allowed` is listed in the restricted profile, `other` is not."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        socks.append(s)
    acceptors = [kernelutil.Acceptor(s) for s in socks]
    ports = {"allowed": socks[0].getsockname()[1], "other": socks[1].getsockname()[1]}
    for mode in ("none", "restricted", "full"):
        extra = f", tcp_connect_ports: [{ports['allowed']}]" if mode == "restricted" else ""
        kernelutil.write_profile(f"net-{mode}", f"""
            extends: base
            network: {{mode: {mode}{extra}}}
            limits:
              memory: 4GiB
              processes: 256
            """)
    kernelutil.write_profile("net-full-servers", """
        extends: base
        network: {mode: full, listen_ports: any}
        limits:
          memory: 4GiB
          processes: 256
        """)
    yield ports
    for a in acceptors:
        a.close()


PROBE = r"""
import ctypes, errno, json, os, socket, subprocess, sys
ports = {ports!r}
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=3); s.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("127.0.0.1", ports["allowed"])); s.close()
def listen():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1); s.close()
child = ("import socket, sys\n"
         "try:\n socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3).close(); print('ok')\n"
         "except OSError as e:\n import errno; print(errno.errorcode[e.errno])")
libc = ctypes.CDLL(None, use_errno=True)
def raw_syscall(nr, *args):
    r = libc.syscall(nr, *args)
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno())
out = {{
    "tcp_allowed": attempt(lambda: tcp(ports["allowed"])),
    "tcp_other": attempt(lambda: tcp(ports["other"])),
    "udp": attempt(udp),
    "listen": attempt(listen),
    "raw_icmp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    "packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
    "sctp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)),
    "unix": attempt(lambda: socket.socket(socket.AF_UNIX).close()),
    "subprocess_allowed": subprocess.run([sys.executable, "-c", child, str(ports["allowed"])], capture_output=True, text=True).stdout.strip(),
    "subprocess_other": subprocess.run([sys.executable, "-c", child, str(ports["other"])], capture_output=True, text=True).stdout.strip(),
    "ctypes_socket_inet": raw_syscall(41, 2, 1, 0),
    "ctypes_ptrace_attach": raw_syscall(101, 16, os.getppid(), 0, 0),
    "ctypes_mount": raw_syscall(165, b"none", b"/mnt", b"tmpfs", 0, None),
    "ctypes_bpf": raw_syscall(321, 0, None, 0),
    "ctypes_unshare_user": raw_syscall(272, 0x10000000),
    "ctypes_unshare_net": raw_syscall(272, 0x40000000),
    "ctypes_clone_newns": raw_syscall(56, 0x00020000 | 17, 0, 0, 0, 0),
    "io_uring_setup": raw_syscall(425, 8, None),
    "init_module": raw_syscall(175, None, 0, b""),
    "keyctl": raw_syscall(250, 0, 0, 0, 0, 0),
}}
print(json.dumps(out))
"""

EXPECTED_NET = {
    "none": {"tcp_allowed": "EPERM", "tcp_other": "EPERM", "udp": "EPERM", "listen": "EPERM",
             "ctypes_socket_inet": "EPERM"},
    "restricted": {"tcp_allowed": "ok", "tcp_other": "EACCES", "udp": "EPERM", "listen": "EACCES",
                   "ctypes_socket_inet": "ok"},
    # listen(): no server on an IP socket unless network.listen_ports allows it (supervisor, seccomp notify)
    "full": {"tcp_allowed": "ok", "tcp_other": "ok", "udp": "ok", "listen": "EPERM", "ctypes_socket_inet": "ok"},
}


@pytest.mark.covers("network.mode", "network.tcp_connect_ports", "network.udp")
@pytest.mark.parametrize("mode", ["none", "restricted", "full"])
@pytest.mark.covers("network.mode", "network.tcp_connect_ports", "network.udp")
def test_network_and_syscalls(make_kernel, listeners, who, mode):
    k = make_kernel(f"net-{mode}", user=who)
    r = k.ok(PROBE.format(ports=listeners))
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for key, want in EXPECTED_NET[mode].items():
        assert got[key] == want, (key, got)
    # children (python started from the kernel) get exactly the same answer
    assert got["subprocess_allowed"] == EXPECTED_NET[mode]["tcp_allowed"], got
    assert got["subprocess_other"] == EXPECTED_NET[mode]["tcp_other"], got
    # raw and packet sockets, SCTP (not covered by Landlock's TCP rules): denied in every mode
    assert got["raw_icmp"] == "EPERM" and got["packet"] == "EPERM"
    if mode == "full":  # not refused by the sandbox (this kernel may lack SCTP support)
        assert got["sctp"] in ("ok", "EPROTONOSUPPORT"), got
    else:
        assert got["sctp"] == "EPERM", got
    assert got["unix"] == "ok"
    for key in ("ctypes_ptrace_attach", "ctypes_mount", "ctypes_bpf", "ctypes_unshare_user",
                "ctypes_unshare_net", "ctypes_clone_newns", "init_module", "keyctl"):
        assert got[key] == "EPERM", (key, got)
    assert got["io_uring_setup"] == "ENOSYS"
    # the same network answer from a `!` shell line (a shell started by the kernel)
    shell = k.ok(f"!python -c \"import socket; socket.create_connection(('127.0.0.1', {listeners['other']}), timeout=3); print('CONNECTED')\"")
    assert ("CONNECTED" in shell.stdout) == (mode == "full"), shell.stdout


SHELLCODE = r"""
import ctypes, mmap, os, sys
code = bytes.fromhex(sys.argv[1])
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
ctypes.CFUNCTYPE(ctypes.c_long)(addr)()
print("survived")
"""


def test_other_syscall_abis_are_killed(make_kernel):
    k = make_kernel("free")
    # i386 getpid through int 0x80, and x32 getpid (syscall number | 0x40000000)
    r = k.ok(f"""
        import subprocess, sys, signal
        src = {SHELLCODE!r}
        for name, hexcode in [("i386", "b814000000cd80c3"), ("x32", "48c7c0270000400f05c3")]:
            p = subprocess.run([sys.executable, "-c", src, hexcode], capture_output=True, text=True)
            print(name, p.returncode, "survived" in p.stdout)
        """)
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    assert lines["i386"] == f"{-31} False" and lines["x32"] == f"{-31} False", r.stdout  # SIGSYS


EXEC_PROBE = r"""
import os, shutil, subprocess, errno
home = os.path.expanduser("~")
results = {}
for where in ("/tmp", home, os.getcwd()):
    dst = os.path.join(where, "downloaded-tool")
    shutil.copy("/usr/bin/true", dst)
    os.chmod(dst, 0o755)
    try:
        subprocess.run([dst], check=True)
        results[where] = "ran"
    except PermissionError:
        results[where] = "EACCES"
    finally:
        os.unlink(dst)
results["/usr/bin/true"] = "ran" if subprocess.run(["/usr/bin/true"]).returncode == 0 else "failed"
print(results)
"""


@pytest.mark.covers("exec.allow")
@pytest.mark.parametrize("mode", ["none", "restricted", "full"])
@pytest.mark.covers("exec.allow")
def test_exec_only_from_allowed_dirs(make_kernel, listeners, who, mode):
    k = make_kernel(f"net-{mode}", user=who)
    r = k.ok(EXEC_PROBE)
    results = eval(r.stdout.strip())
    assert results.pop("/usr/bin/true") == "ran"
    assert set(results.values()) == {"EACCES"}, results
    # the error names the profile rule
    r = k.run("import shutil, os, subprocess; shutil.copy('/usr/bin/true', 'x'); os.chmod('x', 0o755); subprocess.run(['./x'])")
    assert r.ename == "PermissionError" and "exec.allow" in r.traceback, str(r)
    # a restart after the attempts comes back confined
    k.restart()
    r = k.run("import subprocess; subprocess.run(['./x'])")
    assert r.ename == "PermissionError" and "exec.allow" in r.traceback, str(r)
    # a downloaded binary run from a shell line fails too
    r = k.ok("!./x && echo RAN")
    assert "RAN" not in r.stdout and "ermission denied" in r.stdout


@pytest.mark.covers("exec.allow")
@pytest.mark.covers("exec.allow")
def test_offline_runs_only_python(make_kernel):
    k = make_kernel("offline")
    r = k.run("import subprocess; subprocess.run(['/usr/bin/true'])")
    assert r.ename == "PermissionError" and "exec.allow" in r.traceback
    assert k.ok("import subprocess, sys; print(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True, text=True).stdout)").stdout.strip() == "7"


def _tamper_code(profile):
    hook = resources.guard_hook_path()
    package = Path(resources.PACKAGE_DIR)
    spec = kernelutil.SPECS / kernelutil.spec_name(profile, None) / "kernel.json"
    return f"""
        import os, errno
        targets = {{
            "kernelspec": {str(spec)!r},
            "kernelspec_dir_new": {str(spec.parent / "evil.json")!r},
            "profile": {str(kernelutil.PROFILES / "evil.yaml")!r},
            "shipped_profile": {os.path.join(resources.shipped_profiles_dir(), "free.yaml")!r},
            "package": {str(package / "kernel.py")!r},
            "package_new": {str(package / "sitecustomize.py")!r},
            "hook": {str(hook)!r},
            "user_kernels": os.path.expanduser("~/.local/share/jupyter/kernels/sandbox-free/kernel.json"),
            "jupyter_config": os.path.expanduser("~/.jupyter/jupyter_server_config.py"),
        }}
        out = {{}}
        for name, path in targets.items():
            try:
                with open(path, "a") as fh:
                    fh.write("# tampered")
                out[name] = "WRITTEN"
            except OSError as e:
                out[name] = errno.errorcode[e.errno]
        try:
            os.rename(os.path.expanduser("~/.local"), os.path.expanduser("~/.local-moved"))
            out["rename_parent"] = "RENAMED"
        except OSError as e:
            out["rename_parent"] = errno.errorcode[e.errno]
        with open(os.path.expanduser("~/notes-in-home.txt"), "w") as fh:
            fh.write("home stays writable")
        os.unlink(os.path.expanduser("~/notes-in-home.txt"))
        print(out)
        """


@pytest.mark.covers("filesystem.protected")
@pytest.mark.parametrize("mode", ["none", "restricted", "full"])
@pytest.mark.covers("filesystem.protected")
def test_protected_paths_and_restart(make_kernel, listeners, who, mode):
    profile = f"net-{mode}"
    kernelutil.install_spec(profile)  # the kernelspec file the cell tries to rewrite
    k = make_kernel(profile, user=who)
    r = k.ok(_tamper_code(profile))
    out = eval(r.stdout.strip())
    assert "WRITTEN" not in out.values() and out["rename_parent"] != "RENAMED", out
    # the shell cannot do it either
    r = k.ok(f"!echo tampered >> {resources.PACKAGE_DIR}/kernel.py || echo REFUSED")
    assert "REFUSED" in r.stdout
    r = k.run(f"open({os.path.join(resources.PACKAGE_DIR, 'x.py')!r}, 'w')")
    # EACCES from Landlock, or EROFS where the package lies inside a writable directory
    # (a checkout under /tmp or home) and the mount namespace made it a read-only mount
    assert r.ename in ("PermissionError", "OSError") and ("Errno 13" in r.evalue or "Errno 30" in r.evalue), str(r)
    if who is None:  # root: only the sandbox refuses it, and the error says which rule
        assert f"sandbox: refused by profile '{profile}': filesystem.protected" in r.traceback, r.traceback
    # a restart comes back confined, and with the same rules
    k.restart()
    r = k.ok("print(open('/proc/self/status').read())")
    status = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"
    out = eval(k.ok(_tamper_code(profile)).stdout.strip())
    assert "WRITTEN" not in out.values(), out
    assert k.run("import roop").ename == "ProhibitedImportError"


def test_gpu_profiles_open_proc_only_where_it_is_safe(make_kernel, who):
    """GPU profiles grant write on /proc (NVIDIA writes task comm files); /proc/sys and
    /proc/sysrq-trigger stay read-only, for root too (read-only mounts)."""
    kernelutil.write_profile("gpu-proc", """
        extends: free
        accelerators:
          gpu: {enabled: true, devices: []}
        """)
    k = make_kernel("gpu-proc", user=who)
    r = k.ok("""
        import errno, os, threading
        def attempt(path):
            try:
                with open(path, "w"):
                    pass  # opening for write is the test; nothing is written
                return "ok"
            except OSError as e:
                return errno.errorcode[e.errno]
        tid = threading.get_native_id()
        with open(f"/proc/self/task/{tid}/comm", "w") as fh:
            fh.write("renamed-by-test")
        print(open(f"/proc/self/task/{tid}/comm").read().strip())
        print(attempt("/proc/sys/vm/swappiness"), attempt("/proc/sysrq-trigger"))
        """)
    comm, denied = r.stdout.strip().splitlines()
    assert comm == "renamed-by-test"[:15]
    sysctl, sysrq = denied.split()
    assert sysctl in ("EROFS", "EACCES"), denied
    assert sysrq in ("EROFS", "EACCES", "ENOENT"), denied  # ENOENT: a kernel built without SysRq


def test_scopes_signals_and_abstract_sockets(make_kernel, who):
    """Landlock ABI 6 scopes: no signals to, and no abstract UNIX sockets of, processes outside.

    A host process is not even visible from the kernel's PID namespace (ESRCH); the namespace's
    init (pid 1) is visible but outside the Landlock domain: the signal scope refuses it (EPERM)."""
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0sandbox-kernel-test-{os.getpid()}"
    outside.bind(name)
    outside.listen(1)
    sleeper = __import__("subprocess").Popen(["sleep", "60"])  # outside the sandbox
    try:
        k = make_kernel("free", user=who)
        r = k.ok(f"""
            import errno, os, signal, socket
            def attempt(fn):
                try:
                    fn(); return "ok"
                except OSError as e:
                    return errno.errorcode[e.errno]
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            print(attempt(lambda: os.kill({sleeper.pid}, 0)), attempt(lambda: s.connect({name!r})),
                  attempt(lambda: os.kill(1, signal.SIGTERM)))
            child = __import__("subprocess").Popen(["sleep", "30"])
            print(attempt(lambda: os.kill(child.pid, signal.SIGTERM)))
            child.wait()
            """)
        first, second = r.stdout.split("\n")[:2]
        host, abstract, init = first.split()
        assert host in ("ESRCH", "EPERM") and abstract == "EPERM" and init == "EPERM", r.stdout
        assert second.strip() == "ok", "the kernel can still signal its own children"
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        outside.close()


@pytest.mark.parametrize("mode", ["none", "restricted"])
def test_ipc_transport(make_kernel, listeners, mode):
    """Kernels whose connection file says ipc bind UNIX sockets: no TCP port is needed at all."""
    k = make_kernel(f"net-{mode}", transport="ipc")
    assert k.ok("print(6 * 7)").stdout.strip() == "42"
    out = k.ok("%sandbox").stdout
    assert "TCP bind []" in out, out
    r = k.run(f"import socket; socket.create_connection(('127.0.0.1', {listeners['other']}), timeout=3)")
    assert r.ename == "PermissionError"


def test_debugger_advertised_only_with_tcp(make_kernel, listeners):
    """The debugger (debugpy serves on TCP, on ports it picks) is offered only under `network: full`
    with `listen_ports: any`. Elsewhere the
    kernel does not import debugpy at start (as where it is not installed: about 100 ms of every
    start on a 2-core machine), and user code can still import it."""
    probe = "import sys, ipykernel.debugger as d; print('debugpy' in sys.modules, d._is_debugpy_available)"
    for mode, expected in (("none", False), ("restricted", False), ("full", False), ("full-servers", True)):
        k = make_kernel(f"net-{mode}")
        k.kc.kernel_info()
        reply = k.kc.get_shell_msg(timeout=15)
        assert ("debugger" in reply["content"].get("supported_features", [])) == expected
        assert k.ok(probe).stdout.split() == [str(expected), str(expected)], mode
        if not expected:
            r = k.ok("import debugpy, sys; print(type(sys.modules['debugpy']).__name__, debugpy.__version__)")
            assert r.stdout.startswith("module "), r


def test_interrupt_and_stdin(make_kernel):
    k = make_kernel("free")
    msg_id = k.kc.execute("import time\nprint('started', flush=True)\nfor _ in range(600): time.sleep(0.1)")
    while True:  # interrupt once the cell is running
        msg = k.kc.get_iopub_msg(timeout=30)
        if msg["msg_type"] == "stream" and "started" in msg["content"]["text"]:
            break
    k.km.interrupt_kernel()
    reply = k.kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:  # late kernel_info replies from wait_for_ready
        reply = k.kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    r = k.run("x = input('name? '); print('hello', x)", stdin="sandbox")
    assert "hello sandbox" in r.stdout


def test_forked_children_output_reaches_the_notebook(make_kernel, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "ds.py").write_text(
        "import os, torch\n"
        "class DS(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 8\n"
        "    def __getitem__(self, i):\n"
        "        print(f'worker says {i}', flush=True)\n"
        "        return torch.tensor([i], dtype=torch.float32)\n")
    k = make_kernel("free", cwd=tmp_path)
    r = k.ok("""
        import torch, ds, os
        total = 0
        for batch in torch.utils.data.DataLoader(ds.DS(), batch_size=2, num_workers=2):
            total += int(batch.sum())
        print('total', total)
        pid = os.fork()
        if pid == 0:
            print('forked child speaks', flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        """, timeout=120)
    assert "total 28" in r.stdout
    assert all(f"worker says {i}" in r.stdout for i in range(8)), r.stdout
    assert "forked child speaks" in r.stdout


@pytest.mark.covers("limits.processes")
@pytest.mark.covers("limits.processes")
def test_fork_bomb_is_stopped(make_kernel, who):
    kernelutil.write_profile("bomb", """
        extends: free
        limits:
          processes: 64
        """)
    k = make_kernel("bomb", user=who)
    kernelutil.fork_bomb(k, 64)
    # a shell fork bomb is bounded too, and the kernel survives it
    r = k.ok("!bash -c 'for i in $(seq 200); do sleep 3 & done; wait' 2>&1 | grep -c -i 'resource\\|fork' ", timeout=120)
    assert int(r.stdout.strip().splitlines()[-1]) > 0, r.stdout
    # the bomb's orphans are reaped by init within moments; the kernel itself survived
    assert kernelutil.wait_for(lambda: k.run("print('kernel alive')").stdout.strip() == "kernel alive", timeout=30)


@pytest.mark.covers("limits.memory")
@pytest.mark.covers("limits.memory")
def test_memory_bomb_is_stopped(make_kernel, who):
    kernelutil.write_profile("membomb", """
        extends: free
        limits:
          memory: 1GiB
        """)
    k = make_kernel("membomb", user=who)
    r = k.run("x = bytearray(3 * 1024**3)")
    assert r.ename == "MemoryError", str(r)
    r = k.ok("""
        chunks = []
        try:
            while True:
                chunks.append(bytearray(64 * 1024**2))
        except MemoryError:
            print('stopped at', len(chunks) * 64, 'MiB')
        del chunks
        """, timeout=120)
    assert "stopped at" in r.stdout and int(r.stdout.split()[2]) <= 1024
    r = k.ok("!python -c \"b = bytearray(2 * 1024**3)\" 2>&1 | tail -1")
    assert "MemoryError" in r.stdout
    assert k.ok("print('kernel alive')").stdout.strip() == "kernel alive"


@pytest.mark.covers("limits.open_files")
@pytest.mark.covers("limits.open_files")
def test_root_cannot_raise_its_limits(make_kernel):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    k = make_kernel("free")
    r = k.ok("""
        import resource, errno
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        try:
            resource.setrlimit(resource.RLIMIT_DATA, (hard * 2, hard * 2))
            print('raised')
        except (ValueError, OSError) as e:
            print('refused', hard)
        print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])
        """)
    first, capeff = r.stdout.strip().splitlines()
    assert first.startswith("refused")
    assert int(capeff, 16) & (1 << 24) == 0  # CAP_SYS_RESOURCE gone
