"""Our libseccomp binding and the seccomp rules as data (the attacks themselves are in
tests/redteam/; these check the pieces: the binding loads by soname with the standard
library only, a filter it builds refuses what it says, and the rule list per mode)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from sandbox_kernel import libseccomp
from sandbox_kernel.layers import seccomp
from sandbox_kernel.layers.context import LaunchContext
from sandbox_kernel.policy import resolve

X86_64 = platform.machine() == "x86_64"
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(libseccomp.__file__)))


def test_binding_loads_by_soname_with_the_standard_library_only():
    """No site-packages (-I -S), no ctypes.util (which forks ldconfig), no third-party module."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from sandbox_kernel import libseccomp as L\n"
            "L.library()\n"
            "import json, os\n"
            "stdlib = os.path.dirname(os.__file__)\n"
            "foreign = sorted(n for n, m in sys.modules.items() if getattr(m, '__file__', None)\n"
            "                 and not os.path.realpath(m.__file__).startswith((stdlib + '/', %r)))\n"
            "print(json.dumps({'foreign': foreign, 'util': 'ctypes.util' in sys.modules,\n"
            "                  'subprocess': 'subprocess' in sys.modules, 'path': L.library_path(),\n"
            "                  'version': L.version()}))\n") % (PACKAGE_PARENT, PACKAGE_PARENT + "/sandbox_kernel/")
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["foreign"] == [] and not got["util"] and not got["subprocess"], got
    assert os.path.basename(got["path"]).startswith("libseccomp.so.2") and os.path.isfile(got["path"]), got
    assert tuple(got["version"]) >= (2, 4, 0), got


def test_binding_resolves_names_and_reports_errors():
    assert libseccomp.resolve("no_such_syscall") is None
    if X86_64:
        assert libseccomp.resolve("sendto") == 44 and libseccomp.resolve("memfd_create") == 319
        assert libseccomp.native_arch() == "SCMP_ARCH_X86_64"
    f = libseccomp.Filter(libseccomp.ALLOW)
    with pytest.raises(OSError, match="unknown system call"):
        f.add_rule(libseccomp.ERRNO(1), "no_such_syscall")
    with pytest.raises(OSError) as e:  # an operator libseccomp does not know
        f.add_rule(libseccomp.ERRNO(1), "dup", (0, 99, 1))
    assert e.value.errno == 22
    f.release()


def test_a_filter_built_by_the_binding_refuses_what_it_says():
    """fchdir(12345) is refused with the chosen errno; fchdir of another bad fd still reaches the OS
    kernel (EBADF); the filter is inherited by a child."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import errno, os, subprocess\n"
            "from sandbox_kernel import libseccomp as L\n"
            "f = L.Filter(L.ALLOW)\n"
            "f.add_rule(L.ERRNO(errno.EDOM), 'fchdir', (0, L.EQ, 12345))\n"
            "f.load()\n"
            "def fchdir(fd):\n"
            "    try:\n"
            "        os.fchdir(fd)\n"
            "    except OSError as e:\n"
            "        return errno.errorcode[e.errno]\n"
            "child = subprocess.run([sys.executable, '-c', 'import os\\ntry: os.fchdir(12345)\\nexcept OSError as e: print(e.errno)'],\n"
            "                       capture_output=True, text=True).stdout.strip()\n"
            "print(fchdir(12345), fchdir(12346), child == str(errno.EDOM))\n") % PACKAGE_PARENT
    p = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == ["EDOM", "EBADF", "True"], p


def _keys(rule_list):
    return {(r.syscall, r.args) for r in rule_list}


def test_fast_open_rules_outside_full_only():
    tfo = {("sendto", ((3, "MASKED_EQ", 0x20000000, 0x20000000),)),
           ("sendmsg", ((2, "MASKED_EQ", 0x20000000, 0x20000000),)),
           ("sendmmsg", ((3, "MASKED_EQ", 0x20000000, 0x20000000),)),
           ("setsockopt", ((1, "MASKED_EQ", 0xFFFFFFFF, 6), (2, "MASKED_EQ", 0xFFFFFFFF, 30)))}
    for mode in ("none", "restricted"):
        assert tfo <= _keys(seccomp.network_rules(mode, False)), mode
    assert not tfo & _keys(seccomp.network_rules("full", True))


@pytest.mark.parametrize("mode", ["none", "restricted", "full"])
def test_vsock_xdp_packet_and_pf_key_in_every_mode(mode):
    keys = _keys(seccomp.network_rules(mode, True))
    for fam in (15, 17, 40, 44):
        assert ("socket", ((0, "EQ", fam, 0),)) in keys, (mode, fam)


def test_memfd_and_execveat_rules_follow_memfd_noexec():
    from sandbox_kernel.layers.pid_namespace import Entered

    assert Entered().memfd_noexec is False  # (what seccomp is handed where pid_namespace set nothing)
    seal = ("memfd_create", ((1, "MASKED_EQ", 0x8, 0),))
    exec_flag = ("memfd_create", ((1, "MASKED_EQ", 0x10, 0x10),))
    hugetlb = ("memfd_create", ((1, "MASKED_EQ", 0x4, 0x4),))
    empty_path = ("execveat", ((4, "MASKED_EQ", 0x1000, 0x1000),))
    assert {seal, exec_flag, hugetlb, empty_path} <= _keys(seccomp.base_rules(False))
    # the OS kernel seals every memfd (vm.memfd_noexec=2), but not hugetlbfs's mode
    keys = _keys(seccomp.base_rules(True))
    assert seal not in keys and {exec_flag, hugetlb, empty_path} <= keys


def test_a_rule_has_one_condition_per_argument():
    """OCI runtimes (runc) read repeated argument indexes as OR: the rule list never has them."""
    with pytest.raises(ValueError):
        seccomp.Rule("socket", [(0, "EQ", 1), (0, "EQ", 2)])
    for mode in ("none", "restricted", "full"):
        for r in seccomp.base_rules() + seccomp.network_rules(mode, True):
            assert len({a[0] for a in r.args}) == len(r.args), r


@pytest.mark.parametrize("profile", ["free", "offline", "research", "base", "gpu", "default"])
def test_stage_one_and_two_together_are_the_final_rules(profile):
    """What stage 1 and stage 2 leave in force is exactly rules(policy, mode): every rule of the
    final mode is in one of them, and whatever stage 1 refuses beyond it (its socket rules for
    the TCP it allows a `none` kernel) the final mode refuses too."""
    policy = resolve(profile)
    ctx = LaunchContext(env={})
    ctx.kernel_ports, ctx.transport = [40001, 40002], "tcp"
    first = seccomp.stage_one_mode(policy, ctx)
    one = seccomp.rules(policy, first)
    two = seccomp.stage_two_rules(policy, first) if seccomp.needs_stage_two(policy, first) else []
    final = seccomp.rules(policy, policy.network["mode"])
    assert set(one) | set(two) >= set(final)
    assert not set(two) & set(one)
    if policy.network["mode"] == "none":
        assert first == "restricted" and two
        # the extra rules of stage 1 only refuse sockets that `none` refuses by family anyway
        extra = set(one) - set(final)
        assert extra and all(r.syscall == "socket" and r.args[0][:2] == (0, "EQ") and r.args[0][2] != 1
                             for r in extra), extra
    else:
        assert set(one) == set(final) and not two
