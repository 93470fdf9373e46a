"""The cgroup layer on every hierarchy shape it meets, as root and as an ordinary user.

cgroup v2 shapes are built as real groups in this host's v2 hierarchy and seen through a
cgroup2 mount over /sys/fs/cgroup in a private mount namespace (the launcher then sees
a v2-only host, as on the H100 host of ../shared/measurements/h100-2026-11-23). Where this
host's v2 hierarchy has no pids controller (hybrid hosts bind pids and memory to v1), the
v2 tests check placement and the structural rules, and the tests that need pids.max on
v2 skip saying so; they run for real on a cgroup v2 host.

Containers are simulated as Docker runs them: a read-only /sys/fs/cgroup (a bind remount
in a private mount namespace) and Docker's default capability set (setpriv), as root and as
uid 1000. kill() and sweep() are tried on real processes that detached (setsid, double
fork, start_new_session).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

import kernelutil
import pytest
from testenv import IS_ROOT, REPO

from sandbox_kernel import cgroupfs, supervisor
from sandbox_kernel.errors import SandboxError
from sandbox_kernel.layers import cgroup

pytestmark = [pytest.mark.skipif(not IS_ROOT, reason="shaping cgroup hierarchies needs root"),
              # serial: the sweeps walk shared parent groups (v1 pids, freezer) where every kernel's group
              # is, and the Docker-shape kernels of an account without a user namespace of its own count
              # that uid's tasks on the whole host (kernelutil.uid_tasks) against RLIMIT_NPROC
              pytest.mark.serial]

# Docker's default capability set (moby: oci/caps/defaults.go; docs.docker.com "Runtime privilege and
# Linux capabilities").
DOCKER_CAPS = ["chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid", "setfcap",
               "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write"]
DOCKER_BSET = "-all," + ",".join("+" + c for c in DOCKER_CAPS)


def _v2_mount() -> str | None:
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                return left.split()[4]
    return None


V2 = _v2_mount()


def _v2_has(ctrl: str) -> bool:
    try:
        with open(os.path.join(V2, "cgroup.controllers")) as fh:
            return ctrl in fh.read().split()
    except (OSError, TypeError):
        return False


PIDS_V2 = _v2_has("pids")
NO_PIDS_V2 = ("this host's cgroup v2 hierarchy has no pids controller (it is bound to cgroup v1 here, a hybrid "
              "layout); this runs for real on a cgroup v2 host such as the H100 host")
needs_v2 = pytest.mark.skipif(V2 is None, reason="no cgroup v2 hierarchy is mounted on this host")

PROBE = ("import json, os; print(json.dumps({'layers': json.loads(os.environ['SANDBOX_KERNEL_LAYERS']), "
         "'cgroup': [l.split(':', 2)[2] for l in open('/proc/self/cgroup').read().splitlines() "
         "if l.startswith('0::')][0], 'pid': os.getpid()}))")


@pytest.fixture(scope="module", autouse=True)
def profiles():
    kernelutil.write_profile("cg-best", """
        extends: free
        enforcement:
          cgroup: best-effort
        limits:
          processes: 64
        """)
    kernelutil.write_profile("cg-best-nopidns", """
        extends: free
        enforcement:
          cgroup: best-effort
          pid_namespace: off
        limits:
          processes: 64
        """)
    kernelutil.write_profile("cg-64", """
        extends: free
        limits:
          processes: 64
        """)


def _user_env(user) -> dict:
    if user is None:
        return {}
    return {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}


def launch(prefix: list[str], profile: str, *, user=None, env=None, code: str = PROBE, cwd=None,
           uid: int | None = None) -> subprocess.CompletedProcess:
    """`sandbox-kernel run --profile P -- python -c CODE` behind `prefix`, as `user` (or `uid`)."""
    argv = list(prefix)
    run_env = dict(os.environ)
    if user is not None:
        argv += ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        run_env.update(_user_env(user))
        run_env.pop("TMPDIR", None)
    elif uid is not None:
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        run_env.pop("TMPDIR", None)
    argv += [sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile, "--",
             sys.executable, "-c", code]
    run_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=run_env, timeout=120,
                          cwd=cwd or (kernelutil.user_workdir(user) if user else None))


def probe(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- a v2 tree


class V2Tree:
    """Groups of our own in this host's v2 hierarchy, and the command prefix that shows the
    launcher a v2-only host: a private mount namespace with cgroup2 mounted over /sys/fs/cgroup."""

    def __init__(self):
        self.top = os.path.join(V2, f"sbx-test-{os.urandom(4).hex()}")
        os.mkdir(self.top)
        self.bystanders: list[subprocess.Popen] = []

    def mk(self, rel: str, owner=None) -> str:
        path = os.path.join(self.top, rel)
        os.makedirs(path, exist_ok=True)
        if owner is not None:
            delegate(path, owner.pw_uid, owner.pw_gid)
        return path

    def cg(self, path: str) -> str:
        """The cgroup path of a group, as /proc/<pid>/cgroup shows it."""
        return "/" + os.path.relpath(path, V2)

    def inside(self, path: str) -> str:
        """A group's directory as the launcher sees it (cgroup2 mounted at /sys/fs/cgroup)."""
        return "/sys/fs/cgroup" + self.cg(path)

    def host(self, inside: str) -> str:
        return os.path.join(V2, os.path.relpath(inside, "/sys/fs/cgroup"))

    def bystander(self, group: str, user=None) -> int:
        """A process standing for the Jupyter server: the launcher starts in its group."""
        pre = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"] if user else []
        p = subprocess.Popen(pre + ["sleep", "600"])
        self.bystanders.append(p)
        with open(os.path.join(group, "cgroup.procs"), "w") as fh:
            fh.write(str(p.pid))
        return p.pid

    def prefix(self, jupyter: int, *, bset: str | None = None, extra: str = "") -> list[str]:
        """Run the rest in the current group of process `jupyter`, on a v2-only view."""
        script = ("{ umount -l /sys/fs/cgroup 2>/dev/null; true; } && mount -t cgroup2 cgroup2 /sys/fs/cgroup && "
                  f"echo $$ > /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/{jupyter}/cgroup)/cgroup.procs && "
                  f"{extra}exec \"$@\"")
        out = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
        if bset:
            out += ["setpriv", f"--bounding-set={bset}", "--"]
        return out

    def group_of(self, pid: int) -> str:
        with open(f"/proc/{pid}/cgroup") as fh:
            return next(line.split(":", 2)[2].strip() for line in fh if line.startswith("0::"))

    def cleanup(self):
        for p in self.bystanders:
            p.kill()
            p.wait()
        for dirpath, _, _ in sorted(os.walk(self.top), key=lambda t: -t[0].count("/")):
            try:
                with open(os.path.join(dirpath, "cgroup.kill"), "w") as fh:
                    fh.write("1")
            except OSError:
                pass
            kernelutil.wait_for(lambda: not open(os.path.join(dirpath, "cgroup.procs")).read().strip(), timeout=10)  # noqa: B023 - called in this iteration
            os.rmdir(dirpath)


