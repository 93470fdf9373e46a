"""Environment: what the kernel and its children are told.

Enforcement: soft (user code can change its own environment; the hard layers do
not depend on it). It carries the resolved policy to the kernel and to every child
interpreter (``SANDBOX_KERNEL_POLICY``, read by the guard hook in site-packages),
points TMPDIR at a granted directory, puts this environment's interpreter first on
PATH (so ``!python`` and ``!pip`` are the guarded ones), and sets the accelerator
variables so that frameworks see exactly the devices the profile allows (and use
them: ``JAX_PLATFORMS=cpu`` only where no GPU or TPU is granted).

Where the kernel installs a second seccomp stage after its start (``network.mode: none``
over TCP, see layers/seccomp.py), the kernel's interpreter must not run or import
anything from a place the tenant may write before that stage is in force. What the
interpreter would take from the environment at its start is therefore *deferred*
(``DEFERRED``): the launcher saves the values in ``SANDBOX_KERNEL_DEFERRED_ENV``, unsets
``PYTHONPATH`` and ``PYTHONPYCACHEPREFIX`` and sets ``PYTHONNOUSERSITE=1`` (no user site,
so no module, ``.pth`` or ``usercustomize`` of ``~/.local``); the kernel, once its final
filter is in force, puts them back (``restore_deferred``): its environment (so children see
the original values), ``sys.path`` and ``sys.pycache_prefix``, the user site with its
``.pth`` files, then ``sitecustomize`` (if none was imported at start) and
``usercustomize``, as ``site`` would have. docs/architecture.md ("The kernel's own start")
lists every file.

``PYTHONNOUSERSITE`` in the launcher's own environment belongs to the Jupyter server (which
must not run the tenant's user site: docs/deploy-jupyterhub.md): sandboxed processes do not
inherit it, so ``pip install --user`` keeps working in kernels, where the user site is added
only under the final filter.
"""

from __future__ import annotations

import os
import sys

from .. import standins
from ..childguard import POLICY_ENV
from .. import accelerators

NAME = "environment"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = False  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = False  # the profile's enforcement.environment can make it best-effort or off
CHECKED_BY_KERNEL = False  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = None
DESCRIPTION = "the policy for child interpreters, TMPDIR, PATH, accelerator variables"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = None
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = "the policy for child interpreters, TMPDIR, PATH, accelerator variables."
NEEDS = ()  # the earlier layers whose results apply() reads (given[NAME])
# RESULT (below): the class of what apply() returns for later layers
DEFER_ENV = "SANDBOX_KERNEL_DEFERRED_ENV"
# What the interpreter reads at its start that can make it run or read code from a place
# the tenant may write: held back until the kernel's final filter (restore_deferred).
DEFERRED = ("PYTHONPATH", "PYTHONPYCACHEPREFIX")


def stage_two_pending(policy, ctx) -> bool:
    """Whether the kernel will tighten seccomp after its start (what layers/seccomp.apply decides)."""
    from . import seccomp

    if policy.enforcement("seccomp") == "off":
        return False
    return seccomp.needs_stage_two(policy, seccomp.stage_one_mode(policy, ctx))


def variables(policy, ctx) -> dict[str, str | None]:
    """What to set in the kernel's environment (None: remove the variable). TMPDIR is reported
    here as this layer sees it (``ctx.tmp``); it is written once, after every layer
    (``launcher.apply_layers``), since the mount namespace may still make /tmp private."""
    env = {POLICY_ENV: policy.to_json(), "TMPDIR": ctx.tmp}
    if policy.network["mode"] != "full" or policy.network.get("listen_ports") != "any":
        # debugpy cannot work without TCP servers: no warnings about it
        env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    if ctx.kernel_id:
        env["SANDBOX_KERNEL_ID"] = ctx.kernel_id
    bindir = os.path.dirname(sys.executable)
    path = ctx.env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join([bindir] + [p for p in path if p and p != bindir])
    if policy.network["mode"] == "restricted" and not policy.network["udp"]:
        env["RES_OPTIONS"] = (ctx.env.get("RES_OPTIONS", "") + " use-vc").strip()  # DNS over TCP
    env.update(accelerators.environment(policy, ctx.env))
    if "PYTHONNOUSERSITE" in ctx.env:
        env["PYTHONNOUSERSITE"] = None  # the server's setting, not the sandbox's (module docstring)
    if stage_two_pending(policy, ctx):
        env[DEFER_ENV] = standins.json_dumps({k: ctx.env.get(k) for k in DEFERRED}, sort_keys=True)
        env.update(PYTHONPATH=None, PYTHONPYCACHEPREFIX=None, PYTHONNOUSERSITE="1")
    return env


