"""cgroup: one control group per kernel, with pids.max and a memory limit.

Enforcement: hard, and for the whole process tree of the kernel (rlimits are per
process). It is *needed* when the kernel runs as root with ``limits.processes``,
because RLIMIT_NPROC does not bind root: a root fork bomb is stopped only here.
Otherwise it is applied where the launcher may create cgroups (root, or a
delegated subtree) and reported "not needed" where it may not.

Where the group goes (cgroup v2, the unified hierarchy), the first that works:

1. a parent the platform names, and then only there: ``SANDBOX_KERNEL_CGROUP_PARENT``
   or the first line of ``/etc/sandbox-kernel/cgroup-parent`` (a cgroup path such as
   ``/jupyter.slice/kernels.scope``, or a directory under the cgroup mount). It must be
   a directory of a real cgroup filesystem; anything else stops start-up with the fix;
2. a sibling of the launcher's group (beside it, so the no-internal-processes rule
   holds);
3. a child of the launcher's own group, after moving the processes already there into
   a leaf (``sandbox-kernel.leaf``), as crun/runc/youki do for nested containers.

On a host that systemd manages (``/run/systemd/system``), groups are created only in a
subtree delegated with ``Delegate=yes`` (systemd marks it with the ``trusted.delegate``
or ``user.delegate`` xattr), never directly under the root, as systemd's
CGROUP_DELEGATION.md asks. The pids and memory controllers are enabled in
``cgroup.subtree_control`` along the way; a controller that is not available at a
level is reported with the level and the file to change. Leaving the launcher's group
would escape that group's own pids.max/memory.max, so where those are stricter the new
group takes them.

On cgroup v1 (and hybrid hosts) the group is a child of the launcher's group in the
pids and memory hierarchies (and in the freezer hierarchy, used to kill it), or of the
named parent. Not in a Slurm job step's freezer group (Slurm's proctrack/cgroup finds the
step's processes there, not in its children: a child would hide the kernel from scancel),
and nowhere the supervisor could not move back out of to remove it (a job step Slurm gave
an ordinary user: its cgroup.procs stays root's); docs/deploy-slurm.md.

Where no group can be created (a container with a read-only /sys/fs/cgroup), a root
kernel is still bounded when the group it runs in already has pids.max (and memory.max)
at or below the profile's limits (``docker run --pids-limit``): that is accepted and
reported. Otherwise, for root, start-up stops with the fixes.

Groups are named ``sandbox-kernel-<kernel id>-<supervisor pid>-<its start time>``
(field 22 of /proc/<pid>/stat); the supervisor is the launcher process that joins the
group. ``sweep()`` (at each start) removes empty groups of earlier kernels and kills and
removes groups whose supervisor is gone; ``kill(groups, spare_pid)`` kills every process
of a kernel's groups. /sys is read-only under Landlock, so user code cannot raise the
limits or leave the group.

This module places the kernel's group (create, limits, join); finding cgroupfs (mounts,
v1/v2/hybrid, the named parent, delegation) is ``sandbox_kernel/cgroupfs.py``, and the
group's lifetime (``kill``, ``sweep``) is the supervisor's (``sandbox_kernel/supervisor.py``).
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..cgroupfs import (PARENT_ENV, PARENT_FILE, ROOT, Hierarchy, _parent_dir, _read, _strerror, _write, delegated,
                        group_name, hierarchies, is_cgroupfs, named_parent, procs, systemd_managed, unified)
from ..errors import LayerUnavailable
from ..identity import is_root
from ..paths import below
from ..resolved import parse_size
from ..supervisor import _ORIGINS, _rmdir, _sweep_parents, kill, sweep
from .status import level_or_off, simulated_missing

NAME = "cgroup"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.cgroup can make it best-effort or off
CHECKED_BY_KERNEL = True  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = ("give the launcher a cgroup it may create groups in (a systemd unit with Delegate=yes, or a writable "
        "delegated cgroup named in SANDBOX_KERNEL_CGROUP_PARENT)")
DESCRIPTION = "a group per kernel with pids.max and a memory limit, killed with the kernel"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "required"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("a group per kernel with `pids.max` and a memory limit (needed as root, where RLIMIT_NPROC does not "
          "apply), placed where the host allows: under a parent the platform names "
          "(`SANDBOX_KERNEL_CGROUP_PARENT`), beside the launcher's group, or inside it; in containers see "
          "[docs/deploy-containers.md](docs/deploy-containers.md).")
NEEDS = ()  # the earlier layers whose results apply() reads (given[NAME])
# RESULT (below): the class of what apply() returns for later layers
LEAF = "sandbox-kernel.leaf"  # where the processes of the launcher's own group move (placement 3)


# --------------------------------------------------------------------------- settings


def settings_for(limits: dict, version: int) -> dict[str, dict[str, str]]:
    """controller -> {control file: value} for the profile's limits."""
    out: dict[str, dict[str, str]] = {}
    if limits.get("processes"):
        out["pids"] = {"pids.max": str(int(limits["processes"]))}
    if limits.get("memory"):
        mem = str(parse_size(limits["memory"]))
        out["memory"] = ({"memory.max": mem, "memory.swap.max": "0"} if version == 2
                         else {"memory.limit_in_bytes": mem})
    return out