def delegate(path: str, uid: int, gid: int) -> None:
    """Delegate a v2 group to a user, as the kernel's cgroup-v2 documentation says: the
    directory and its cgroup.procs, cgroup.subtree_control and cgroup.threads."""
    os.chown(path, uid, gid)
    for f in ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        os.chown(os.path.join(path, f), uid, gid)


@pytest.fixture
def tree():
    if V2 is None:
        pytest.skip("no cgroup v2 hierarchy is mounted on this host")
    t = V2Tree()
    yield t
    t.cleanup()


def _expect_placed(t: V2Tree, out: dict, parent: str, who) -> str:
    """The launcher's child runs in a new group right under `parent`; returns that group (host path)."""
    info = out["layers"]["cgroup"]
    groups = info.get("groups") or []
    assert len(groups) == 1, info
    group = t.host(groups[0])
    assert os.path.dirname(group) == parent, (group, parent, info)
    assert os.path.basename(group).startswith(cgroupfs.PREFIX)
    assert cgroupfs.parse_group_name(os.path.basename(group)), group
    assert out["cgroup"] == t.cg(group), (out["cgroup"], group)
    if PIDS_V2:
        assert info["state"] == "active", info
        with open(os.path.join(group, "pids.max")) as fh:
            assert fh.read().strip() == "64"
    else:  # placed for killing as a whole, without limits: said so
        assert info["state"] == "partial", info
        assert "pids controller is not available" in info["detail"], info
        assert ("fork bomb is NOT limited" if who is None else "RLIMIT_NPROC") in info["detail"], info
    return group


# --------------------------------------------------------------------------- placement on v2


@pytest.mark.kernel
@needs_v2
def test_v2_sibling_of_the_launchers_group(tree, who):
    api = tree.mk("process_api", owner=who)  # for a user: the launchers' parent is delegated to them
    own = tree.mk("process_api/abc")
    jupyter = tree.bystander(own, who)
    out = probe(launch(tree.prefix(jupyter), "cg-best", user=who))
    _expect_placed(tree, out, api, who)
    assert tree.group_of(jupyter) == tree.cg(own)  # the launcher's group-mates stay where they were


@pytest.mark.kernel
@needs_v2
def test_v2_child_of_own_group_when_the_parent_refuses(tree, who):
    """The H100 host's shape: mkdir beside the launcher's group is refused, inside it works.
    The processes already in that group (Jupyter) move into a leaf first."""
    api = tree.mk("process_api")
    if who is None:  # root without CAP_DAC_OVERRIDE meets a parent it does not own
        os.chown(api, 65534, 65534)
    own = tree.mk("process_api/abc", owner=who)
    jupyter = tree.bystander(own, who)
    out = probe(launch(tree.prefix(jupyter, bset="-dac_override" if who is None else None), "cg-best", user=who))
    group = _expect_placed(tree, out, own, who)
    leaf = os.path.join(own, cgroup.LEAF)
    assert tree.group_of(jupyter) == tree.cg(leaf)
    with open(os.path.join(own, "cgroup.procs")) as fh:
        assert fh.read().split() == []  # no internal processes left
    if PIDS_V2:
        with open(os.path.join(own, "cgroup.subtree_control")) as fh:
            assert "pids" in fh.read().split()
    # the next kernel starts where Jupyter now is (the leaf): a sibling beside it
    out2 = probe(launch(tree.prefix(jupyter, bset="-dac_override" if who is None else None), "cg-best", user=who))
    group2 = _expect_placed(tree, out2, own, who)
    assert group2 != group


