"""Landlock: truncate is granted only on trees the mount view makes read-only throughout
(sandbox_kernel.layers.landlock.wholly_read_only), read from /proc/self/mountinfo. No kernel
is started: the red-team attempts (tests/redteam/test_host_files.py: O_TRUNC, truncate() of
host files) check the effect through real kernels."""

import os
import random

import pytest

from sandbox_kernel.layers import landlock as L

# (mount point, root within its filesystem, device, read-only)
TABLE = [
    ("/", "/", "8:1", True),
    ("/proc", "/", "0:21", False),
    ("/home/alice/nb", "/home/alice/nb", "8:1", False),  # the notebook dir, a writable bind
    ("/opt/env", "/opt/env", "8:1", True),
    ("/srv/scratch", "/var/scratch", "8:1", False),  # a writable bind of another directory
    ("/mnt/data", "/", "8:2", True),
    ("/mnt/data", "/", "8:2", False),  # mounted again over the first: the later one counts
]


def test_read_only_tree_without_writable_mounts_below():
    assert L.wholly_read_only("/usr", TABLE)
    assert L.wholly_read_only("/usr/lib/python3", TABLE)
    assert L.wholly_read_only("/opt/env", TABLE)  # its own read-only mount
    assert L.wholly_read_only("/var/lib", TABLE)  # /var/scratch is shown writable elsewhere, /var/lib is not


def test_a_writable_mount_below_or_over_it_refuses():
    assert not L.wholly_read_only("/", TABLE)  # /proc and the notebook dir below
    assert not L.wholly_read_only("/home", TABLE)
    assert not L.wholly_read_only("/home/alice/nb", TABLE)
    assert not L.wholly_read_only("/proc/sys", TABLE)
    assert not L.wholly_read_only("/mnt/data/x", TABLE)


def test_a_directory_shown_writable_elsewhere_refuses():
    """/var/scratch is read-only at its own path, but the same directory (same device) is
    mounted writable at /srv/scratch: a grant on its inode would apply there too."""
    assert not L.wholly_read_only("/var/scratch", TABLE)
    assert not L.wholly_read_only("/var/scratch/sub", TABLE)
    # its parent is not reachable through that mount (a walk up from /srv/scratch leaves the
    # mount at its root and goes on at /srv): still wholly read-only
    assert L.wholly_read_only("/var", TABLE)
    table = [("/", "/", "8:1", True), ("/srv", "/", "8:1", False)]  # the whole filesystem writable at /srv
    assert not L.wholly_read_only("/usr", table)


def test_mountinfo_is_parsed(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / ro,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "23 22 0:21 / /proc rw,nosuid - proc proc rw\n"
        "24 22 8:1 /home/a\\040b /home/a\\040b rw,relatime master:1 - ext4 /dev/sda1 rw\n"
        "25 22 8:3 / /mnt/ro rw - ext4 /dev/sdc1 ro\n")
    table = L.mounts(str(info))
    assert table == [("/", "/", "8:1", True), ("/proc", "/", "0:21", False),
                     ("/home/a b", "/home/a b", "8:1", False), ("/mnt/ro", "/", "8:3", True)]
    assert L.wholly_read_only("/usr", table) and L.wholly_read_only("/mnt/ro/x", table)
    assert not L.wholly_read_only("/home", table)


def test_this_process_sees_its_own_mounts():
    table = L.mounts()
    assert any(mp == "/" for mp, *_ in table)


def _status(tmp_path, eff, prm, amb, bnd, nnp):
    p = tmp_path / "status"
    p.write_text(f"Name:\tpython\nCapInh:\t0000000000000000\nCapPrm:\t{prm:016x}\nCapEff:\t{eff:016x}\n"
                 f"CapBnd:\t{bnd:016x}\nCapAmb:\t{amb:016x}\nNoNewPrivs:\t{nnp}\n")
    return str(p)


def test_no_truncate_grant_where_cap_sys_admin_could_make_a_mount_writable(tmp_path):
    """mount_setattr(2) reaches no LSM hook: a process with CAP_SYS_ADMIN, or able to gain it by
    exec, could clear a mount's read-only flag under the ruleset. Then no truncate is granted."""
    admin, other = 1 << 21, 1 << 0
    assert L._can_gain_sys_admin(_status(tmp_path, admin, admin, 0, admin, 1))  # holds it (kept capability)
    assert L._can_gain_sys_admin(_status(tmp_path, 0, 0, admin, admin, 1))  # ambient
    assert L._can_gain_sys_admin(_status(tmp_path, 0, 0, 0, admin, 0))  # a set-uid exec could give it
    assert not L._can_gain_sys_admin(_status(tmp_path, 0, 0, 0, admin, 1))  # no_new_privs
    assert not L._can_gain_sys_admin(_status(tmp_path, other, other, 0, other, 0))  # not in the bounding set
    assert L._can_gain_sys_admin(str(tmp_path / "missing"))


