"""`sandbox-kernel export`: the OCI seccomp document says exactly what the profile's own
filter says, syscall by syscall, and `--format json` is the resolved profile.

Three checks of the OCI document, each independent of the exporter's code:
1. a filter rebuilt from the document the way runc reads it (below, written from the
   runtime-spec and runc's libcontainer/seccomp) compiles to the same pseudo filter code
   (libseccomp's PFC) as the filter built from the profile's rules;
2. a table of system calls with chosen arguments gets the same answers in a process that
   loaded the rebuilt filter and in one that loaded stage 1 and stage 2 exactly as the
   launcher and the kernel do;
3. the same table inside a real kernel (root and an ordinary user) agrees with (2).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from sandbox_kernel import libseccomp
from sandbox_kernel.layers import seccomp
from sandbox_kernel.policy import resolve

SHIPPED = ["base", "default", "free", "gpu", "offline", "research"]
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(libseccomp.__file__)))
needs_x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe table uses x86_64 numbers")

SPEC_ACTIONS = {"SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
                "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY"}
SPEC_OPS = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
            "SCMP_CMP_MASKED_EQ"}


def export(profile: str, fmt: str, tmp_path) -> dict:
    out = tmp_path / f"{profile}.{fmt}.json"
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "export", "--profile", profile, "--format", fmt,
                        "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


def oci_filter(doc: dict):
    """A libseccomp filter from an OCI seccomp document, read as runc reads it: each entry's
    args all hold (AND), unless two share an index (then each is a rule of its own, OR);
    rules whose action is the default are skipped; unknown names are skipped."""
    sc = libseccomp
    actions = {"SCMP_ACT_ALLOW": lambda e: sc.ALLOW, "SCMP_ACT_KILL_PROCESS": lambda e: sc.KILL_PROCESS,
               "SCMP_ACT_ERRNO": lambda e: sc.ERRNO(e.get("errnoRet", 1))}
    default = actions[doc["defaultAction"]](doc)
    f = sc.Filter(default)
    f.set_attr(sc.ATTR_CTL_TSYNC, 1)
    f.set_attr(sc.ATTR_ACT_BADARCH, sc.KILL_PROCESS)
    assert doc["architectures"] == [sc.native_arch()]
    for entry in doc["syscalls"]:
        action = actions[entry["action"]](entry)
        if action == default:
            continue
        conds = [(a["index"], sc.OPS[a["op"][len("SCMP_CMP_"):]], a["value"], a.get("valueTwo", 0))
                 for a in entry.get("args", [])]
        groups = [[c] for c in conds] if len({c[0] for c in conds}) != len(conds) else [conds]
        for name in entry["names"]:
            if sc.resolve(name) is None:
                continue
            for g in groups:
                f.add_rule(action, name, *g)
    return f


def profile_filter(policy):
    """The filter of the profile's own rules (what is in force after stage 2), as the layer builds it."""
    return seccomp.build(libseccomp, seccomp.rules(policy, policy.network["mode"]))


@pytest.mark.parametrize("profile", SHIPPED)
def test_oci_document_is_well_formed(profile, tmp_path):
    doc = export(profile, "oci-seccomp", tmp_path)
    assert doc["defaultAction"] == "SCMP_ACT_ALLOW"
    assert "defaultErrnoRet" not in doc  # the spec: a runtime must fail on an errno for an action without one
    assert doc["architectures"] == [libseccomp.native_arch()]
    assert doc["syscalls"]
    for e in doc["syscalls"]:
        assert e["names"] and all(isinstance(n, str) for n in e["names"]) and e["action"] in SPEC_ACTIONS
        assert ("errnoRet" in e) == (e["action"] == "SCMP_ACT_ERRNO")
        indexes = [a["index"] for a in e.get("args", [])]
        assert len(indexes) == len(set(indexes))
        for a in e.get("args", []):
            assert set(a) == {"index", "value", "valueTwo", "op"} and a["op"] in SPEC_OPS
            assert 0 <= a["index"] <= 5 and 0 <= a["value"] < 2**64 and 0 <= a["valueTwo"] < 2**64


@pytest.mark.parametrize("profile", SHIPPED)
def test_oci_document_compiles_to_the_profile_filter(profile, tmp_path):
    doc = export(profile, "oci-seccomp", tmp_path)
    mine = profile_filter(resolve(profile))
    theirs = oci_filter(doc)
    for name, prio in seccomp.HOT.items():  # an ordering hint an OCI document cannot carry (it never decides)
        theirs.set_priority(name, prio)
    assert theirs.export_pfc() == mine.export_pfc()
    assert theirs.export_bpf() == mine.export_bpf()


