"""Whether the directory holding a kernel's connection file is private to it.

A connection file holds the kernel's HMAC key: a directory another kernel or account can write
(or read) lets it read the key, replace the file or plant one that a later start reads. The
launcher asks first (``check_connection_dir``, outside any namespace), the mount_namespace layer
again inside the kernel's user namespace; ``connection_dirs`` names the directories of
connection files that the kernel's view hides but its own (mount_namespace, landlock).
"""

from __future__ import annotations

import os

from ..paths import real_writable, within


def connection_dirs(ctx, policy) -> list[str]:
    """Directories holding kernels' connection files (Jupyter's runtime directory, and the one
    this kernel's file is in) that the kernel may see only its own file of: each, unless it is
    a directory the tenant writes anyway (or holds one), where nothing can be hidden."""
    candidates = [ctx.runtime_dir] + ([os.path.dirname(ctx.connection.path)] if ctx.connection else [])
    writable = real_writable(policy, ctx)
    out = []
    for d in dict.fromkeys(os.path.realpath(c) for c in candidates):
        if d == "/" or any(within(w, d) for w in writable + ["/tmp", "/dev/shm"]):
            continue
        out.append(d)
    return out


def connection_dir_problem(ctx, policy, private_tmp: bool, ownership: bool = True) -> str | None:
    """Why the directory holding this kernel's connection file is not private to it (another
    kernel or account could read the HMAC key there, or replace the file or plant one that a
    later start reads), or None. Private: owned by this account or root and writable by no one
    else (a sticky directory such as /tmp: no one else can replace this account's files), no
    ancestor that others may rename it in, and not at or inside a directory the profile makes
    writable, except under the host's /tmp or /dev/shm when the kernel gets its own
    (`private_tmp`: the mount namespace covers them) and Jupyter's runtime directory inside one
    (the mount namespace covers it, or Landlock leaves it out, in every kernel that Jupyter
    server starts). Without `ownership`, owners and modes are not looked at (asked again
    inside the kernel's user namespace, where root's files belong to the overflow uid)."""
    if ctx.connection is None:
        return None
    d = os.path.realpath(os.path.dirname(ctx.connection.path))
    try:
        st = os.stat(d)
    except OSError as e:
        return f"cannot stat its directory {d} ({e.strerror})"
    me = os.geteuid()
    if not ownership:
        st = None
    if st is not None and st.st_uid not in (0, me):
        return (f"its directory {d} belongs to uid {st.st_uid}, who can replace the file or plant one that a "
                f"later start reads")
    if st is not None and st.st_mode & 0o022 and not st.st_mode & 0o1000:
        by = "its group" if st.st_mode & 0o020 else "everyone"
        return (f"its directory {d} (mode {st.st_mode & 0o7777:o}) is writable by {by}: another account can "
                f"replace the file or plant one that a later start reads")
    a = os.path.dirname(d)
    while st is not None:
        try:
            sa = os.stat(a)
        except OSError:
            break
        if sa.st_uid not in (0, me) or (sa.st_mode & 0o002 and not sa.st_mode & 0o1000):
            return (f"its directory {d} lies in {a} (uid {sa.st_uid}, mode {sa.st_mode & 0o7777:o}), where "
                    f"another account can rename it away and put its own in its place")
        if a == "/":
            break
        a = os.path.dirname(a)
    shared = [t for t in ("/tmp", "/dev/shm") if within(d, t)]
    if shared and not private_tmp:
        return (f"its directory {d} is under {shared[0]}, which without a mount namespace this kernel shares "
                f"with the host and the account's other kernels: they could read its key or plant a file")
    writable = real_writable(policy, ctx)
    if private_tmp:  # {tmp} and /dev/shm are then the kernel's own tmpfs, not the host's (but a home or
        # working directory under the host's /tmp is the host's, brought back into that tmpfs)
        own = {"/tmp", "/dev/shm", os.path.realpath(ctx.tmp)}
        writable = [w for w in writable if w not in own]
    roots = [w for w in dict.fromkeys(writable) if within(d, w)]
    if not roots:
        return None
    w = max(roots, key=len)
    if d != w and d == os.path.realpath(ctx.runtime_dir) and d in connection_dirs(ctx, policy):
        return None
    where = "is" if d == w else f"lies inside {w}, which is"
    return (f"its directory {d} {where} writable by the tenant (filesystem.writable): a kernel that writes "
            f"there could read this kernel's key or plant a connection file that a later start reads")


CONNECTION_DIR_FIX = ("Keep connection files in Jupyter's runtime directory (the default; JUPYTER_RUNTIME_DIR) or "
                      "another directory that only this account can write and the profile does not make writable")


def check_connection_dir(ctx, policy, private_tmp: bool, ownership: bool = True) -> None:
    """The directory holding the connection file is private to this kernel, or start-up stops
    here (see connection_dir_problem). The mount_namespace layer asks again with
    `private_tmp` False where it could not give the kernel its own /tmp (owners and modes were
    checked by the launcher, outside any user namespace)."""
    why = connection_dir_problem(ctx, policy, private_tmp, ownership)
    if why:
        from ..errors import SandboxError

        e = SandboxError(f"connection file {ctx.connection.path}: {why}; refusing to start. {CONNECTION_DIR_FIX}")
        e.no_refusal_kernel = True  # its key may be known where the tenant writes: nothing is served on its ports
        raise e