@pytest.mark.kernel
@needs_v2
def test_v2_named_parent(tree, who):
    tenant = tree.mk("tenant", owner=who)
    kernels = tree.mk("tenant/kernels", owner=who)
    jupyter = tree.bystander(tree.mk("tenant/jupyter", owner=who), who)
    for value in (tree.cg(kernels), tree.inside(kernels)):  # a cgroup path, or the directory itself
        out = probe(launch(tree.prefix(jupyter), "cg-best", user=who, env={cgroupfs.PARENT_ENV: value}))
        _expect_placed(tree, out, kernels, who)
    assert tree.group_of(jupyter) == tree.cg(os.path.join(tenant, "jupyter"))


@pytest.mark.kernel
@needs_v2
def test_v2_named_parent_is_the_only_place(tree):
    """A parent the platform names is used or start-up stops: no silent fallback elsewhere."""
    kernels = tree.mk("kernels")
    os.chown(kernels, 65534, 65534)
    jupyter = tree.bystander(tree.mk("jupyter"))
    p = launch(tree.prefix(jupyter, bset="-dac_override"), "cg-64", env={cgroupfs.PARENT_ENV: tree.cg(kernels)})
    assert p.returncode == 1, p.stdout
    assert "sandbox layer 'cgroup' is required" in p.stderr
    assert f"the parent named by {cgroupfs.PARENT_ENV}" in p.stderr and "Permission denied" in p.stderr
    assert "Traceback" not in p.stderr
    assert [d for d in os.listdir(os.path.join(tree.top, "jupyter")) if d.startswith(cgroupfs.PREFIX)] == []


@needs_v2
@pytest.mark.parametrize("value, message", [
    ("kernels", "must be an absolute cgroup path"),
    ("/a/../b", "must be an absolute cgroup path"),
    ("/no/such/group", "does not exist"),
    ("FAKE", "is not on a cgroup filesystem"),
])
@pytest.mark.kernel
def test_v2_named_parent_must_be_a_real_cgroup(tree, value, message):
    """A bad setting stops start-up whatever the enforcement level (best-effort here), naming
    the variable and the fix; a plain directory (here a tmpfs inside the hierarchy) is never
    taken for a cgroup, where pids.max would be an ordinary file that limits nothing."""
    fake = tree.mk("fake")
    jupyter = tree.bystander(tree.mk("jupyter"))
    if value == "FAKE":
        value = tree.cg(fake)
    extra = f"mount -t tmpfs tmpfs {shlex.quote(tree.inside(fake))} && "
    p = launch(tree.prefix(jupyter, extra=extra), "cg-best", env={cgroupfs.PARENT_ENV: value})
    assert p.returncode == 1, p.stdout
    assert f"{cgroupfs.PARENT_ENV}={value!r}" in p.stderr and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.kernel
@needs_v2
def test_v2_no_place_fails_closed_with_the_fix(tree):
    """Neither beside nor inside the launcher's group: root refuses to start, naming each
    place it tried and the fixes."""
    api = tree.mk("process_api")
    own = tree.mk("process_api/abc")
    for d in (api, own):
        os.chown(d, 65534, 65534)
    jupyter = tree.bystander(own)
    p = launch(tree.prefix(jupyter, bset="-dac_override"), "free")
    assert p.returncode == 1, p.stdout
    err = p.stderr
    assert "sandbox layer 'cgroup' is required" in err and "Traceback" not in err
    assert "a sibling of the launcher's group" in err and "a child of the launcher's own group" in err
    assert "Permission denied" in err
    for fix in ("runAsUser: 1000", "--pids-limit 512", cgroupfs.PARENT_ENV, "Delegate=yes", "best-effort"):
        assert fix in err, (fix, err)
    assert [d for d in os.listdir(api) if d.startswith(cgroupfs.PREFIX)] == []


@pytest.mark.kernel
@needs_v2
def test_v2_user_without_delegation_is_not_needed(tree, unprivileged):
    """An ordinary user with no delegated group gets no group; RLIMIT_NPROC limits processes."""
    pw = unprivileged
    own = tree.mk("process_api/abc")
    jupyter = tree.bystander(own, pw)
    out = probe(launch(tree.prefix(jupyter), "free", user=pw))
    info = out["layers"]["cgroup"]
    assert info["state"] == "not needed" and "RLIMIT_NPROC" in info["detail"], info
    assert "Permission denied" in info["detail"]
    assert out["cgroup"] == tree.cg(own)