def test_oci_document_of_free_names_the_side_doors(tmp_path):
    """Spot checks against the spec's vocabulary, so that (1) cannot pass on two empty filters."""
    doc = export("free", "oci-seccomp", tmp_path)
    by_name: dict[str, list] = {}
    for e in doc["syscalls"]:
        for n in e["names"]:
            by_name.setdefault(n, []).append(e)
    assert any(e.get("args") == [{"index": 3, "value": 0x20000000, "valueTwo": 0x20000000, "op": "SCMP_CMP_MASKED_EQ"}]
               for e in by_name["sendto"])
    assert any(e.get("args") == [{"index": 1, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
               for e in by_name["memfd_create"])
    assert any(e.get("args") == [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]
               for e in by_name["socket"])
    assert [e["errnoRet"] for e in by_name["io_uring_setup"]] == [38] and [e["errnoRet"] for e in by_name["mount"]] == [1]
    research = export("research", "oci-seccomp", tmp_path)
    assert not any("sendto" in e["names"] for e in research["syscalls"])  # full network: no Fast Open rule


def test_json_export_is_the_resolved_profile(tmp_path, profile_dir):
    doc = export("free", "json", tmp_path)
    assert doc == resolve("free").data
    # it is a complete profile of its own: it validates and resolves to the same policy
    (profile_dir / "exported.yaml").write_text(json.dumps(doc))
    assert resolve("exported").data == doc


def test_export_errors_are_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "export", "--profile", "no-such-profile"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "no-such-profile" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "export", "--profile", "free", "-o",
                        str(tmp_path / "missing-dir" / "x.json")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "cannot write" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- behaviour

# Each case is a raw system call whose arguments make it harmless when allowed (a bad fd,
# an invalid flag combination, a NULL pointer): the answer is the filter's errno or the OS
# kernel's own. Sockets that get created are closed at once.
PROBES = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def raw(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) for a in args])
    if r < 0:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return r
def made(nr, *args):  # a call that creates a descriptor when allowed
    r = raw(nr, *args)
    if isinstance(r, int):
        os.close(r)
        return "ok"
    return r
out = {}
for fam in (1, 2, 10, 15, 16, 17, 40, 44, 63, 64, 2 | 1 << 32):
    for typ in (1, 2, 3, 5, 10, 2 | 0x80000):
        for proto in (0, 6, 17, 262, 6 | 1 << 32):
            out[f"socket {fam} {typ} {proto}"] = made(41, fam, typ, proto)
for proto in (0, 4, 9, 15, 31, 32):
    out[f"netlink {proto}"] = made(41, 16, 3, proto)
out["socketpair unix"] = raw(53, 1, 1, 0, 0)
out["socketpair inet"] = raw(53, 2, 1, 0, 0)
for flags in (0, 0x20000000, 0x20000000 | 1 << 40, 0x40, 1 << 40):
    out[f"sendto {flags:#x}"] = raw(44, 2**32 - 1, 0, 0, flags, 0, 0)
    out[f"sendmsg {flags:#x}"] = raw(46, 2**32 - 1, 0, flags)
    out[f"sendmmsg {flags:#x}"] = raw(307, 2**32 - 1, 0, 0, flags)
for level, name in ((6, 30), (6, 23), (1, 30), (6 | 1 << 32, 30 | 1 << 33), (0, 0)):
    out[f"setsockopt {level:#x} {name:#x}"] = raw(54, 2**32 - 1, level, name, 0, 0)
name = ctypes.c_char_p(b"probe")
for flags in (0, 1, 2, 3, 8, 9, 0x10, 0x18, 0x10 | 1 << 40, 8 << 32, 4):
    r = libc.syscall(ctypes.c_long(319), name, ctypes.c_ulong(flags))
    out[f"memfd_create {flags:#x}"] = "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno())
    if r >= 0:
        os.close(r)
for flags in (0, 0x1000, 0x100, 0x1000 | 1 << 36):
    out[f"execveat {flags:#x}"] = raw(322, 2**32 - 1, 0, 0, 0, flags)
CLONE_THREAD = 0x10000  # without CLONE_SIGHAND: EINVAL from the OS kernel, never a new task
for flag in (0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000, 0x80, 0):
    out[f"clone {flag:#x}"] = raw(56, flag | CLONE_THREAD, 0, 0, 0, 0)
