"""Raw system calls through ctypes (research.md: Docker's default profile as the reference),
each in a child interpreter of the kernel so that a success cannot damage the shared kernel.

Each child reports whether the syscall's *effect* happened: a mount appeared, the namespace
changed, a tracer was attached, an fd of the requested kind was handed out, a key was
created, a syscall of a foreign ABI returned to its caller."""

from __future__ import annotations

import json

import pytest
from rtutil import attempt, probe

pytestmark = pytest.mark.redteam

HEADER = r"""
import ctypes, errno, json, os, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *args)
    return r, (errno.errorcode.get(ctypes.get_errno(), "?") if r < 0 else "")
def report(r, err, effect, **kw):
    print(json.dumps({"ret": r, "errno": err, "effect": bool(effect), **kw}))
"""

CHILDREN = {
    # mount(2) of a tmpfs onto a directory of the tenant's: the effect is the mount point
    "mount": """
os.makedirs("rt-mnt", exist_ok=True)
r, e = sc(165, b"none", os.path.abspath("rt-mnt").encode(), b"tmpfs", ctypes.c_ulong(0), None)
report(r, e, os.path.ismount("rt-mnt"))
""",
    "fsopen": """
r, e = sc(430, b"tmpfs", 0)
report(r, e, r >= 0)
""",
    "open_tree": """
r, e = sc(428, -100, b"/", 1)  # OPEN_TREE_CLONE: a detached copy of the mount tree
report(r, e, r >= 0)
""",
    "umount2": """
r, e = sc(166, b"/proc", 2)  # MNT_DETACH
report(r, e, not os.path.exists("/proc/self"))
""",
    "chroot": """
r, e = sc(161, os.getcwd().encode())
report(r, e, r == 0 and not os.path.exists("/proc/self"))
""",
    "unshare_user": """
before = os.readlink("/proc/self/ns/user")
r, e = sc(272, 0x10000000)
report(r, e, os.readlink("/proc/self/ns/user") != before)
""",
    "unshare_net": """
before = os.readlink("/proc/self/ns/net")
r, e = sc(272, 0x40000000)
report(r, e, os.readlink("/proc/self/ns/net") != before)
""",
    "clone_newuser": """
r, e = sc(56, ctypes.c_ulong(0x10000000 | 17), None, None, None, None)
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
report(r, e, r > 0)
""",
    "setns": """
fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
r, e = sc(308, fd, 0)
report(r, e, r == 0)
""",
    "ptrace_attach": """
child = subprocess.Popen(["sleep", "30"])
time.sleep(0.2)
r, e = sc(101, 16, child.pid, None, None)  # PTRACE_ATTACH to our own child
tracer = [l for l in open(f"/proc/{child.pid}/status") if l.startswith("TracerPid:")][0].split()[1]
child.kill()
report(r, e, tracer != "0")
""",
    "process_vm_readv": """
buf = ctypes.create_string_buffer(16)
src = ctypes.create_string_buffer(b"secret-in-memory")
class IOV(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
local, remote = IOV(ctypes.addressof(buf), 16), IOV(ctypes.addressof(src), 16)
r, e = sc(310, os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
report(r, e, r > 0)
""",
    "bpf_map_create": """
attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
r, e = sc(321, 0, ctypes.byref(attr), 72)
report(r, e, r >= 0)
""",
    "add_key": """
r, e = sc(248, b"user", b"redteam", b"payload", 7, ctypes.c_long(-2))  # KEY_SPEC_PROCESS_KEYRING
report(r, e, r > 0)
""",
    "keyctl_join_session": """
r, e = sc(250, 1, b"redteam-session")  # KEYCTL_JOIN_SESSION_KEYRING
report(r, e, r > 0)
""",
    "io_uring_setup": """
params = (ctypes.c_uint8 * 120)()
r, e = sc(425, 8, ctypes.byref(params))
report(r, e, r >= 0)
""",
    "open_by_handle_at": """
class FH(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("h", ctypes.c_ubyte * 128)]
fh, mid = FH(128), ctypes.c_int()
r0, e0 = sc(303, -100, b"/etc/hostname", ctypes.byref(fh), ctypes.byref(mid), 0)
mfd = os.open("/etc", os.O_PATH)  # any fd on the mount: O_PATH needs no read right
r, e = sc(304, mfd, ctypes.byref(fh), os.O_RDONLY)
report(r, e, r >= 0, name_to_handle=e0 or "ok")
""",
    "perf_event_open": """
attr = (ctypes.c_uint32 * 32)()
attr[0], attr[1], attr[2] = 1, 128, 0  # PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_CPU_CLOCK
r, e = sc(298, ctypes.byref(attr), 0, -1, -1, 0)
report(r, e, r >= 0)
""",
    "userfaultfd": """
r, e = sc(323, 1)  # UFFD_USER_MODE_ONLY: what an unprivileged process may ask for
report(r, e, r >= 0)
""",
    "syslog_read": """
buf = ctypes.create_string_buffer(4096)
r, e = sc(103, 3, buf, 4096)  # SYSLOG_ACTION_READ_ALL: the host kernel's log
report(r, e, r > 0)
""",
    # syscalls through the i386 ABI (int 0x80) and x32: the filter only knows x86_64 numbers
    "i386_int80": """
import mmap
code = bytes.fromhex("b814000000cd80c3")  # mov eax, 20 (getpid); int 0x80; ret
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
r = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))()
report(r, "", True)
""",
    "x32_getpid": """
import mmap
code = bytes.fromhex("48c7c0270000400f05c3")  # mov rax, 39 | __X32_SYSCALL_BIT; syscall; ret
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
r = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))()
report(r, "", r == os.getpid())
""",
}

# all of them: seccomp (the capability drop and no_new_privs also stop several of them, but
# the filter denies them for every uid, root included)
LAYER = {name: "seccomp" for name in CHILDREN}


@pytest.mark.parametrize("name", [pytest.param(n, marks=attempt(LAYER[n])) for n in CHILDREN])
def test_raw_syscall(pool, who, name):
    k = pool.get("free", who)
    src = HEADER + CHILDREN[name]
    r = probe(k, f"""
        import subprocess, sys
        p = subprocess.run([sys.executable, "-c", {src!r}], capture_output=True, text=True, timeout=60)
        lines = p.stdout.strip().splitlines()
        rt_out({{"rc": p.returncode, "last": lines[-1] if lines else "", "err": p.stderr[-400:]}})
        """)
    if r["rc"] < 0:  # killed (SIGSYS for a foreign ABI): the syscall never returned to its caller
        assert r["rc"] == -31, r
        return
    assert r["last"], f"the child reported nothing: {r}"
    got = json.loads(r["last"])
    assert not got["effect"], f"{name} took effect inside the sandbox: {got}"