def _limit_value(text: str) -> int | None:
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        v = int(text)
    except ValueError:
        return None
    return None if v >= 2**62 else v  # v1 shows "no limit" as a huge page-rounded number


def enclosing_limit(group_dir: str, mount: str, file: str) -> tuple[int, str] | None:
    """The strictest `file` (pids.max, memory.max, ...) from `group_dir` up to the mount: what
    already bounds every process there. (value, the group that sets it) or None."""
    best = None
    d = group_dir.rstrip("/")
    while True:
        try:
            v = _limit_value(_read(os.path.join(d, file)))
        except OSError:
            v = None
        if v is not None and (best is None or v < best[0]):
            best = (v, d)
        if d == mount.rstrip("/") or not below(d, mount):
            return best
        d = os.path.dirname(d)


def _escaped_limits(own: str, parent: str, mount: str, settings: dict[str, dict[str, str]]) -> list[str]:
    """Leaving `own` for a group under `parent` escapes the limits set on the groups between
    `own` and their common ancestor: tighten `settings` to those (in place); return notes."""
    notes = []
    common = os.path.commonpath([own, parent])
    for _ctrl, files in settings.items():
        for file, value in list(files.items()):
            if file == "memory.swap.max":
                continue
            best = None
            d = own.rstrip("/")
            while d != common and below(d, mount):
                try:
                    v = _limit_value(_read(os.path.join(d, file)))
                except OSError:
                    v = None
                if v is not None and v < int(value) and (best is None or v < best[0]):
                    best = (v, d)
                d = os.path.dirname(d)
            if best:
                files[file] = str(best[0])
                notes.append(f"{file}={best[0]} kept from {best[1]} (stricter than the profile's {value})")
    return notes


# --------------------------------------------------------------------------- placement (v2)


class _Failed(Exception):
    """One placement candidate did not work; the message says why."""


def _controllers(d: str) -> list[str]:
    try:
        return _read(os.path.join(d, "cgroup.controllers")).split()
    except OSError:
        return []


def _subtree(d: str) -> list[str]:
    try:
        return _read(os.path.join(d, "cgroup.subtree_control")).split()
    except OSError:
        return []


def _may_manage(d: str, mount: str) -> str | None:
    """Why we must not create groups in or write the attributes of `d` (systemd's rules), or None."""
    if not systemd_managed():
        return None
    if d.rstrip("/") == mount.rstrip("/"):
        return (f"systemd manages this hierarchy and {d} is its root; groups are created only in a subtree "
                f"delegated with Delegate=yes")
    if not delegated(d, mount):
        return f"systemd manages {d} and it is not in a subtree delegated with Delegate=yes"
    return None


