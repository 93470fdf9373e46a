"""What layers decide and hand on, computed without privileges (layers.registry: plan(policy,
host) and the results apply() returns): no kernel is started and nothing is applied."""

import copy
import os
import resource
import sys

import pytest

from sandbox_kernel import policy
from sandbox_kernel import accelerators
from sandbox_kernel.layers import (capabilities, environment, landlock, mount_namespace, no_new_privs, pid_namespace,
                                   rlimits)
from sandbox_kernel.layers.context import LaunchContext


def _free():
    return policy.effective("free", dict(os.environ))


@pytest.mark.serial  # without a mount view the plan grants /tmp's entries one by one: other workers' come and go
def test_landlock_closes_protected_paths_the_mount_namespace_did_not_make_read_only():
    """The mount namespace's hand-off (mount_namespace.Mounted) decides which protected paths Landlock
    must still exclude: none it made read-only mounts, every one where nothing was mounted."""
    p, ctx = _free(), LaunchContext(dict(os.environ))
    protected = sorted({os.path.realpath(x) for x in ctx.protected_paths(p)})
    assert protected
    none = landlock.plan(p, ctx, mount_namespace.NOTHING, environment.Judged([]))
    assert landlock.plan(p, ctx).paths == none.paths  # nothing handed on: the same as nothing mounted
    everything = landlock.plan(p, ctx, mount_namespace.Mounted(protected, [], False, []), environment.Judged([]))
    assert none.paths != everything.paths  # (exclusions split grants into more, narrower rules)


def test_landlock_grants_only_the_gpu_tools_the_environment_layer_judged():
    p, ctx = _free(), LaunchContext(dict(os.environ))
    tool = "/opt/sbx-nonexistent-tool/nvidia-smi"
    judged = environment.Judged([("{which:nvidia-smi}", tool, accelerators.GRANTED, "test")])
    assert "execute" in landlock.plan(p, ctx, None, judged).paths.get(tool, set())
    assert tool not in landlock.plan(p, ctx, None, environment.Judged([])).paths



def _edited(name: str, **sections):
    """A copy of the shipped profile `name` with sections of its resolved data replaced."""
    p = copy.deepcopy(policy.effective(name, dict(os.environ)))
    for key, value in sections.items():
        p.data[key] = {**p.data[key], **value}
    return p


INFINITY = {res: resource.RLIM_INFINITY for _, res, _ in rlimits.MAPPING + [("", resource.RLIMIT_CORE, None)]}


def test_rlimits_plan_in_the_kernels_own_user_namespace():
    p = _free()
    pl = rlimits.plan(p, rlimits.Host(True, True, INFINITY, 1000))
    assert ("core dumps", resource.RLIMIT_CORE, 0) in pl.limits
    assert ("processes", resource.RLIMIT_NPROC, 512) in pl.limits  # counted per kernel there
    assert ("memory", resource.RLIMIT_DATA, 8 << 30) in pl.limits
    assert ("message_queues", resource.RLIMIT_MSGQUEUE, 128 << 10) in pl.limits
    assert [(k, v) for k, _files, v in pl.counters] == [("inotify_instances", 16), ("inotify_watches", 8192)]
    assert pl.shared == [] and pl.notes == []


def test_rlimits_plan_without_a_user_namespace_of_its_own():
    """The per-uid counts are shared with the uid's other processes; RLIMIT_NPROC is left to the
    kernel's cgroup where it has pids.max, and set otherwise; no /proc/sys/user counter is written."""
    p = _free()
    pl = rlimits.plan(p, rlimits.Host(False, True, INFINITY, 1000))
    assert not any(res == resource.RLIMIT_NPROC for _, res, _ in pl.limits)
    assert len(pl.notes) == 1 and "uid 1000" in pl.notes[0] and "pids.max" in pl.notes[0]
    assert pl.counters == []
    assert pl.shared == ["message_queues", "pending_signals", "inotify_instances", "inotify_watches"]
    pl = rlimits.plan(p, rlimits.Host(False, False, INFINITY, 1000))
    assert ("processes", resource.RLIMIT_NPROC, 512) in pl.limits and pl.notes == []
    assert pl.shared[0] == "processes"


def test_rlimits_plan_never_asks_above_the_hard_limit():
    hard = {**INFINITY, resource.RLIMIT_NOFILE: 1024}
    pl = rlimits.plan(_free(), rlimits.Host(True, False, hard, 0))
    assert ("open_files", resource.RLIMIT_NOFILE, 1024) in pl.limits