@pytest.mark.kernel
@needs_v2
def test_v2_systemd_host_uses_only_delegated_groups(tree):
    """On a systemd host (simulated: /run/systemd/system in the launcher's mount namespace)
    groups are created only inside a unit delegated with Delegate=yes (the user.delegate
    xattr), never beside it in systemd's slice."""
    slice_ = tree.mk("system.slice")
    unit = tree.mk("system.slice/jupyter.service")
    jupyter = tree.bystander(unit)
    systemd = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && "
    p = launch(tree.prefix(jupyter, extra=systemd), "free")
    assert p.returncode == 1, p.stdout
    assert "systemd manages" in p.stderr and "Delegate=yes" in p.stderr, p.stderr
    assert [d for d in os.listdir(slice_) if d.startswith(cgroupfs.PREFIX)] == []
    os.setxattr(unit, "user.delegate", b"1")
    out = probe(launch(tree.prefix(jupyter, extra=systemd), "cg-best"))
    _expect_placed(tree, out, unit, None)
    assert tree.group_of(jupyter) == tree.cg(os.path.join(unit, cgroup.LEAF))


@pytest.mark.kernel
@needs_v2
@pytest.mark.skipif(not PIDS_V2, reason=NO_PIDS_V2)
@pytest.mark.covers("limits.processes")
def test_v2_root_fork_bomb_stops_at_limits_processes(tree, tmp_path):
    """On the H100 host's shape, through a real kernel as root: the group is placed inside the
    launcher's own group and a fork bomb stops at limits.processes."""
    api = tree.mk("process_api")
    os.chown(api, 65534, 65534)
    jupyter = tree.bystander(tree.mk("process_api/abc"))
    k = kernelutil.Kernel("cg-64", cwd=str(tmp_path), prefix=tree.prefix(jupyter, bset="-dac_override"))
    try:
        out = k.ok("%sandbox").stdout
        assert any(line.split()[:1] == ["cgroup"] and "active" in line and "pids.max=64" in line
                   for line in out.splitlines()), out
        kernelutil.fork_bomb(k, 64)
    finally:
        k.shutdown()


@needs_v2
@pytest.mark.skipif(not PIDS_V2, reason=NO_PIDS_V2)
def test_v2_parent_with_processes_of_its_own_is_reported(tree):
    """cgroup v2's no-internal-processes rule: a parent that holds processes of its own cannot
    enable pids for its children (EBUSY), so no group below it gets pids.max. Root refuses to
    start saying why; best-effort places a group without limits and says so."""
    api = tree.mk("process_api")
    tree.bystander(api)  # a process of the parent's own
    own = tree.mk("process_api/abc")
    jupyter = tree.bystander(own)
    p = launch(tree.prefix(jupyter), "cg-64")
    assert p.returncode == 1, p.stdout
    assert "no-internal-processes rule" in p.stderr and "Device or resource busy" in p.stderr, p.stderr
    info = probe(launch(tree.prefix(jupyter), "cg-best"))["layers"]["cgroup"]
    assert info["state"] == "partial" and "no-internal-processes rule" in info["detail"], info


@pytest.mark.kernel
@needs_v2
def test_v2_container_shape_root(tree, tmp_path):
    """A container on a v2 host (its own cgroup namespace, /sys/fs/cgroup read-only): as root
    it starts only when the container's pids.max bounds it at or below limits.processes."""
    ctr = tree.mk("ctr")
    jupyter = tree.bystander(ctr)
    script = ("cd / && echo $$ > /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/%d/cgroup)/cgroup.procs && "
              "exec unshare -C -m --propagation private sh -c "
              "'umount -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && mount -o remount,bind,ro /sys/fs/cgroup && exec \"$@\"' sh \"$@\"" % jupyter)
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              "{ umount -l /sys/fs/cgroup 2>/dev/null; true; } && mount -t cgroup2 cgroup2 /sys/fs/cgroup && " + script, "sh", sys.executable, "-c", DOCKER_SECCOMP,
              "setpriv", f"--bounding-set={DOCKER_BSET}", "--"]
    profile = "cg-64-nomem"
    kernelutil.write_profile(profile, """
        extends: base
        limits:
          processes: 64
        """)
    p = launch(prefix, profile)
    if not PIDS_V2:
        assert p.returncode == 1, p.stdout
        assert "Read-only file system" in p.stderr and "--pids-limit 64" in p.stderr, p.stderr
        return
    with open(os.path.join(ctr, "pids.max"), "w") as fh:
        fh.write("40")
    info = probe(launch(prefix, profile))["layers"]["cgroup"]
    assert info["state"] == "active" and "pids.max=40" in info["detail"], info

# --------------------------------------------------------------------------- containers


def _ro_cgroup_script(pids_group: str | None = None, memory_group: str | None = None) -> str:
    join = "".join(f"echo $$ > {g}/cgroup.procs && " for g in (pids_group, memory_group) if g)
    return (join + "for m in $(findmnt -rn -R -o TARGET /sys/fs/cgroup); do mount -o remount,bind,ro \"$m\" || "
            "exit 1; done && exec \"$@\"")