out["unshare 0"] = raw(272, 0)
out["setns"] = raw(308, 2**32 - 1, 0)
out["mount"] = raw(165, 0, 0, 0, 0, 0)
out["reboot (bad magic)"] = raw(169, 0, 0, 0, 0)
out["bpf"] = raw(321, 2**32 - 1, 0, 0)
out["perf_event_open"] = raw(298, 0, 0, 0, 0, 0)
out["ptrace"] = raw(101, 2**32 - 1, 0, 0, 0)
out["keyctl"] = raw(250, 2**32 - 1, 0, 0, 0, 0)
out["io_uring_setup"] = raw(425, 0, 0)
out["clone3"] = raw(435, 0, 0)
out["clock_settime"] = raw(227, 2**32 - 1, 0)
out["pidfd_getfd"] = raw(438, 2**32 - 1, 0, 0)
out["open_by_handle_at"] = raw(304, 2**32 - 1, 0, 0)
out["getpid"] = "ok" if isinstance(raw(39), int) else "refused"
print("PROBES " + json.dumps(out))
"""

LOAD_OCI = """
import json, sys
sys.path.insert(0, {parent!r})
sys.path.insert(0, {tests!r})
from test_export import oci_filter
oci_filter(json.loads({doc!r})).load()
"""

LOAD_STAGES = """
import sys
sys.path.insert(0, {parent!r})
from sandbox_kernel import libseccomp
from sandbox_kernel.layers import seccomp
from sandbox_kernel.layers.context import LaunchContext
from sandbox_kernel.policy import resolve
policy = resolve({profile!r})
ctx = LaunchContext(env={{}})
ctx.kernel_ports, ctx.transport = [40001], "tcp"  # a kernel on TCP: `none` gets two stages
first = seccomp.stage_one_mode(policy, ctx)
seccomp.build(libseccomp, seccomp.rules(policy, first)).load()
if seccomp.needs_stage_two(policy, first):
    seccomp.build(libseccomp, seccomp.stage_two_rules(policy, first)).load()
"""


def probe_in_process(loader: str) -> dict:
    p = subprocess.run([sys.executable, "-c", loader + PROBES], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("PROBES ")][-1]
    return json.loads(line[len("PROBES "):])


def probes_for(profile: str, tmp_path) -> tuple[dict, dict]:
    doc = export(profile, "oci-seccomp", tmp_path)
    tests = os.path.dirname(os.path.abspath(__file__))
    oci = probe_in_process(LOAD_OCI.format(parent=PACKAGE_PARENT, tests=tests, doc=json.dumps(doc)))
    stages = probe_in_process(LOAD_STAGES.format(parent=PACKAGE_PARENT, profile=profile))
    return oci, stages


@needs_x86_64
@pytest.mark.parametrize("profile", ["free", "offline", "research"])
def test_oci_document_behaves_like_the_two_stages(profile, tmp_path):
    oci, stages = probes_for(profile, tmp_path)
    diff = {k: (oci[k], stages[k]) for k in stages if oci.get(k) != stages[k]}
    assert not diff, diff
    # the table can tell a refusal from an answer of the OS kernel
    assert stages["getpid"] == "ok" and stages["mount"] == "EPERM" and stages["io_uring_setup"] == "ENOSYS"
    assert stages["execveat 0x1000"] == "EPERM" and stages["execveat 0x0"] == "EFAULT"
    assert stages["memfd_create 0x8"] == "ok" and stages["memfd_create 0x0"] == "EPERM"
    assert stages["socket 40 1 0"] == "EPERM"
    assert stages["clone 0x0"] == "EINVAL" and stages["clone 0x20000"] == "EPERM"
    full = profile == "research"
    assert stages["sendto 0x20000000"] == ("EBADF" if full else "EPERM")
    assert stages["sendto 0x40"] == "EBADF" and stages["setsockopt 0x0 0x0"] == "EBADF"
    assert stages["setsockopt 0x100000006 0x20000001e"] == ("EBADF" if full else "EPERM")
    assert stages["socket 2 1 262"] == ("ok" if full else "EPERM")
    assert stages["socket 2 1 0"] == ("EPERM" if profile == "offline" else "ok")


@pytest.mark.kernel
@needs_x86_64
@pytest.mark.parametrize("profile", ["free", "offline"])
def test_a_real_kernel_has_exactly_the_exported_rules_in_force(make_kernel, who, profile, tmp_path):
    """The table inside a real kernel (after stage 2, with every other layer on) matches the
    process that loaded the exported document. One difference is by design: a kernel whose PID
    namespace has vm.memfd_noexec=2 (root) lets memfd_create without MFD_NOEXEC_SEAL through,
    because the OS kernel seals such a memfd itself; the exported document, for container
    runtimes that set no such sysctl, refuses it."""
    oci, _ = probes_for(profile, tmp_path)
    k = make_kernel(profile, user=who)
    r = k.ok(PROBES)
    got = json.loads([x for x in r.stdout.splitlines() if x.startswith("PROBES ")][-1][len("PROBES "):])
    sysctl = k.ok("import json, os; print('vm.memfd_noexec=2' in "
                  "json.loads(os.environ['SANDBOX_KERNEL_LAYERS'])['pid_namespace']['detail'])").stdout.strip()

    def sealed_by_sysctl(key: str) -> bool:
        if sysctl != "True" or not key.startswith("memfd_create "):
            return False
        flags = int(key.split()[1], 16)
        return not flags & 0x8 and not flags & 0x10 and not flags & 0x4  # no NOEXEC_SEAL, EXEC, HUGETLB

    diff = {key: (oci[key], got[key]) for key in oci if got.get(key) != oci[key]
            and not (sealed_by_sysctl(key) and (oci[key], got[key]) == ("EPERM", "ok"))}
    assert not diff, diff
    assert sysctl == ("True" if who is None else "False")