def test_capabilities_plan_drops_all_but_what_the_profile_keeps():
    sets = {"CapPrm": 0x1FF, "CapEff": 0x1FF, "CapInh": 0, "CapAmb": 0, "CapBnd": (1 << 41) - 1}
    pl = capabilities.plan(_free(), capabilities.Host(sets, True, 40))
    assert pl.needed and pl.keep == {} and pl.mask == 0 and pl.drop == list(range(41))
    kept = _edited("free", capabilities={"keep": {"CAP_KILL": "signals", "CAP_CHOWN": "chown"}})
    pl = capabilities.plan(kept, capabilities.Host(sets, True, 40))
    assert pl.keep == {5: "CAP_KILL", 0: "CAP_CHOWN"} and pl.mask == (1 << 5) | 1
    assert 5 not in pl.drop and 0 not in pl.drop and len(pl.drop) == 39


def test_capabilities_plan_has_nothing_to_do_for_a_user_holding_none():
    none = {"CapPrm": 0, "CapEff": 0, "CapInh": 0, "CapAmb": 0, "CapBnd": (1 << 41) - 1}
    assert not capabilities.plan(_free(), capabilities.Host(none, False, 40)).needed
    assert capabilities.plan(_free(), capabilities.Host(none, True, 40)).needed  # root: always dropped


def test_no_new_privs_plan():
    assert no_new_privs.plan(_free(), None) == [(no_new_privs.PR_SET_NO_NEW_PRIVS, 1)]
    assert no_new_privs.plan(_edited("free", enforcement={"no_new_privs": "off"}), None) == []


def test_mount_namespace_plan_covers_and_brings_back(tmp_path):
    """The private view, decided without privileges: the kernel's own /tmp and /dev/shm, Jupyter's
    runtime directory (where it is not writable by the tenant anyway) and each hidden directory
    covered; the writable home brought back read-write, the resolver files and the environment
    read-only."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), JUPYTER_RUNTIME_DIR="/var/lib/sbx-test-runtime")
    p = policy.effective("free", env)
    pl = mount_namespace.plan(p, LaunchContext(env))
    assert pl.covers[:2] == ["/tmp", "/dev/shm"] and "/var/lib/sbx-test-runtime" in pl.covers
    for h in p.data["filesystem"]["hidden"]:
        if os.path.isdir(h):
            assert os.path.realpath(h) in pl.covers, h
    assert pl.kept[os.path.realpath(home)] is False  # {home} is writable in `free`
    for f in LaunchContext(env).read_kept():
        assert pl.kept[f] is True, f
    assert pl.kept[os.path.realpath(sys.prefix)] is True


def test_mount_namespace_plan_mounts_program_directories_outside_exec_allow_noexec():
    env = dict(os.environ)
    free = policy.effective("free", env)
    dirs = [os.path.realpath(d) for d in ("/usr/bin", "/bin") if os.path.isdir(d)]
    assert dirs
    assert not set(dirs) & {d for d, _ in mount_namespace.plan(free, LaunchContext(env)).programs}  # {system} allows them
    python_only = _edited("free", exec={"allow": ["{python}"]})
    programs = dict(mount_namespace.plan(python_only, LaunchContext(env)).programs)
    assert set(dirs) <= set(programs), programs


def test_rlimits_counts_per_kernel_only_in_a_user_namespace_the_pid_namespace_layer_entered():
    """What pid_namespace hands rlimits (pid_namespace.Entered): a user namespace of its own only
    where it entered one and this process is no longer in the one the launcher started in."""
    here = os.stat("/proc/self/ns/user").st_ino
    entered = pid_namespace.Entered()
    assert not rlimits.in_own_user_namespace(entered)  # nothing entered (the layer off, or unavailable)
    entered.namespaces |= {"pid", "ipc", "user"}
    entered.host_userns = here
    assert not rlimits.in_own_user_namespace(entered)  # still in the launcher's user namespace
    entered.host_userns = here + 1
    assert rlimits.in_own_user_namespace(entered)
    entered.namespaces.discard("user")
    assert not rlimits.in_own_user_namespace(entered)


@pytest.mark.parametrize("name", ["free", "default", "offline", "research"])
def test_remembering_realpaths_changes_no_view_plan(name, monkeypatch):
    """mount_namespace.plan resolves each path once (paths.remembered_realpaths: some 300 calls,
    58 distinct paths, for free): the same view as resolving every time."""
    import contextlib

    p, ctx = policy.effective(name, dict(os.environ)), LaunchContext(dict(os.environ))
    remembered = vars(mount_namespace.plan(p, ctx))
    monkeypatch.setattr(mount_namespace, "remembered_realpaths", contextlib.nullcontext)
    assert vars(mount_namespace.plan(p, ctx)) == remembered