# What Docker's default seccomp profile does to the calls our layers make (moby/profiles
# seccomp/default.json): unshare, and clone with namespace flags, only with CAP_SYS_ADMIN (not
# in the default set: EPERM); clone3 gives ENOSYS (so that libc falls back to clone); the
# Landlock and seccomp calls are allowed (moby PR 43199).
DOCKER_SECCOMP = (
    "import errno, os, sys\n"
    "from sandbox_kernel import libseccomp as sc\n"
    "f = sc.Filter(sc.ALLOW)\n"
    "f.add_rule(sc.ERRNO(errno.EPERM), 'unshare')\n"
    "for flag in (0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x02000000):\n"
    "    f.add_rule(sc.ERRNO(errno.EPERM), 'clone', (0, sc.MASKED_EQ, flag, flag))\n"
    "f.add_rule(sc.ERRNO(errno.ENOSYS), 'clone3')\n"
    "f.load()\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n")


def docker_prefix(*, pids_group=None, memory_group=None, root=True) -> list[str]:
    """A default Docker container on this host: /sys/fs/cgroup read-only, Docker's seccomp rules
    for namespaces, and (as root) Docker's capabilities."""
    out = ["unshare", "-m", "--propagation", "private", "sh", "-c", _ro_cgroup_script(pids_group, memory_group), "sh",
           sys.executable, "-c", DOCKER_SECCOMP]
    if root:
        out += ["setpriv", f"--bounding-set={DOCKER_BSET}", "--"]
    return out


needs_v1_pids = pytest.mark.skipif(cgroupfs.unified() or not os.path.isdir("/sys/fs/cgroup/pids"),
                                   reason="simulates a container on this host's cgroup v1 pids hierarchy")


@pytest.mark.kernel
def test_docker_root_refuses_with_the_fix():
    p = launch(docker_prefix(), "free")
    assert p.returncode == 1, p.stdout
    err = p.stderr
    assert "sandbox layer 'cgroup' is required" in err and "Read-only file system" in err, err
    for fix in ("--pids-limit 512", "--memory", "runAsUser: 1000", "--user 1000", "best-effort"):
        assert fix in err, (fix, err)
    assert "Traceback" not in err


@pytest.fixture
def container_groups():
    """A container's own v1 groups with Docker's --pids-limit 40 and --memory 8g."""
    made = []
    own_mem = cgroupfs._own_paths().get("memory", "/")
    pids = f"/sys/fs/cgroup/pids/sbx-test-ctr-{os.urandom(4).hex()}"
    mem = os.path.join("/sys/fs/cgroup/memory", own_mem.strip("/"), os.path.basename(pids))
    for d, f, v in ((pids, "pids.max", "40"), (mem, "memory.limit_in_bytes", str(8 * 1024**3))):
        os.mkdir(d)
        made.append(d)
        with open(os.path.join(d, f), "w") as fh:
            fh.write(v)
    yield pids, mem
    for d in made:
        supervisor.kill([d], remove=False)
        kernelutil.wait_for(lambda: cgroupfs.procs(d) == [], timeout=10)  # noqa: B023 - called in this iteration
        for sub in os.listdir(d):
            if os.path.isdir(os.path.join(d, sub)):
                os.rmdir(os.path.join(d, sub))
        os.rmdir(d)


@pytest.mark.kernel
@needs_v1_pids
def test_docker_root_with_a_pids_limit_starts_bounded(container_groups, tmp_path):
    """`docker run --pids-limit 40 --memory 8g` as root: no group of its own, but the
    container's limits bound the kernel at or below the profile's: accepted and said so; a
    fork bomb stops there; every other layer is hard; no mount namespace without CAP_SYS_ADMIN."""
    pids, mem = container_groups
    k = kernelutil.Kernel("cg-64", cwd=str(tmp_path), prefix=docker_prefix(pids_group=pids, memory_group=mem),
                          connection_base="/var/tmp")  # (no mount namespace: not in the shared /tmp)
    try:
        status = json.loads(k.ok("import os; print(os.environ['SANDBOX_KERNEL_LAYERS'])").stdout)
        info = status["cgroup"]
        assert info["state"] == "active" and info.get("enclosing"), info
        assert f"pids.max=40 on {pids}" in info["detail"] and "Read-only file system" in info["detail"], info
        for layer in ("landlock", "seccomp", "no_new_privs", "capabilities"):
            assert status[layer]["state"] == "active", (layer, status[layer])
        assert status["mount_namespace"]["state"] == "unavailable", status["mount_namespace"]
        # Docker's seccomp profile refuses a user namespace: the per-uid counters are shared, and said so
        rl = status["rlimits"]
        assert rl["state"] == "partial" and "processes=64" in rl["detail"], rl
        assert "count every process of uid 0 together" in rl["detail"] and "inotify_instances" in rl["detail"], rl
        kernelutil.fork_bomb(k, 40)
    finally:
        k.shutdown()


