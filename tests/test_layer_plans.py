"""What layers decide and hand on, computed without privileges (layers.registry: plan(policy,
host) and the results apply() returns): no kernel is started and nothing is applied."""

import os

from sandbox_kernel import policy
from sandbox_kernel.layers import accelerators, environment, landlock, mountns
from sandbox_kernel.layers.context import LaunchContext


def _free():
    return policy.effective("free", dict(os.environ))


def test_landlock_closes_protected_paths_the_mount_namespace_did_not_make_read_only():
    """The mount namespace's hand-off (mountns.Mounted) decides which protected paths Landlock
    must still exclude: none it made read-only mounts, every one where nothing was mounted."""
    p, ctx = _free(), LaunchContext(dict(os.environ))
    protected = sorted({os.path.realpath(x) for x in ctx.protected_paths(p)})
    assert protected
    none = landlock.plan(p, ctx, mountns.NOTHING, environment.Judged([]))
    assert landlock.plan(p, ctx).paths == none.paths  # nothing handed on: the same as nothing mounted
    everything = landlock.plan(p, ctx, mountns.Mounted(protected, [], False, []), environment.Judged([]))
    assert none.paths != everything.paths  # (exclusions split grants into more, narrower rules)


def test_landlock_grants_only_the_gpu_tools_the_environment_layer_judged():
    p, ctx = _free(), LaunchContext(dict(os.environ))
    tool = "/opt/sbx-nonexistent-tool/nvidia-smi"
    judged = environment.Judged([("{which:nvidia-smi}", tool, accelerators.GRANTED, "test")])
    assert "execute" in landlock.plan(p, ctx, None, judged).paths.get(tool, set())
    assert tool not in landlock.plan(p, ctx, None, environment.Judged([])).paths