def _scan_every_mount(path, table):
    """wholly_read_only as first written (every mount scanned per path): the oracle of ReadOnlyIndex."""
    from sandbox_kernel.paths import within

    best = None
    for mp, root, dev, ro in table:
        if within(path, mp) and (best is None or len(mp) >= len(best[0])):
            best = (mp, root, dev, ro)
    if best is None or not best[3]:
        return False
    mp, root, dev, _ro = best
    fs_path = os.path.normpath(os.path.join(root, os.path.relpath(path, mp)) if path != mp else root)
    for mp2, root2, dev2, ro2 in table:
        if ro2:
            continue
        if within(mp2, path) or (dev2 == dev and within(fs_path, root2)):
            return False
    return True


def test_the_index_answers_as_a_scan_of_every_mount():
    """Generated tables (repeated mount points, binds of subdirectories, several devices, a table
    without /) and every path of a small tree: the same answers."""
    rng = random.Random(7)
    points = ["/", "/usr", "/usr/lib", "/home", "/home/a", "/home/a/nb", "/proc", "/proc/sys", "/srv",
              "/srv/x", "/var", "/var/scratch", "/mnt/data", "/tmp"]
    paths = points + ["/usr/lib/python3", "/home/ab", "/home/a/nb/sub", "/var/lib", "/opt", "/mnt/data/x/y"]
    for _ in range(3000):
        table = [(rng.choice(points), rng.choice(points), rng.choice(["8:1", "8:2", "0:21"]), rng.random() < 0.7)
                 for _ in range(rng.randint(0, 9))]
        index = L.ReadOnlyIndex(table)
        for path in paths:
            assert index(path) == _scan_every_mount(path, table), (path, table)
    assert index("/usr") == L.wholly_read_only("/usr", table)


def _grant_except_with_lstat(plan, root, rights, excluded):
    """grant_except as first written (listdir, then lstat per entry): the oracle of the scandir walk."""
    import stat

    from sandbox_kernel.paths import within

    inside = [e for e in excluded if within(e, root)]
    if not inside:
        plan.grant(root, rights)
        return
    if root in inside:
        return
    if "read_dir" in rights:
        plan.grant(root, {"read_dir"})
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return
    for name in entries:
        child = os.path.join(root, name)
        try:
            st = os.lstat(child)
        except OSError:
            continue
        if not stat.S_ISLNK(st.st_mode):
            _grant_except_with_lstat(plan, child, rights, inside)


def test_grant_except_walks_as_the_lstat_walk_did(tmp_path):
    """Directories holding an excluded path are granted entry by entry, symbolic links skipped
    (to a file, a directory, nowhere), an unreadable directory granted nothing below it."""
    for d in ("a/b/c", "a/b/d", "a/e", "f", "locked/x"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("a/b/c/secret", "a/b/c/ok", "a/b/file", "a/file", "top"):
        (tmp_path / f).write_text("x")
    os.symlink(tmp_path / "a/b/c/secret", tmp_path / "a/b/link-to-secret")
    os.symlink(tmp_path / "f", tmp_path / "a/link-to-dir")
    os.symlink("/nonexistent", tmp_path / "a/b/dangling")
    os.chmod(tmp_path / "locked", 0)
    try:
        for excluded in ([tmp_path / "a/b/c/secret"], [tmp_path / "a/b/c/secret", tmp_path / "a/e"],
                         [tmp_path / "a"], [tmp_path / "locked/x"], [tmp_path], []):
            ex = [str(e) for e in excluded]
            new, old = L.Plan(), L.Plan()
            L.grant_except(new, str(tmp_path), {"read_file", "read_dir"}, ex)
            _grant_except_with_lstat(old, str(tmp_path), {"read_file", "read_dir"}, ex)
            assert new.paths == old.paths, ex
    finally:
        os.chmod(tmp_path / "locked", 0o755)


@pytest.mark.serial  # without a mount view the plan grants /tmp's entries one by one: other workers' come and go
@pytest.mark.parametrize("name", ["free", "default", "offline", "research"])
def test_remembering_realpaths_changes_no_plan(name, monkeypatch):
    """landlock.plan resolves each path once (paths.remembered_realpaths): the same grants as
    resolving every time."""
    import contextlib

    from sandbox_kernel import policy
    from sandbox_kernel.layers.context import LaunchContext

    p, ctx = policy.effective(name, dict(os.environ)), LaunchContext(dict(os.environ))
    remembered = L.plan(p, ctx)
    monkeypatch.setattr(L, "remembered_realpaths", contextlib.nullcontext)
    plain = L.plan(p, ctx)
    assert remembered.paths == plain.paths and remembered.notes == plain.notes