@pytest.mark.kernel
def test_docker_uid_1000_starts_with_rlimit_nproc(tmp_path):
    """The docker-stacks convention (uid 1000, read-only /sys/fs/cgroup): every layer hard;
    processes are limited by RLIMIT_NPROC, and the layer says so."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 1000, 1000)
    os.chmod(tmp_path, 0o755)
    with kernelutil.paths_open_for_others([sys.prefix, os.path.realpath(sys.executable), sys.base_prefix,
                                           str(REPO), str(kernelutil.PREFIX)]):
        p = launch(docker_prefix(root=False), "free", uid=1000, cwd=str(home),
                   env={"HOME": str(home), "USER": "jovyan", "LOGNAME": "jovyan"})
    out = probe(p)
    layers = out["layers"]
    assert layers["cgroup"]["state"] == "not needed", layers["cgroup"]
    assert "RLIMIT_NPROC" in layers["cgroup"]["detail"] and "Read-only file system" in layers["cgroup"]["detail"]
    for layer in ("landlock", "seccomp", "no_new_privs", "capabilities"):
        assert layers[layer]["state"] == "active", (layer, layers[layer])
    # without a user namespace of its own (Docker's seccomp profile refuses one), RLIMIT_NPROC counts
    # every process of uid 1000 together: set, and reported partial
    rl = layers["rlimits"]
    assert rl["state"] == "partial" and "processes=512" in rl["detail"], rl
    assert "count every process of uid 1000 together" in rl["detail"], rl
    # Docker's seccomp profile refuses namespaces without CAP_SYS_ADMIN (best-effort: said so where needed)
    assert layers["mount_namespace"]["state"] in ("unavailable", "not needed"), layers["mount_namespace"]



@pytest.mark.kernel
def test_docker_ordinary_user_kernel_is_bounded_by_rlimit_nproc(unprivileged):
    """A real kernel as an ordinary user in the Docker shape: it starts, says that RLIMIT_NPROC
    limits processes, and a fork bomb stops there."""
    # Without a user namespace (Docker's shape) RLIMIT_NPROC counts the uid's tasks on the whole
    # host: 64 more than it holds now (other tests' kernels of this user may still be running).
    bound = 64 + kernelutil.uid_tasks(unprivileged.pw_uid)
    kernelutil.write_profile("cg-64-uid", f"extends: free\nlimits:\n  processes: {bound}\n")
    k = kernelutil.Kernel("cg-64-uid", cwd=kernelutil.user_workdir(unprivileged), user=unprivileged.pw_name,
                          prefix=docker_prefix(root=False), connection_base="/var/tmp")  # (as above)
    try:
        out = k.ok("%sandbox").stdout
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["cgroup"])
        assert "not needed" in line and "RLIMIT_NPROC" in line, line
        kernelutil.fork_bomb(k, bound)
    finally:
        k.shutdown()

# --------------------------------------------------------------------------- kill and sweep

SUPERVISOR = r"""
import os, subprocess, sys, time
groups, out, stay = [g for g in sys.argv[1].split(",") if g], sys.argv[2], sys.argv[3] == "stay"
for g in groups:
    with open(os.path.join(g, "cgroup.procs"), "w") as fh:
        fh.write(str(os.getpid()))
pids = []
p = subprocess.Popen(["sleep", "600"], start_new_session=True)          # start_new_session
pids.append(p.pid)
r, w = os.pipe()
if os.fork() == 0:                                                       # setsid
    os.setsid()
    os.write(w, b"%d\n" % os.getpid())
    time.sleep(600)
    os._exit(0)
if os.fork() == 0:                                                       # double fork
    if os.fork() == 0:
        os.setsid()
        os.write(w, b"%d\n" % os.getpid())
        time.sleep(600)
        os._exit(0)
    os._exit(0)
got = b""
while got.count(b"\n") < 2:
    got += os.read(r, 100)
pids += [int(x) for x in got.split()]
with open(out + ".tmp", "w") as fh:
    fh.write(" ".join(map(str, pids)))