def _move_all(src: str, dst: str) -> None:
    """Move every process of `src` into `dst` (a leaf), until none is left."""
    for _ in range(100):
        left = [p for p in procs(src) if p]
        if not left:
            return
        for p in left:
            try:
                _write(os.path.join(dst, "cgroup.procs"), str(p))
            except OSError as e:
                if e.errno != errno.ESRCH:
                    raise _Failed(f"cannot move process {p} from {src} into {dst}: {_strerror(e)}") from None
    raise _Failed(f"{src} keeps gaining processes; cannot empty it into {dst}")


def _enable(parent: str, mount: str, ctrl: str, *, check_only: bool = False) -> None:
    """Make `ctrl` enabled in parent/cgroup.subtree_control, enabling it in the ancestors'
    subtree_control from the nearest level that has it down to `parent` (with `check_only`,
    only check that this can be tried: the controller exists and systemd's rules allow it)."""
    if ctrl in _subtree(parent):
        return
    chain = [parent.rstrip("/")]
    while ctrl not in _controllers(chain[-1]) and chain[-1] != mount.rstrip("/"):
        chain.append(os.path.dirname(chain[-1]))
    top = chain[-1]
    if ctrl not in _controllers(top):
        where = "this cgroup hierarchy" if top == mount.rstrip("/") else top
        raise _Failed(f"the {ctrl} controller is not available in {where} (not in {top}/cgroup.controllers; "
                      f"it may be bound to a cgroup v1 hierarchy or disabled on the kernel command line)")
    for d in reversed(chain):
        if ctrl in _subtree(d):
            continue
        why = _may_manage(d, mount)
        if why:
            raise _Failed(f"the {ctrl} controller is not enabled for {d}'s children and {why}; enable it there "
                          f"(systemd: Delegate=yes on the unit gives its subtree every controller)")
        if check_only:
            continue
        try:
            _write(os.path.join(d, "cgroup.subtree_control"), f"+{ctrl}")
        except OSError as e:
            hint = (" (it holds processes of its own; cgroup v2's no-internal-processes rule forbids enabling "
                    "controllers for its children)" if e.errno == errno.EBUSY else
                    " (it is not delegated to this user)" if e.errno in (errno.EACCES, errno.EPERM) else "")
            raise _Failed(f"cannot enable the {ctrl} controller in {d}/cgroup.subtree_control: "
                          f"{_strerror(e)}{hint}") from None


