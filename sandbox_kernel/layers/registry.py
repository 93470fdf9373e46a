"""The one registry of layers: every other list of layers is derived from it.

``LAYERS`` is the ordered list of layer modules the launcher applies; ``IN_KERNEL`` the layers
the launcher does not apply (the import guard, which the kernel arms). Each layer module declares
its own facts once:

- ``NAME``: its name in profiles (``enforcement.<NAME>``), reports and the audit trail;
- ``HARD``: enforced by the OS kernel, inherited by children, not removable from user code
  (True), or an in-process hook (False: soft);
- ``CONFIGURABLE``: the profile's ``enforcement`` names it (required, best-effort, off);
- ``CHECKED_BY_KERNEL``: the kernel refuses to run, unless the profile turns it off, without the
  launcher's report of it (kernel._check_os_layers);
- ``HINT``: what makes it available, for doctor where its refusal does not say (or None);
- ``DESCRIPTION``: one line;
- ``DEFAULT``: its ``enforcement`` level where a profile names none (None where not configurable);
- ``README``: what README.md's list of layers says of it;
- ``NEEDS``: the names of the earlier layers whose results its ``apply`` reads;
- ``RESULT``: the class of what its ``apply`` returns for later layers, or None.

The protocol of a layer in ``LAYERS`` (a module, not a typing.Protocol: the launcher imports
neither typing nor dataclasses; tests/layers/test_layer_registry.py checks every layer meets it):

- ``prepare(policy, ctx) -> None``: what must happen before any layer narrows the process
  (seccomp loads libseccomp; pid_namespace takes subordinate ids); most do nothing. The launcher
  calls every layer's ``prepare``, in order, before the first ``apply``.
- ``apply(policy, ctx, status, given) -> RESULT | None``: enforce the layer's rules and report in
  ``status`` (active, partial, off, unavailable, not needed), or raise ``LayerUnavailable`` (fail
  closed, see layers.status). ``given`` holds, by name, the results of the layers in ``NEEDS``
  and nothing else: what a layer hands on is its return value, not a field of ``ctx``. The
  order below must put every layer after the layers it needs (tested).
- ``plan(policy, host)``, where a layer's decisions can be computed without privileges: pure
  (it reads, never changes, the process), so a test can check it as any user; ``apply`` carries
  the plan out.

Derived here: ``HARDNESS`` (status reports, ``profiles show``), ``CHECKED_BY_KERNEL`` (the
kernel), ``HINTS`` (doctor), ``CONFIGURABLE`` and ``NAMES`` (the red-team layer names). Written
from it by ``python -m sandbox_kernel.layer_doc --write``: profiles/schema.json's ``enforcement``
keys and README.md's list of layers. tests/layers/test_layer_registry.py checks those files are
current, and checks the lists that are prose (docs/architecture.md, the launcher's docstring).

Importing this module imports every layer module: the launcher does anyway.
"""

from __future__ import annotations

from . import (capabilities, cgroup, environment, import_guard, landlock, mount_namespace, no_new_privs,
               pid_namespace, rlimits, seccomp, trusted_start)

# The order matters: the launch files are checked and protected first; the environment is
# computed next (TMPDIR, accelerators); the cgroup is joined while /sys is still writable,
# and before the supervisor forks (so every process of the kernel is inside the group); the
# PID namespace (with the IPC, mount and the kernel's own user namespace) is entered and the
# supervisor chain forked; rlimits come after that user namespace exists, so that Linux counts
# RLIMIT_NPROC, RLIMIT_MSGQUEUE, RLIMIT_SIGPENDING and inotify per kernel rather than per uid
# (set before, they bound every kernel of the uid together, and the launcher's own forks),
# and while CAP_SYS_RESOURCE is held in it; the mount namespace's private view needs
# CAP_SYS_ADMIN in that namespace and must precede Landlock, which forbids mounting;
# no_new_privs precedes the capability drop, Landlock and seccomp (which need it as an
# ordinary user); Landlock precedes seccomp, whose filter is the last word.
LAYERS = [trusted_start, environment, cgroup, pid_namespace, rlimits, mount_namespace, no_new_privs, capabilities,
          landlock, seccomp]
# Not applied by the launcher: the kernel arms the import guard (and sandbox_kernel_guard.pth
# in every child interpreter); the launcher only checks its hook is installed.
IN_KERNEL = [import_guard]
ALL = LAYERS + IN_KERNEL

NAMES = [m.NAME for m in ALL]
HARDNESS = {m.NAME: "hard" if m.HARD else "soft" for m in ALL}
CONFIGURABLE = [m.NAME for m in ALL if m.CONFIGURABLE]
CHECKED_BY_KERNEL = [m.NAME for m in ALL if m.CHECKED_BY_KERNEL]
HINTS = {m.NAME: m.HINT for m in ALL if m.HINT}


def by_name(name: str):
    """The layer module called `name` (KeyError if none)."""
    for m in ALL:
        if m.NAME == name:
            return m
    raise KeyError(name)