os.rename(out + ".tmp", out)
if stay:
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Kernelless:
    """A supervisor process (in its own groups) with three detached descendants."""

    def __init__(self, groups: list[str], tmp_path, stay: bool):
        self.out = str(tmp_path / f"pids-{os.urandom(3).hex()}")
        self.proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, ",".join(groups), self.out,
                                      "stay" if stay else "go"])
        assert kernelutil.wait_for(lambda: os.path.exists(self.out), timeout=30)
        with open(self.out) as fh:
            self.detached = [int(x) for x in fh.read().split()]
        if not stay:
            self.proc.wait(timeout=30)

    def stop(self):
        for pid in self.detached + [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.proc.wait()


def _named(parent_dirs: list[str], supervisor_pid: int) -> list[str]:
    name = cgroupfs.group_name("t" + os.urandom(3).hex(), supervisor_pid)
    out = []
    for d in parent_dirs:
        os.mkdir(os.path.join(d, name))
        out.append(os.path.join(d, name))
    return out


def _hierarchy_parents(kind: str, tree) -> list[str]:
    if kind == "v2":
        return [tree.mk("kernels")]
    if cgroupfs.unified() or not os.path.isdir("/sys/fs/cgroup/freezer"):
        pytest.skip("needs this host's cgroup v1 pids and freezer hierarchies")
    return ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/freezer"]


@pytest.fixture(params=["v1", "v2"])
def parents(request):
    t = V2Tree() if V2 is not None else None
    if request.param == "v2" and t is None:
        pytest.skip("no cgroup v2 hierarchy is mounted on this host")
    made = []
    yield request.param, _hierarchy_parents(request.param, t), made
    for g in made:
        supervisor.kill([g])
    if t is not None:
        t.cleanup()


def test_sweep_kills_and_removes_groups_whose_supervisor_is_gone(parents, tmp_path):
    kind, dirs, made = parents
    placeholder = subprocess.Popen(["sleep", "600"])  # a pid to name the groups after, gone below
    groups = _named(dirs, placeholder.pid)
    made += groups
    placeholder.kill()
    placeholder.wait()
    sup = Kernelless(groups, tmp_path, stay=False)
    try:
        assert all(_alive(p) for p in sup.detached)
        removed = supervisor.sweep(dirs)  # (v1: shared parents, where other groups may go too)
        assert set(groups) <= set(removed), removed
        assert kernelutil.wait_for(lambda: not any(_alive(p) for p in sup.detached), timeout=10), sup.detached
        assert not any(os.path.exists(g) for g in groups)
    finally:
        sup.stop()


def test_sweep_keeps_a_live_supervisors_group_and_kill_spares_it(parents, tmp_path):
    kind, dirs, made = parents
    sup = Kernelless([], tmp_path, stay=True)  # not yet in a group: it joins below
    try:
        groups = _named(dirs, sup.proc.pid)
        made += groups
        for g in groups:
            with open(os.path.join(g, "cgroup.procs"), "w") as fh:
                for pid in [sup.proc.pid] + sup.detached:
                    fh.write(str(pid))
                    fh.flush()
        # the supervisor lives: nothing in its groups is touched, and neither are they
        assert not set(supervisor.sweep(dirs)) & set(groups)
        assert all(_alive(p) for p in sup.detached) and all(os.path.isdir(g) for g in groups)
        # the supervisor's kill: every other process dies, the supervisor is spared
        assert supervisor.kill(groups, spare_pid=sup.proc.pid, remove=False)
        assert kernelutil.wait_for(lambda: not any(_alive(p) for p in sup.detached), timeout=10)
        assert _alive(sup.proc.pid)
        for g in groups:
            assert cgroupfs.procs(g) == [sup.proc.pid]
    finally:
        sup.stop()


def test_kill_stops_a_process_that_keeps_forking(parents, tmp_path):
    """Killed one process at a time, a forking loop could outrun the kill; the freezer (v1)
    or cgroup.kill (v2) catches every process at once."""
    kind, dirs, made = parents
    groups = _named(dirs, os.getpid())
    made += groups
    script = ("import os, time\n"
              "while True:\n"
              "    try:\n"
              "        pid = os.fork()\n"
              "    except OSError:\n"
              "        time.sleep(0.01); continue\n"
              "    if pid:\n"
              "        os._exit(0)\n"  # the parent leaves; the child forks on, under a new pid
              "    os.setsid() if os.getsid(0) != os.getpid() else None\n")
    pre = f"import os\nfor g in {groups!r}:\n    open(os.path.join(g, 'cgroup.procs'), 'w').write(str(os.getpid()))\n"
    p = subprocess.Popen([sys.executable, "-c", pre + script])
    p.wait(timeout=30)
    assert kernelutil.wait_for(lambda: cgroupfs.procs(groups[0]) != [], timeout=10)
    assert supervisor.kill(groups)
    assert not any(os.path.exists(g) for g in groups)


@needs_v2
def test_sweep_leaves_groups_it_cannot_see_into(tree, tmp_path):
    """From another PID namespace a group's processes are invisible (cgroup.procs shows 0):
    not ours to judge, even when the name's supervisor pid means nothing there."""
    kernels = tree.mk("kernels")
    sup = Kernelless([], tmp_path, stay=True)
    try:
        (group,) = _named([kernels], sup.proc.pid)
        with open(os.path.join(group, "cgroup.procs"), "w") as fh:
            fh.write(str(sup.proc.pid))
        code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                f"from sandbox_kernel import supervisor; print(supervisor.sweep([{kernels!r}]))")
        p = subprocess.run(["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", code],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "[]"
        assert _alive(sup.proc.pid) and all(_alive(x) for x in sup.detached)
    finally:
        sup.stop()


def test_sweep_leaves_other_names_alone(tmp_path):
    """Groups of another naming (an older sandbox-kernel, another tool) are removed only when
    empty; their processes are never killed."""
    parent = "/sys/fs/cgroup/pids" if os.path.isdir("/sys/fs/cgroup/pids") else None
    if parent is None:
        pytest.skip("needs the v1 pids hierarchy")
    g = os.path.join(parent, f"{cgroupfs.PREFIX}legacy{os.urandom(3).hex()}-1795424485")
    os.mkdir(g)
    p = subprocess.Popen(["sleep", "600"])
    try:
        with open(os.path.join(g, "cgroup.procs"), "w") as fh:
            fh.write(str(p.pid))
        assert g not in supervisor.sweep([parent])
        assert _alive(p.pid)
    finally:
        p.kill()
        p.wait()
    assert kernelutil.wait_for(lambda: cgroupfs.procs(g) == [], timeout=10)
    assert g in supervisor.sweep([parent])


@pytest.mark.kernel
def test_detached_processes_die_at_the_next_start(who, tmp_path):
    """No survivors without a PID namespace: what a cell detached from a kernel whose supervisor
    was killed outright (shutdown now=True kills the process group) is killed when the next
    kernel starts (sweep). As root on this host's groups; as an ordinary user in a delegated
    v2 group. (With a PID namespace, test_no_survivors covers it: nothing outlives the kernel.)"""
    if who is None:
        kw = {}
        t = None
    else:
        if V2 is None:
            pytest.skip("no cgroup v2 hierarchy to delegate")
        t = V2Tree()
        own = t.mk("process_api/abc", owner=who)
        kw = {"prefix": t.prefix(t.bystander(own, who))}
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)
    profile = "cg-best-nopidns"
    if who is not None:  # no PID (so no user) namespace: RLIMIT_NPROC counts the uid's tasks on the host
        profile = "cg-best-nopidns-uid"
        kernelutil.write_profile(profile, "extends: cg-best-nopidns\nlimits:\n  processes: "
                                          f"{64 + kernelutil.uid_tasks(who.pw_uid)}\n")
    try:
        k = kernelutil.Kernel(profile, cwd=cwd, user=who.pw_name if who else None, **kw)
        try:
            r = k.ok("""
                import subprocess, os, json
                p = subprocess.Popen(['sleep', '600'], start_new_session=True)
                print(json.dumps([p.pid, os.environ['SANDBOX_KERNEL_LAYERS']]))
                """)
            pid, layers = json.loads(r.stdout)
            assert json.loads(layers)["cgroup"]["groups"], layers
        finally:
            k.shutdown()
        assert _alive(pid)  # it outlived its kernel (no PID namespace, supervisor killed)
        k2 = kernelutil.Kernel(profile, cwd=cwd, user=who.pw_name if who else None, **kw)
        try:
            assert kernelutil.wait_for(lambda: not _alive(pid), timeout=10)
        finally:
            k2.shutdown()
    finally:
        if t is not None:
            t.cleanup()