def _try_v2(h: Hierarchy, parent: str, label: str, name: str, settings: dict[str, dict[str, str]],
            with_limits: bool) -> tuple[str, list[str], dict[str, dict[str, str]]]:
    """Create parent/name, set the limits (with `with_limits`), move this process into it;
    returns (group, notes, the settings written). Raises _Failed."""
    settings = {ctrl: dict(files) for ctrl, files in settings.items()}
    why = _may_manage(parent, h.mount)
    if why:
        raise _Failed(f"{label} ({parent}): {why}")
    group = os.path.join(parent, name)
    try:
        os.mkdir(group, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise _Failed(f"{label}: mkdir {group}: {_strerror(e)}") from None
    notes = []
    try:
        if not is_cgroupfs(group):
            raise _Failed(f"{label}: {group} is not on a cgroup filesystem")
        own = h.own or h.mount
        if with_limits:  # before anything moves: can the controllers be had under this parent at all?
            for ctrl in settings:
                try:
                    _enable(parent, h.mount, ctrl, check_only=True)
                except _Failed as e:
                    raise _Failed(f"{label}: {e}") from None
        if parent.rstrip("/") == own.rstrip("/"):
            # Our own group becomes an inner node: its processes (the launcher, Jupyter, ...)
            # move into a leaf first, so controllers can be enabled for its children.
            leaf = os.path.join(own, LEAF)
            try:
                os.mkdir(leaf, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                raise _Failed(f"{label}: mkdir {leaf}: {_strerror(e)}") from None
            _move_all(own, leaf)
            _ORIGINS[group] = leaf
            notes.append(f"the processes of {own} moved into {leaf}")
        else:
            _ORIGINS[group] = own
        if with_limits:
            for ctrl in settings:
                try:
                    _enable(parent, h.mount, ctrl)
                except _Failed as e:
                    raise _Failed(f"{label}: {e}") from None
            notes += _escaped_limits(own, parent, h.mount, settings)
            for files in settings.values():
                for file, value in files.items():
                    path = os.path.join(group, file)
                    if file == "memory.swap.max" and not os.path.exists(path):
                        continue  # no swap accounting: nothing to disable
                    try:
                        _write(path, value)
                    except OSError as e:
                        raise _Failed(f"{label}: cannot write {path}: {_strerror(e)}") from None
        try:
            _write(os.path.join(group, "cgroup.procs"), str(os.getpid()))
        except OSError as e:
            raise _Failed(f"{label}: cannot move the launcher into {group}: {_strerror(e)}") from None
    except _Failed:
        _ORIGINS.pop(group, None)
        _rmdir(group)
        raise
    return group, notes, settings


class _Locked:
    """flock(2) on a group's directory while processes move out of it: a launcher emptying its
    group into the leaf must not move another launcher that has just joined its own group
    (it would read that launcher's pid before the move and write it after)."""

    def __init__(self, d: str | None):
        self.fd = None
        if d:
            try:
                self.fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


def _candidates_v2(h: Hierarchy, named: tuple[str, str] | None) -> list[tuple[str, str]]:
    if named:
        return [(_parent_dir(h, *named), f"the parent named by {named[1]}")]
    own = h.own
    if own is None:
        return []
    out = []
    if own.rstrip("/") != h.mount.rstrip("/"):
        out.append((os.path.dirname(own.rstrip("/")), "a sibling of the launcher's group"))
    out.append((own, "a child of the launcher's own group"))
    return out


# --------------------------------------------------------------------------- placement (v1)


def slurm_step(path: str) -> bool:
    """A Slurm job step's group in cgroup/v1's layout (.../slurm*/uid_N/job_N/step_X)?"""
    p = path.rstrip("/").split("/")
    return len(p) >= 4 and p[-1].startswith("step_") and p[-2].startswith("job_") and p[-2][4:].isdigit() \
        and p[-3].startswith("uid_") and p[-4].startswith("slurm")


def _place_v1(hs: list[Hierarchy], named, name: str,
              settings: dict[str, dict[str, str]]) -> tuple[list[str], list[str], list[str]]:
    """Children of our group (or of the named parent) in the pids, memory and freezer
    hierarchies: (groups, problems with needed controllers, notes)."""
    groups, problems, notes = [], [], []
    have = {c for h in hs for c in h.controllers}
    problems += [f"no cgroup v1 hierarchy has the {c} controller mounted under {ROOT}" for c in settings if c not in have]
    for h in hs:
        needs = [c for c in h.controllers if c in settings]
        if not needs and "freezer" not in h.controllers:
            continue
        if named:
            parent = _parent_dir(h, *named)
        elif h.own is None:
            if needs:
                problems.append(f"the launcher's group is not visible under {h.mount}")
            continue
        else:
            parent = h.own
        if not needs and slurm_step(parent):
            # Slurm's proctrack/cgroup finds a job's processes in the step's freezer group only (not
            # in its children): a freezer child would hide the kernel from scancel. Slurm's group
            # already lets every process of the kernel be killed together.
            notes.append(f"no freezer group of its own (the Slurm job step's, {parent}, tracks the kernel)")
            continue
        group = os.path.join(parent, name)
        origin = h.own or parent
        try:
            try:
                os.mkdir(group, 0o755)
            except FileExistsError:
                pass
            if not is_cgroupfs(group):
                raise OSError(errno.EINVAL, f"{group} is not on a cgroup filesystem")
            if not os.access(os.path.join(origin, "cgroup.procs"), os.W_OK):
                # e.g. a Slurm job's step, which Slurm gives the job's user while its cgroup.procs
                # stays root's: the supervisor could enter the group but never leave it to remove
                # it, and a group left behind keeps Slurm from removing the job's groups
                raise OSError(errno.EACCES, f"a group made here could not be removed (its supervisor could not "
                                            f"move back to {origin})")
            for c in needs:
                for file, value in settings[c].items():
                    _write(os.path.join(group, file), value)
            _write(os.path.join(group, "cgroup.procs"), str(os.getpid()))
            _ORIGINS[group] = h.own or parent
            groups.append(group)
        except OSError as e:
            _rmdir(group)
            if needs:  # the freezer is optional: kill() iterates without it
                problems.append(f"{parent}: {_strerror(e)}")
            else:
                notes.append(f"no freezer group ({parent}: {_strerror(e)}; kill iterates)")
    return groups, problems, notes


# --------------------------------------------------------------------------- the layer


def needed(policy) -> bool:
    return is_root() and bool(policy.limits.get("processes"))


def _container_bound(settings: dict[str, dict[str, str]]) -> tuple[bool, list[str]]:
    """Do the groups this process is already in bound it at or below the profile's limits
    (e.g. a container started with --pids-limit)? (every limit bounded, descriptions)."""
    hs = hierarchies()
    found, ok = [], True
    for ctrl, files in settings.items():
        for file, value in files.items():
            if file == "memory.swap.max":
                continue
            h = next((h for h in hs if h.version == 2 or ctrl in h.controllers), None)
            bound = enclosing_limit(h.own, h.mount, file) if h and h.own else None
            if bound and bound[0] <= int(value):
                found.append(f"{file}={bound[0]} on {bound[1]} (shared with every process there)")
            else:
                ok = False
                found.append(f"{file}: " + (f"{bound[0]} on {bound[1]}, above the profile's {value}" if bound
                                            else "no limit on the groups this process is in"))
    return ok, found


def _docker_size(n: int) -> str:
    for unit, k in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if n % k == 0:
            return f"{n // k}{unit}"
    return str(n)


def _fixes(settings) -> str:
    procs_limit = settings.get("pids", {}).get("pids.max")
    mem = next((v for f, v in settings.get("memory", {}).items() if f in ("memory.max", "memory.limit_in_bytes")), None)
    docker = "docker run" + (f" --pids-limit {procs_limit}" if procs_limit else "") + \
        (f" --memory {_docker_size(int(mem))}" if mem else "")
    limits = " and ".join(x for x in (f"limits.processes={procs_limit}" if procs_limit else "",
                                       f"limits.memory={_docker_size(int(mem))}" if mem else "") if x)
    k8s = "the kubelet's podPidsLimit" + (" and the container's memory limit" if mem else "")
    return ("fix one of: run the kernel as an ordinary user, where RLIMIT_NPROC limits processes (`docker run "
            "--user 1000`, Kubernetes `runAsUser: 1000`); or bound the container itself at or below "
            f"{limits} (`{docker}`; Kubernetes: {k8s}), which this layer accepts in place of a group of its own; "
            "or give the launcher a cgroup it may create groups in (a systemd unit with Delegate=yes, or a "
            f"writable delegated cgroup named in {PARENT_ENV} or {PARENT_FILE})")


class Placed:
    """What this layer hands on: the kernel's group directories (to pid_namespace, whose
    supervisor kills what is left in them when the kernel exits) and whether the kernel's own
    group bounds its processes with pids.max (to rlimits, which then need not set RLIMIT_NPROC
    per uid)."""

    def __init__(self, groups: list[str], pids_limited: bool):
        self.groups = groups
        self.pids_limited = pids_limited


RESULT = Placed


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> Placed | None:
    """(None where the profile turns the layer off: no group.)"""
    level = level_or_off(policy, NAME, status)
    if level is None:
        return None
    must = needed(policy) and level == "required"
    named = named_parent(ctx.env)  # a malformed setting stops start-up whatever the level
    name = group_name(ctx.kernel_id)
    if simulated_missing(NAME):
        hs = []
    else:
        hs = hierarchies()
        try:
            sweep(_sweep_parents(hs, named))
        except OSError:
            pass
    v2 = [h for h in hs if h.version == 2]
    groups: list[str] = []
    problems: list[str] = []
    notes: list[str] = []
    placement = ""
    complete = False
    if v2:
        h = v2[0]
        settings = settings_for(policy.limits, 2)
        candidates = _candidates_v2(h, named)
        if not candidates:
            problems.append(f"the launcher's group is not visible under {h.mount}")
        with _Locked(h.own):
            for parent, label in candidates:
                try:
                    group, notes, settings = _try_v2(h, parent, label, name, settings, True)
                except _Failed as e:
                    problems.append(str(e))
                    continue
                groups, placement, complete = [group], label, True
                break
            if not groups and not must:  # a group without limits still lets the kernel be killed as a whole
                for parent, label in candidates:
                    try:
                        group, notes, _ = _try_v2(h, parent, label, name, {}, False)
                    except _Failed:
                        continue
                    groups, placement = [group], label
                    break
        if complete and problems:
            notes.append("tried first: " + "; ".join(problems))
            problems = []
    elif hs:
        settings = settings_for(policy.limits, 1)
        groups, problems, notes = _place_v1(hs, named, name, settings)
        placement = f"under the parent named by {named[1]}" if named else "children of the launcher's groups"
        complete = bool(groups) and not problems
        if must and not complete:
            kill(groups, spare_pid=os.getpid())  # out of them again, and remove them
            groups = []
    else:
        settings = settings_for(policy.limits, 2 if unified() else 1)
        problems.append("no writable cgroup hierarchy (simulated)" if simulated_missing(NAME)
                        else f"no cgroup filesystem is mounted at {ROOT}")
    placed = Placed(list(groups), complete and "pids" in settings)  # pids: the kernel's own group counts its processes
    _report(policy, status, must, complete, groups, problems, notes, placement, settings)
    return placed


def _report(policy, status, must, complete, groups, problems, notes, placement, settings) -> None:
    extra = {"groups": list(groups)}
    what = ", ".join(groups) + (f" ({placement})" if placement else "") + "".join(f"; {n}" for n in notes)
    limits = ", ".join(f"{f}={v}" for files in settings.values() for f, v in files.items() if f != "memory.swap.max")
    if complete:
        status.active(NAME, f"group {what}; " + (limits or "no limits set (the group lets the kernel's "
                                                           "processes be killed together)"), **extra)
        return
    why = "; ".join(problems) or "no cgroup could be created"
    if not settings:
        if groups:
            status.active(NAME, f"group {what} (the profile sets no process or memory limit)", **extra)
        else:
            status.not_needed(NAME, f"the profile sets no process or memory limit ({why})")
        return
    if must:
        ok, found = _container_bound(settings)
        if ok:
            status.active(NAME, f"no group of its own ({why}); the kernel is bounded by the groups it runs in: "
                          + "; ".join(found), groups=[], enclosing=True)
            return
        raise LayerUnavailable(NAME, f"{why}; " + "; ".join(found) + ". As root, RLIMIT_NPROC does not limit "
                               "processes, so a cgroup must; " + _fixes(settings))
    if needed(policy):
        state = status.partial if groups else status.unavailable
        state(NAME, (f"group {what}; not applied: " if groups else "") + why + "; a root fork bomb is NOT limited",
              **extra)
        return
    ok, found = _container_bound(settings)
    bounded = [f for f in found if "=" in f.split(" ")[0]]
    tail = "; RLIMIT_NPROC and RLIMIT_DATA apply (not root)" + ("; also " + "; ".join(bounded) if bounded else "")
    if groups:
        status.partial(NAME, f"group {what}; not applied: {why}{tail}", **extra)
    else:
        status.not_needed(NAME, why + tail)


__all__ = ["NAME", "apply", "needed", "settings_for"]
