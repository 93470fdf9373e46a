"""`sandbox-kernel doctor` and `%sandbox`: what this machine can enforce and what is in force.

Both print the same report (``render``): the machine's facilities, the layers in
force in this process (hard or soft), the accelerator nodes present with the
profile's verdict on each, and every rule of the policy marked hard or soft.

``doctor`` then tells, for this host, which profiles would start (every profile on the
search path: the platform's own in ``SANDBOX_KERNEL_PROFILE_PATH`` and
``/etc/sandbox-kernel/profiles`` as well as the shipped ones; or the one named with
``--profile``) and, for each that would not, which layer refuses and the fix. It exits 1
when one of them would not start (``EXIT_REFUSED``), so a health check need not parse
its output. It does not guess: it runs the launcher itself on a harmless command
(``python -c ...`` with this environment's interpreter, which every profile's
``exec.allow`` includes, ``offline`` too) in a subprocess, exactly as a kernelspec
starts it, so every layer is applied for real, and reports the launcher's verdict. It
works before ``sandbox-kernel install`` (no kernelspec is needed; an installed one's
validated-policy cache is used where there is one). From inside a sandbox it does not
try (a sandbox cannot start another one there): it says so.

It also names every installed sandbox kernelspec that is orphaned (its profile no longer
exists on its search path or no longer validates, or its launcher is gone:
``install.orphaned_kernelspecs``): Jupyter still offers it and its kernel can only refuse to
start; that too is exit status 1 when the profiles are tried.

It also names a stale scan of packages' program trees (``program_trees_check``): ``install``
stores in each kernelspec's policy cache the bin directories below the library directories
(``/usr/lib/jvm/*/bin``, ``/opt/*/bin``; ``layers.program_trees``), which the mount namespace
mounts noexec where ``exec.allow`` does not name them; one installed since is not, until
``sandbox-kernel install`` runs again. doctor rescans and says which appeared (a warning: the
exit status stays that of the profiles and kernelspecs).

It also checks the Jupyter server's side (``server_check``): the server runs outside every
sandbox, as the tenant's uid, and starts the kernels; a server whose Python runs the user
site (``~/.local/lib/pythonX.Y/site-packages``: its ``.pth`` files and ``usercustomize``,
which a tenant writes from a kernel) runs tenant code unconfined at its next start. doctor
runs in the server's environment, so it judges this interpreter, and the Jupyter server
above it where it finds one (a terminal of the server).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

from . import cgroupfs, report, resources
from .childguard import POLICY_ENV
from .errors import SandboxError
from .identity import is_root
from .layers import landlock, no_new_privs, seccomp
from .layers.handoff import HANDOFF_ENV, handoff_from_env
from .layers.registry import HINTS  # what makes each layer available, where its refusal does not say
from .layers.status import STATUS_ENV, Status
from .policy import Policy, effective
from .profile_files import list_profiles, profiles_in

EXIT_REFUSED = 1  # a profile tried would not start (or `--profile` is invalid); 0: every one starts
TRY_TIMEOUT = 120  # seconds one trial start may take (a loaded 2-core machine takes ~2 s)
CHILD = ("import os, sys; sys.stdout.write(os.environ.get(" + repr(STATUS_ENV) + ", ''))")
REFUSAL_RE = re.compile(r"sandbox layer '(?P<layer>[^']+)' is required by the profile but cannot be applied: "
                        r"(?P<why>.*?)\. The kernel will not start unconfined\.", re.S)


def _cgroup_line() -> str:
    root = is_root()
    try:
        hs = cgroupfs.hierarchies()
    except OSError:
        hs = []
    if cgroupfs.unified():
        h = hs[0] if hs else None
        where = (f"v2; this process is in {cgroupfs._own_paths().get('', '?')}; controllers at the root: "
                 + (" ".join(h.controllers) if h and h.controllers else "none"))
    else:
        have = sorted({c for h in hs for c in h.controllers})
        where = "v1/hybrid; " + ("v1 hierarchies for " + ", ".join(have) if have else "no pids/memory hierarchy")
    try:
        named = cgroupfs.named_parent()
    except SandboxError as e:
        named = None
        where += f"; {e}"
    if named:
        where += f"; kernels' groups go under {named[0]} ({named[1]})"
    return (f"cgroup: {where}; uid {os.getuid()}"
            + (" (root: RLIMIT_NPROC does not apply; the cgroup layer limits processes)" if root else ""))


def userns_available() -> str | None:
    """None where this uid can create a user namespace (tried in a child), else why not."""
    import ctypes

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: unshare, say how it went, _exit
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            os.write(w, b"" if libc.unshare(0x10000000) == 0 else os.strerror(ctypes.get_errno()).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        said = os.read(r, 200).decode(errors="replace")
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return said or None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def counters_facts(policy: Policy) -> dict:
    """Which per-kernel counters this host gives kernels of this uid, and how many kernels of
    one uid its per-uid limits hold at the profile's shares (see layers/rlimits.py)."""
    import resource

    from .layers.rlimits import USER_COUNTERS
    from .policy_facts import KEYS
    from .resolved import parse_size

    root = is_root()
    why = userns_available()
    hs = []
    try:
        hs = cgroupfs.hierarchies()
    except OSError:
        pass
    pids = any("pids" in h.controllers for h in hs)
    host = {
        "inotify_instances": (_read_int("/proc/sys/fs/inotify/max_user_instances"), "fs.inotify.max_user_instances"),
        "inotify_watches": (_read_int("/proc/sys/fs/inotify/max_user_watches"), "fs.inotify.max_user_watches"),
        "message_queues": (resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0], "RLIMIT_MSGQUEUE"),
        "pending_signals": (resource.getrlimit(resource.RLIMIT_SIGPENDING)[0], "RLIMIT_SIGPENDING"),
    }
    if not root:
        host["processes"] = (resource.getrlimit(resource.RLIMIT_NPROC)[0], "RLIMIT_NPROC")
    fits = {}
    for key, (limit, name) in host.items():
        share = policy.limits.get(key)
        if share is None or limit is None:
            continue
        share = parse_size(share) if KEYS[f"limits.{key}"]["size"] else int(share)
        unlimited = limit == resource.RLIM_INFINITY or limit >= 2**62
        fits[key] = {"host": None if unlimited else limit, "host_setting": name, "share": share,
                     "kernels": None if unlimited else limit // max(share, 1)}
    return {"uid": os.getuid(), "user_namespace": why is None, "user_namespace_error": why,
            "cgroup_pids": pids, "per_kernel": sorted(USER_COUNTERS) + ["message_queues", "pending_signals"]
            + ([] if root else ["processes"]) if why is None else [], "fits": fits}


def _counters_line(policy: Policy) -> str:
    if inside_sandbox():
        return "per-uid counters: see the pid_namespace and rlimits layers below (this process is a kernel's)"
    f = counters_facts(policy)
    root = f["uid"] == 0
    subordinate = policy.data.get("user_namespace", {}).get("host_uid", "same") == "subordinate"
    if f["user_namespace"]:
        head = ("user namespaces: yes, each kernel counts its own inotify instances and watches, message queue "
                "bytes, queued signals" + ("" if root and not subordinate else " and processes")
                + ("; with user_namespace.host_uid: subordinate each kernel's share counts toward a host uid of its "
                   "own, not uid %d's limits (see the host uid line)" % f["uid"] if subordinate else
                   "; its share also counts toward the host uid's limits"))
    else:
        head = (f"user namespaces: NO ({f['user_namespace_error']}): kernels of uid {f['uid']} share its inotify, "
                f"message queue, queued signal" + ("" if root else " and process") + " limits with each other and "
                "with the host's processes of that uid (rlimits reports partial)")
    procs = ("processes: cgroup pids.max per kernel" + ("" if f["cgroup_pids"] else " (NO pids controller here)")
             + (" (RLIMIT_NPROC does not bind root)" if root else ""))
    fits = "; ".join(
        f"{v['host_setting']}={v['host']}: {v['kernels']} kernel(s) of uid {f['uid']} at limits.{k}={v['share']}"
        for k, v in f["fits"].items() if v["host"] is not None)
    low = [f"{v['host_setting']}" for v in f["fits"].values() if v["kernels"] is not None and v["kernels"] < 8]
    return (f"per-uid counters: {head}; {procs}" + (f"; host limits: {fits}" if fits else "")
            + (f"; to run more kernels of one uid at their full share, raise {', '.join(low)} (fs.inotify.* with "
               f"sysctl; rlimits where Jupyter starts, e.g. LimitMSGQUEUE= in its systemd unit)" if low else "")
            + "; keyrings: per host uid (seccomp denies keyctl, add_key, request_key)")


def _mount_setattr_fact() -> dict:
    from .layers import mount_namespace

    why = mount_namespace.mount_setattr_support()
    return {"available": why is None, "error": why, "fallback": None if why is None else "bind remounts"}


def mount_setattr_line() -> str:
    """Whether the mount_namespace layer makes the kernel's / read-only with mount_setattr(2)
    or with its fallback, a bind remount of each mount (both hard; see layers/mount_namespace.py)."""
    from .layers import mount_namespace

    why = mount_namespace.mount_setattr_support()
    if why is None:
        return ("mount_setattr: yes (mount_namespace, hard: the kernel's / and every mount below it made read-only "
                "in one recursive call, all or nothing)")
    return (f"mount_setattr: NO ({why}): mount_namespace (hard) makes the kernel's / read-only by a bind remount "
            f"of each mount instead, keeping each mount's locked flags; where a remount fails the layer is "
            f"unavailable (best-effort) or refuses to start (required), and without the read-only view a root "
            f"tenant can change the mode, owner and times of host files outside the writable directories")


def _host_uid_line(policy: Policy) -> str:
    from .layers import subuid

    asked = policy.data.get("user_namespace", {}).get("host_uid", "same")
    if inside_sandbox():
        return f"host uid per kernel (user_namespace.host_uid: {asked}): see the pid_namespace layer below"
    home = os.path.expanduser("~")
    ok, why = subuid.host_support([p for p in dict.fromkeys([home, os.getcwd()]) if os.path.isdir(p)])
    return (f"host uid per kernel (user_namespace.host_uid: {asked}, hard): {why}"
            + ("; this profile's kernels would refuse to start" if asked == "subordinate" and not ok else ""))


def _audit_line(policy: Policy) -> str:
    from .audit_policy import kernel_audit_line

    if not policy.audit_log:
        return "audit trail: none (audit.log is not set)"
    return kernel_audit_line() + f"; trail {policy.audit_log}, counters {policy.data['audit']['metrics'] or policy.audit_log + '.prom'}"


def _kernel_audit_facts() -> dict:
    from .audit_policy import kernel_audit_facts

    return kernel_audit_facts()


def machine_lines(policy: Policy) -> list[str]:
    mode, filters = seccomp.process_seccomp_state()
    hook = resources.guard_hook_path()
    return [
        f"profile: {policy.label}",
        "from: " + ", ".join(policy.sources)
        + (f"; ceiling {policy.ceiling} from: " + ", ".join(policy.ceiling_sources) if policy.ceiling else ""),
        f"Landlock: {landlock.describe_abi()}",
        f"libseccomp: {seccomp.library_path() or 'not found'}",
        _cgroup_line(),
        mount_setattr_line(),
        _counters_line(policy),
        _host_uid_line(policy),
        f"guard hook: {hook} ({'present' if os.path.isfile(hook) else 'MISSING: run sandbox-kernel install'})",
        _audit_line(policy),
        f"this process: no_new_privs={'yes' if no_new_privs.is_set() else 'no'}, seccomp mode {mode} "
        f"({filters} filter{'s' if filters != 1 else ''})",
    ]


LAYERS_TITLE = "layers in force in this process:"
DEVICES_TITLE = "accelerator device nodes present:"
DEVICES_NOTE = "(nodes created after the kernel started, e.g. a lazily created /dev/nvidia-uvm, stay denied)"
RULES_TITLE = "rules (hard: enforced by the OS kernel; soft: in-process, removable by hostile code):"


def _no_devices(policy: Policy) -> str:
    return f"none found (GPU {policy.gpu['device_pattern']}, TPU {policy.tpu['device_pattern']})"


def render(policy: Policy, status: Status | None) -> str:
    """The report as plain text (`%sandbox` in a kernel; `doctor` prints it as tables)."""
    out = machine_lines(policy) + ["", LAYERS_TITLE]
    out += [f"  {name:13} {hard:4}  {state}" for name, state, hard, _ in report.layer_rows(status)]
    out += ["", DEVICES_TITLE]
    out += [f"  {node}: {state}" for node, state in report.device_rows(policy)] or [f"  {_no_devices(policy)}"]
    out.append("  " + DEVICES_NOTE)
    out += ["", RULES_TITLE]
    out += [f"  {hard:4}  {rule}: {value}  [{how}]" for rule, value, hard, how in report.policy_rows(policy)]
    return "\n".join(out)


def print_report(policy: Policy, status: Status | None) -> None:
    """The same report for a terminal: the machine's facts, then rich tables."""
    from .tables import print_table

    print("\n".join(machine_lines(policy)), flush=True)
    print()
    print_table([(n, h, s) for n, s, h, _ in report.layer_rows(status)], ("layer", "hard/soft", "state"),
                title=LAYERS_TITLE)
    print_table(report.device_rows(policy) or [(_no_devices(policy), "")], ("node", "verdict"),
                title=DEVICES_TITLE)
    print(DEVICES_NOTE)
    print()
    print_table(report.policy_rows(policy), ("rule", "value", "hard/soft", "enforced by"), title=RULES_TITLE)


# --------------------------------------------------------------------------- trying profiles


def shipped_profiles() -> list[str]:
    return [name for name, _ in profiles_in(resources.shipped_profiles_dir())]


def profiles_to_try() -> list[str]:
    """Every profile name on the search path (the first of each name, as kernels find it)."""
    return [name for name, _ in list_profiles()]


def _installed_cache(profile: str) -> str | None:
    """The validated-policy cache of an installed kernelspec for `profile`, if there is one."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().get_all_specs()
    except Exception:  # no Jupyter paths, unreadable specs: try without a cache
        return None
    for info in specs.values():
        argv = info.get("spec", {}).get("argv", [])
        if "--policy-cache" in argv and "--profile" in argv and argv[argv.index("--profile") + 1] == profile:
            path = argv[argv.index("--policy-cache") + 1].replace("{resource_dir}", info["resource_dir"])
            if os.path.isfile(path):
                return path
    return None


def launch_command(profile: str) -> list[str]:
    """The kernelspec's launcher part (install.kernel_argv up to `--`) without the kernel's
    connection file; with an installed kernelspec's policy cache where there is one."""
    from .install import kernel_argv

    argv = kernel_argv(profile)
    argv = argv[:argv.index("--")]
    out, i = [], 0
    cache = _installed_cache(profile)
    while i < len(argv):
        if argv[i] == "--connection-file":
            i += 2
            continue
        if argv[i] == "--policy-cache":
            if cache:
                out += ["--policy-cache", cache]
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out + ["--", sys.executable, "-c", CHILD]


def _verdict(profile: str, proc: subprocess.CompletedProcess | None, timeout: float) -> dict:
    if proc is None:
        return {"profile": profile, "starts": False, "layer": "launcher",
                "why": f"the launcher did not finish within {timeout:.0f} s", "fix": "run it by hand to see where it stops: "
                "`sandbox-kernel run --profile " + profile + " -- python -c pass`", "layers": None}
    if proc.returncode == 0:
        try:
            layers = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            layers = {}
        weaker = {n: i for n, i in layers.items() if i.get("state") not in ("active", "not needed", "off")}
        return {"profile": profile, "starts": True, "layers": layers,
                "weaker": {n: f"{i['state']}: {i['detail']}" for n, i in weaker.items()}}
    err = proc.stderr.strip()
    m = REFUSAL_RE.search(err)
    if m:
        layer, why = m.group("layer"), " ".join(m.group("why").split())
        fixes = why.split("; fix one of: ", 1)
        fix = ("one of: " + fixes[1]) if len(fixes) == 2 else HINTS.get(layer, f"make the {layer} layer available")
        fix += f"; or accept a weaker sandbox: `enforcement: {{{layer}: best-effort}}` in the profile"
        return {"profile": profile, "starts": False, "layer": layer, "why": fixes[0], "fix": fix, "layers": None}
    message = err.splitlines()[-1] if err else f"the launcher exited with status {proc.returncode}"
    message = re.sub(r"^sandbox-kernel: (error|refusing to start): ", "", message)
    return {"profile": profile, "starts": False, "layer": "launcher", "why": message,
            "fix": "see the message (it names the file, key or setting to change)", "layers": None}


def try_profile(profile: str, env: dict[str, str] | None = None, timeout: float = TRY_TIMEOUT) -> dict:
    """Start the launcher for `profile` on a harmless command and report its verdict."""
    run_env = dict(os.environ if env is None else env)
    for k in (STATUS_ENV, POLICY_ENV):
        run_env.pop(k, None)
    with tempfile.TemporaryDirectory(prefix="sandbox-kernel-doctor-") as cwd:
        try:
            proc = subprocess.run(launch_command(profile), cwd=cwd, env=run_env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            proc = None
    return _verdict(profile, proc, timeout)


def inside_sandbox() -> bool:
    return STATUS_ENV in os.environ or POLICY_ENV in os.environ


def trials_title() -> str:
    who = f"uid {os.getuid()}" + (" (root)" if is_root() else "")
    return f"profiles on this host (each started for real by the launcher, as {who}, on `python -c`):"


def trial_rows(trials: list[dict]) -> list[tuple[str, str, str, str]]:
    """(profile, verdict, what is weaker or which layer refuses and why, fix) per trial."""
    rows = []
    for t in trials:
        if t["starts"]:
            weaker = t.get("weaker") or {}
            note = ("\n".join(f"{n}: {w}" for n, w in sorted(weaker.items()))
                    if weaker else "every layer it requires is in force")
            rows.append((t["profile"], "starts", note, ""))
        else:
            rows.append((t["profile"], "REFUSED", f"by {t['layer']}: {t['why']}", t["fix"]))
    return rows


# --------------------------------------------------------------------------- the server's Python

SERVER_FIX = ("set PYTHONNOUSERSITE=1 in the Jupyter server's environment (JupyterHub: "
              "c.Spawner.environment = {'PYTHONNOUSERSITE': '1'}, as examples/jupyterhub/jupyterhub_config.py "
              "does), or start it with `python -s`; sandboxed kernels keep `pip install --user` (they do not "
              "inherit the variable, and add the user site only under their last filter)")


SERVER_INSIDE = ("server: not checked inside a sandbox (kernels do not inherit the server's PYTHONNOUSERSITE); "
                 "run `sandbox-kernel doctor` in the Jupyter server's environment")


def _venv_without_system_site(exe: str) -> bool | None:
    """True for a venv that hides system site packages (site.venv() then turns the user site
    off), False for another venv, None for an interpreter that is not a venv."""
    exe_dir = os.path.dirname(os.path.abspath(exe))
    for cfg in (os.path.join(exe_dir, "pyvenv.cfg"), os.path.join(os.path.dirname(exe_dir), "pyvenv.cfg")):
        try:
            with open(cfg, encoding="utf-8") as fh:
                text = fh.read()
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "include-system-site-packages":
                return value.strip().lower() != "true"
        return False
    return None


def _options_disable_user_site(argv: list[str]) -> bool:
    """-s, -I or -E... among the interpreter options of `argv` (argv[0] is the interpreter)."""
    for arg in argv[1:]:
        if not arg.startswith("-") or arg.startswith("--") or arg == "-":
            return False
        for letter in arg[1:]:
            if letter in "sI":
                return True
            if letter in "cmWX":
                return False
    return False


def user_site_verdict(exe: str, argv: list[str], env: dict[str, str]) -> tuple[bool, str]:
    """(whether a Python started as `argv` with `env` runs the user site, why)."""
    if _options_disable_user_site(argv):
        return False, "started with -s or -I"
    if env.get("PYTHONNOUSERSITE") and not _options_disable_env(argv):
        return False, "PYTHONNOUSERSITE is set"
    venv = _venv_without_system_site(exe)
    if venv:
        return False, "a virtual environment without system site packages"
    what = "a virtual environment with include-system-site-packages = true" if venv is False else "not a virtual environment"
    return True, f"{what}, without -s or PYTHONNOUSERSITE"


def _options_disable_env(argv: list[str]) -> bool:
    for arg in argv[1:]:
        if not arg.startswith("-") or arg.startswith("--") or arg == "-":
            return False
        if "E" in arg[1:].split("c")[0].split("m")[0]:
            return True
    return False


def _jupyter_server_process() -> dict | None:
    """The nearest ancestor that is a Jupyter server (jupyterhub-singleuser, jupyter-lab,
    jupyter-server, ...): its pid, interpreter, argv and environment, where readable."""
    pid = os.getppid()
    for _ in range(16):
        if pid <= 1:
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            with open(f"/proc/{pid}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        words = " ".join(os.path.basename(a) for a in argv[:4])
        if argv and "python" in os.path.basename(argv[0]) and any(
                w in words for w in ("jupyter", "singleuser", "jupyterhub", "jupyter_server", "notebook")):
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    env = dict(e.decode(errors="replace").partition("=")[::2] for e in fh.read().split(b"\0") if e)
            except OSError:
                return {"pid": pid, "argv": argv, "readable": False}
            return {"pid": pid, "argv": argv, "exe": exe, "env": env, "readable": True}
        pid = ppid
    return None


def server_check() -> dict:
    """Whether the Jupyter server's Python runs the tenant's user site (see the module docstring)."""
    import site

    user_site = site.getusersitepackages()
    runs, why = user_site_verdict(sys.executable, list(getattr(sys, "orig_argv", [sys.executable])), dict(os.environ))
    if site.ENABLE_USER_SITE and not runs:  # what site itself decided for this process wins
        runs, why = True, "this interpreter has the user site enabled"
    out = {"python": sys.executable, "user_site": user_site, "runs_user_site": runs, "why": why, "server": None}
    found = _jupyter_server_process()
    if found is not None:
        server = {"pid": found["pid"], "argv": found["argv"][:6]}
        if found.get("readable"):
            server["runs_user_site"], server["why"] = user_site_verdict(found["exe"], found["argv"], found["env"])
        out["server"] = server
    bad = out["runs_user_site"] or bool(out["server"] and out["server"].get("runs_user_site"))
    out["ok"] = not bad
    out["fix"] = SERVER_FIX if bad else ""
    return out


def server_lines(check: dict) -> list[str]:
    def one(who: str, runs: bool, why: str) -> str:
        if runs:
            return (f"server: WARNING: {who} runs the user site ({check['user_site']}: its .pth files and "
                    f"usercustomize, which a tenant can write from a kernel) unconfined at its start ({why})")
        return f"server: ok: {who} does not run the user site ({why})"

    out = [one(f"this Python ({check['python']}), which a Jupyter server in this environment runs,",
               check["runs_user_site"], check["why"])]
    srv = check["server"]
    if srv is not None and "runs_user_site" in srv:
        out.append(one(f"the Jupyter server above this process (pid {srv['pid']})", srv["runs_user_site"], srv["why"]))
    if check["fix"]:
        out.append(f"server: fix: {check['fix']}")
    return out


def _from_env(name: str, read):
    """What the launcher exported in `name`, or a clear refusal where it is something else."""
    try:
        return read()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SandboxError(f"{name} in this environment is not what the launcher writes ({type(e).__name__}: "
                           f"{e}); unset it, or run doctor where the launcher set it") from None


def _status_from_env() -> Status | None:
    status = Status.from_env()
    if status is not None and not all(isinstance(v, dict) for v in status.layers.values()):
        raise ValueError("not an object of layer entries")
    return status


def doctor(profile: str | None, *, as_json: bool = False, try_profiles: bool = True) -> int:
    if profile is None and POLICY_ENV in os.environ:
        policy = _from_env(POLICY_ENV, lambda: Policy.from_json(os.environ[POLICY_ENV]))
    else:
        policy = effective(profile)
    status = _from_env(STATUS_ENV, _status_from_env)
    _from_env(HANDOFF_ENV, handoff_from_env)  # (the GPU tool verdicts below are read from it)
    names = [profile] if profile else profiles_to_try()
    skip = "inside a sandbox" if inside_sandbox() else None if try_profiles else "--no-try"
    if not as_json:
        from .tables import print_table

        print_report(policy, status)
        print("\n".join(server_lines(server_check()) if not inside_sandbox() else [SERVER_INSIDE]), flush=True)
        if not inside_sandbox():
            print("\n".join(program_trees_lines(program_trees_check())), flush=True)
        if skip:
            print(f"profiles on this host: not tried ({skip}; run `sandbox-kernel doctor` outside a kernel)")
            return 0
        trials = [try_profile(n) for n in names]
        print_table(trial_rows(trials), ("profile", "verdict", "detail", "fix"), title=trials_title())
        refused = [t["profile"] for t in trials if not t["starts"]]
        if refused:
            print(f"doctor: {len(refused)} of {len(trials)} profile{'s' if len(trials) != 1 else ''} would not "
                  f"start here: {', '.join(refused)} (exit status {EXIT_REFUSED})", file=sys.stderr)
        orphans = kernelspec_check()
        print("\n".join(kernelspec_lines(orphans)))
        if orphans["orphaned"]:
            print(f"doctor: {len(orphans['orphaned'])} installed sandbox kernelspec"
                  f"{'s are' if len(orphans['orphaned']) != 1 else ' is'} orphaned: "
                  f"{', '.join(o['kernelspec'] for o in orphans['orphaned'])} (exit status {EXIT_REFUSED})",
                  file=sys.stderr)
        return EXIT_REFUSED if refused or orphans["orphaned"] else 0
    trials = None if skip else [try_profile(n) for n in names]
    kernelspecs = None if skip else kernelspec_check()
    print(json.dumps({
        "profile": policy.label,
        "sources": policy.sources + policy.ceiling_sources,
        "machine": {"landlock": landlock.describe_abi(), "libseccomp": seccomp.library_path(),
                    "cgroup": _cgroup_line().split(": ", 1)[1], "uid": os.getuid(),
                    "mount_setattr": _mount_setattr_fact(),
                    "counters": None if inside_sandbox() else counters_facts(policy),
                    "guard_hook": resources.guard_hook_path(),
                    "guard_hook_present": os.path.isfile(resources.guard_hook_path()),
                    "kernel_audit": _kernel_audit_facts()},
        "layers": status.layers if status else None,
        "devices": [{"node": n, "verdict": v} for n, v in report.device_rows(policy)],
        "rules": [{"rule": r, "value": v, "hard": h == "hard", "enforced_by": how}
                  for r, v, h, how in report.policy_rows(policy)],
        "server": None if inside_sandbox() else server_check(),
        "program_trees": None if inside_sandbox() else program_trees_check(),
        "profiles": trials,
        "profiles_not_tried": skip,
        "kernelspecs": kernelspecs,
    }, indent=2))
    return EXIT_REFUSED if trials and not all(t["starts"] for t in trials) or kernelspecs and kernelspecs["orphaned"] \
        else 0


def kernelspec_check() -> dict:
    """The installed sandbox kernelspecs, and those that are orphaned (install.orphaned_kernelspecs):
    a kernelspec Jupyter still offers whose kernel can only refuse to start."""
    from . import init_helper
    from .policy_cache import FILE_NAME

    try:
        from .install import orphaned_kernelspecs, sandbox_kernelspecs
    except ImportError:  # jupyter_client not importable here
        return {"installed": [], "orphaned": [], "python_init": [], "old_init": []}
    specs = sandbox_kernelspecs()
    helpers = {n: init_helper.beside(os.path.join(d, FILE_NAME)) for n, d, _ in specs}
    return {"installed": [n for n, _, _ in specs], "orphaned": orphaned_kernelspecs(),
            # without sandbox-kernel-init beside the policy cache, the namespace's init is the launcher's Python
            "python_init": [n for n, h in helpers.items() if not h],
            # one an older install built: the kernel waits only for its exec, not until it runs (init.c, READY_FD)
            "old_init": [n for n, h in helpers.items() if h and not init_helper.takes_ready_fd(h)]}


def kernelspec_lines(check: dict) -> list[str]:
    from . import init_helper

    lines = [f"sandbox kernelspecs installed: {len(check['installed'])}"
             + (f" ({', '.join(check['installed'])})" if check["installed"] else "")
             + ("; none orphaned" if not check["orphaned"] else "")]
    if check.get("python_init"):
        lines.append(f"  namespace init in Python, not {init_helper.FILE_NAME} (C): {', '.join(check['python_init'])}: "
                     f"the same protection, about 4 MiB more per kernel. Fix: install a C compiler (Debian: apt-get "
                     f"install gcc) and run `sandbox-kernel install` again")
    if check.get("old_init"):
        lines.append(f"  {init_helper.FILE_NAME} built by an older install: {', '.join(check['old_init'])}: the kernel "
                     f"waits only for its exec, so on a busy host its loader's opens can meet the root the kernel is "
                     f"rebuilding (the start then fails). Fix: run `sandbox-kernel install` again")
    for o in check["orphaned"]:
        lines.append(f"  ORPHANED kernelspec {o['kernelspec']} ({o['resource_dir']}): {o['why']}. Jupyter still offers "
                     f"it and its kernel refuses to start. Fix: {o['fix']}")
    return lines


def program_trees_check() -> dict:
    """What a scan finds now (``layers.program_trees``: the bin directories of packages' trees,
    and ``layers.program_files``: programs elsewhere, taken from the host cache where its tree is
    unchanged), and, for each installed sandbox kernelspec whose policy cache lists them, what its
    list lacks (installed since ``sandbox-kernel install``: not mounted noexec, so the ELF loader
    runs them under profiles whose exec.allow does not name them). A cache without the list
    (another version's or another interpreter's, or none) is passed over: the launcher then takes
    the host cache's list, or scans at start."""
    from .layers import program_trees
    from .policy_cache import FILE_NAME

    try:
        from .install import sandbox_kernelspecs
    except ImportError:  # jupyter_client not importable here
        specs = []
    else:
        specs = sandbox_kernelspecs()
    now = program_trees.current()
    stale = []
    for name, resource_dir, _ in specs:
        path = os.path.join(resource_dir, FILE_NAME)
        try:
            with open(path, "rb") as fh:
                listed = program_trees.cached_dirs(json.loads(fh.read()).get("programs"))
        except (OSError, ValueError, AttributeError):
            continue
        if listed is None:
            continue
        new = [d for d in now if d not in listed]
        if new:
            stale.append({"kernelspec": name, "policy_cache": path, "appeared": new})
    return {"dirs": now, "stale": stale, "fix": PROGRAM_TREES_FIX if stale else ""}


PROGRAM_TREES_FIX = ("run `sandbox-kernel install` again (as for the first install: --sys-prefix, --user or "
                     "--prefix) to refresh the kernelspecs' lists")


def program_trees_lines(check: dict) -> list[str]:
    found = len(check["dirs"])
    out = [f"program trees: {found} bin director{'ies' if found != 1 else 'y'} of packages' trees and programs kept "
           f"elsewhere (mounted noexec where exec.allow does not name them)"
           + ("; every kernelspec's list is current" if not check["stale"] else "")]
    for s in check["stale"]:
        out.append(f"program trees: STALE: kernelspec {s['kernelspec']} ({s['policy_cache']}) lacks "
                   f"{', '.join(s['appeared'])}, which appeared since `sandbox-kernel install`: the ELF loader "
                   f"runs programs there under profiles whose exec.allow does not name them")
    if check["fix"]:
        out.append(f"program trees: fix: {check['fix']}")
    return out