# --------------------------------------------------------------------------- units


def test_group_names_round_trip():
    name = cgroupfs.group_name("a1b2-c3d4-e5", os.getpid())
    assert cgroupfs.parse_group_name(name) == ("a1b2-c3d4-e5", os.getpid(), cgroupfs.start_time(os.getpid()))
    assert cgroupfs.parse_group_name(cgroupfs.group_name("../x y", 1))[0] == ".._x_y"
    for other in ("sandbox-kernel-56dd6e6e805a-1795424485", "sandbox-kernel.leaf", "sandbox-kernel--1-2",
                  "sandbox-kernel-a-١-2", "other-a-1-2"):
        assert cgroupfs.parse_group_name(other) is None, other


def test_cgroupfs_is_recognised_by_its_magic(tmp_path):
    assert not cgroupfs.is_cgroupfs(str(tmp_path))
    assert not cgroupfs.is_cgroupfs("/sys/fs/cgroup") or cgroupfs.unified()
    if V2:
        assert cgroupfs.is_cgroupfs(V2)


def test_named_parent_from_the_system_file(tmp_path, monkeypatch):
    f = tmp_path / "cgroup-parent"
    monkeypatch.setattr(cgroupfs, "PARENT_FILE", str(f))
    assert cgroupfs.named_parent({}) is None
    f.write_text("# where kernels go\n\n/jupyter.slice/kernels.scope\n")
    assert cgroupfs.named_parent({}) == ("/jupyter.slice/kernels.scope", str(f))
    assert cgroupfs.named_parent({cgroupfs.PARENT_ENV: "/other"}) == ("/other", cgroupfs.PARENT_ENV)
    f.write_text("kernels.scope\n")
    with pytest.raises(SandboxError, match=rf"{f}='kernels.scope': the cgroup parent must be an absolute"):
        cgroupfs.named_parent({})


@pytest.mark.kernel
@needs_v1_pids
def test_v1_one_hierarchy_refused_undoes_the_others():
    """Root, required: the pids group is made and joined, the memory hierarchy refuses: the
    launcher leaves and removes the pids group again and refuses to start (it is not killed
    with its own group)."""
    before = set(os.listdir("/sys/fs/cgroup/pids"))
    ro_memory = "mount -o remount,bind,ro /sys/fs/cgroup/memory && exec \"$@\""
    p = launch(["unshare", "-m", "--propagation", "private", "sh", "-c", ro_memory, "sh"], "free")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "sandbox layer 'cgroup' is required" in p.stderr and "Read-only file system" in p.stderr, p.stderr
    left = {n for n in set(os.listdir("/sys/fs/cgroup/pids")) - before if n.startswith(cgroupfs.PREFIX)}
    assert not left, left
