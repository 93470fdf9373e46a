"""`sandbox-kernel doctor` and `%sandbox`: what this machine can enforce and what is in force.

Both print the same report (``render``): the machine's facilities, the layers in
force in this process (hard or soft), the accelerator nodes present with the
profile's verdict on each, and every rule of the policy marked hard or soft.
"""

from __future__ import annotations

import os

from . import report, resources
from .layers import cgroup, landlock, nnp, seccomp
from .layers.base import Status
from .childguard import POLICY_ENV
from .policy import Policy, effective


def render(policy: Policy, status: Status | None) -> str:
    mode, filters = seccomp.process_seccomp_state()
    hook = resources.guard_hook_path()
    root = os.getuid() == 0
    out = [
        f"profile: {policy.label}",
        "from: " + ", ".join(policy.sources + policy.ceiling_sources),
        f"Landlock: {landlock.describe_abi()}",
        f"libseccomp: {seccomp.library_path() or 'not found'}",
        f"cgroup: {'v2' if os.path.exists(os.path.join(cgroup.ROOT, 'cgroup.controllers')) else 'v1/hybrid'}; "
        f"uid {os.getuid()}" + (" (root: RLIMIT_NPROC does not apply; the cgroup layer limits processes)" if root else ""),
        f"guard hook: {hook} ({'present' if hook.is_file() else 'MISSING: run sandbox-kernel install'})",
        f"this process: no_new_privs={'yes' if nnp.is_set() else 'no'}, seccomp mode {mode} "
        f"({filters} filter{'s' if filters != 1 else ''})",
        "",
        "layers in force in this process:",
    ]
    out += [f"  {name:13} {hard:4}  {state}" for name, state, hard, _ in report.layer_rows(status)]
    out += ["", "accelerator device nodes present:"]
    rows = report.device_rows(policy)
    out += [f"  {node}: {state}" for node, state in rows] or [
        f"  none found (GPU {policy.gpu['device_pattern']}, TPU {policy.tpu['device_pattern']})"]
    out.append("  (nodes created after the kernel started, e.g. a lazily created /dev/nvidia-uvm, stay denied)")
    out += ["", "rules (hard: enforced by the OS kernel; soft: in-process, removable by hostile code):"]
    out += [f"  {hard:4}  {rule}: {value}  [{how}]" for rule, value, hard, how in report.policy_rows(policy)]
    return "\n".join(out)


def doctor(profile: str | None) -> int:
    if profile is None and POLICY_ENV in os.environ:
        policy = Policy.from_json(os.environ[POLICY_ENV])
    else:
        policy = effective(profile)
    print(render(policy, Status.from_env()))
    return 0