def _venv_disables_user_site() -> bool:
    """What site.venv() decides: a pyvenv.cfg without include-system-site-packages = true."""
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    for cfg in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(os.path.dirname(exe_dir), "pyvenv.cfg")):
        if os.path.isfile(cfg):
            system_site = "true"
            with open(cfg, encoding="utf-8") as fh:
                for line in fh:
                    key, sep, value = line.partition("=")
                    if sep and key.strip().lower() == "include-system-site-packages":
                        system_site = value.strip().lower()
            return system_site != "true"
    return False


def _no_user_site_option() -> bool:
    """Whether the interpreter was started with -s (or -I), read from its own command line."""
    if sys.flags.isolated:
        return True
    args = list(getattr(sys, "orig_argv", [])[1:])
    while args:
        arg = args.pop(0)
        if not arg.startswith("-") or arg == "-" or arg.startswith("--"):
            return False
        for i, letter in enumerate(arg[1:], 1):
            if letter == "s":
                return True
            if letter in "cm":  # what follows is the program
                return False
            if letter in "WX":  # takes an argument: the rest of this word, or the next word
                if i == len(arg) - 1 and args:
                    args.pop(0)
                break
    return False


def _user_site_index() -> int:
    """Where site puts the user site: before the base installation's site-packages (in a venv
    with system site packages, after the venv's own), else before the first site-packages."""
    import site

    base = set(site.getsitepackages([sys.base_prefix]))
    for i, p in enumerate(sys.path):
        if p in base:
            return i
    return next((i for i, p in enumerate(sys.path) if p.endswith(("site-packages", "dist-packages"))), len(sys.path))


def restore_deferred(environ=None) -> list[str]:
    """In the kernel, once its final filter is in force: what the launcher held back, put
    back as the interpreter and ``site`` would have applied it at start. Returns what it did."""
    import site

    environ = os.environ if environ is None else environ
    raw = environ.pop(DEFER_ENV, None)
    if raw is None:
        return []
    saved = standins.json_loads(raw)
    if not isinstance(saved, dict):
        return []
    done = []
    for name in DEFERRED:
        value = saved.get(name)
        if isinstance(value, str):
            environ[name] = value
        else:
            environ.pop(name, None)
    environ.pop("PYTHONNOUSERSITE", None)  # the launcher's, set only to defer the user site
    if sys.flags.ignore_environment:
        return done
    path = saved.get("PYTHONPATH")
    if isinstance(path, str) and path:
        entries = [os.path.abspath(p) for p in path.split(os.pathsep) if p]
        sys.path[0:0] = [p for p in dict.fromkeys(entries) if p not in sys.path]
        done.append("PYTHONPATH")
    prefix = saved.get("PYTHONPYCACHEPREFIX")
    if isinstance(prefix, str) and prefix:
        sys.pycache_prefix = os.path.abspath(prefix)
        done.append("PYTHONPYCACHEPREFIX")
    user_site = (not _no_user_site_option() and not _venv_disables_user_site()
                 and os.getuid() == os.geteuid() and os.getgid() == os.getegid())
    if user_site:
        site.ENABLE_USER_SITE = True
        where = site.getusersitepackages()
        if os.path.isdir(where):
            before = set(sys.path)
            site.addsitedir(where)  # runs its .pth files
            added = [p for p in sys.path if p not in before]
            for p in added:
                sys.path.remove(p)
            at = _user_site_index()
            sys.path[at:at] = added
            done.append("user site")
    if "sitecustomize" not in sys.modules:
        site.execsitecustomize()
    if user_site:
        site.execusercustomize()
    return done


class Judged:
    """What this layer hands on (to landlock): the GPU tool verdicts (accelerators.tool_verdicts),
    judged while file owners are seen as they are: inside the user namespace of an ordinary user
    (mount_namespace layer) root's files show as nobody's."""

    def __init__(self, gpu_tools: list):
        self.gpu_tools = gpu_tools


RESULT = Judged


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> Judged:
    env = variables(policy, ctx)
    for k, v in env.items():
        if k == "TMPDIR":
            continue  # (written after every layer, from ctx.tmp: see variables)
        if v is None:
            ctx.env.pop(k, None)
        else:
            ctx.env[k] = v
    judged = Judged(accelerators.tool_verdicts(policy, ctx))  # now: see Judged
    shown = {k: v for k, v in env.items() if k not in (POLICY_ENV, DEFER_ENV)}
    ctx.handoff["gpu_tools"] = [list(t) for t in judged.gpu_tools]  # for the kernel (layers/handoff.py)
    status.active(NAME, ", ".join(f"{k}={v!r}" if v is not None else f"{k} unset" for k, v in sorted(shown.items())))
    return judged
