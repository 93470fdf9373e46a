"""The `sandbox-kernel` command: install, profiles, check, run, doctor."""

from __future__ import annotations

import os
import sys

from . import __version__
from .errors import LayerUnavailable, ProfileError, SandboxError


def _print_table(rows, headers) -> None:
    from .tables import print_table

    print_table(rows, headers)


# --------------------------------------------------------------------------- commands


def cmd_install(args) -> int:
    from . import resources
    from .install import compile_package, install_hook, install_prepared, prepare, shipped_profile_names

    where = {"user": args.user, "prefix": args.prefix}
    if args.sys_prefix:
        where = {"user": False, "prefix": sys.prefix}
    profiles = shipped_profile_names() if args.all else [args.profile]
    # Every profile is resolved and every name checked before anything is written:
    # a broken profile installs nothing (no kernelspec, no hook).
    slurm = _slurm_config(args)
    if slurm is not None and args.pool:
        raise SandboxError("--pool and --slurm-* cannot be combined (a pooled kernel runs on this host; a Slurm "
                           "kernel is a job of its own): choose one")
    prepared = [(p, *prepare(p, name=args.name, display_name=args.display_name, pool=args.pool)) for p in profiles]
    if slurm is not None:
        from .install import slurm_spec

        prepared = [(p, *slurm_spec(name, spec, slurm, named=bool(args.name), display_name=args.display_name))
                    for p, name, spec in prepared]
    hook = install_hook()
    print(f"guard hook: {hook}")
    if not compile_package():
        print(f"note: could not write bytecode into {resources.PACKAGE_DIR}; kernels will compile the package at "
              f"each start (run `python -m compileall {resources.PACKAGE_DIR}` as its owner)", file=sys.stderr)
    from . import init_helper, policy_cache

    no_init = []
    for p, name, spec in prepared:
        dest = install_prepared(name, spec, **where)
        print(f"installed kernelspec {os.path.basename(dest)} ({p}) in {dest}")
        if not init_helper.beside(os.path.join(dest, policy_cache.FILE_NAME)):
            no_init.append(os.path.basename(dest))
    if no_init:
        cc = init_helper.compiler()
        why = (f"`{' '.join(init_helper.command(cc, init_helper.FILE_NAME))}` failed" if cc else
               "there is no C compiler (cc, gcc or clang; Debian: apt install gcc)")
        print(f"note: {', '.join(no_init)}: no {init_helper.FILE_NAME}, since {why}: each kernel's PID namespace "
              f"then has the launcher's Python as its init, about 4 MiB more memory per kernel (the same "
              f"protection); install one and run install again", file=sys.stderr)
    _install_notes(profiles, all_shipped=args.all)
    return 0


def _slurm_config(args) -> dict | None:
    """The provisioner config the --slurm-* options ask for; None without any of them."""
    cfg = {k: getattr(args, "slurm_" + k, None) for k in ("partition", "mem", "cpus", "time", "gres", "account", "qos")}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    if getattr(args, "slurm_arg", None):
        cfg["extra_args"] = list(args.slurm_arg)
    if not cfg and not getattr(args, "slurm", False):
        return None
    from .slurm_provisioner import SlurmConfigError, check_config

    try:
        check_config(cfg, where="install --slurm-*")
    except SlurmConfigError as e:
        raise SandboxError(str(e).replace("install --slurm-*.", "--slurm-").replace("extra_args", "arg")) from None
    return cfg


def _install_notes(installed: list[str], *, all_shipped: bool) -> None:
    """What install leaves out, on stderr: each invalid profile on the search path (not in the
    validated-policy cache: a kernel naming it refuses to start), and with --all each of the
    platform's own profiles (--all installs the shipped ones)."""
    from .install import invalid_profiles, shipped_profile_names
    from .policy import list_profiles

    invalid = invalid_profiles()
    for name, file, e in invalid:
        f, key, message = e.problems[0]
        print(f"sandbox-kernel: note: profile {name!r} ({file}) is invalid, so it is not in the validated-policy "
              f"cache and a kernel naming it will refuse to start: {f}: {key + ': ' if key else ''}{message}",
              file=sys.stderr)
    from .install import orphaned_kernelspecs

    for o in orphaned_kernelspecs():
        print(f"sandbox-kernel: warning: kernelspec {o['kernelspec']!r} ({o['resource_dir']}) is orphaned: "
              f"{o['why']}; Jupyter still offers it, and its kernel refuses to start (the notebook shows why). "
              f"Fix: {o['fix']}", file=sys.stderr)
    if all_shipped:
        bad = {n for n, _, _ in invalid}
        shipped = set(shipped_profile_names())
        for name, file in list_profiles():
            if name not in shipped and name not in bad and name not in installed:
                print(f"sandbox-kernel: note: --all installs the shipped profiles; {name!r} ({file}) gets its "
                      f"kernelspec with `sandbox-kernel install --profile {name}`", file=sys.stderr)


def cmd_profiles_list(args) -> int:
    from .policy import list_profiles, resolve

    found = []
    for name, path in list_profiles():
        entry = {"name": name, "file": str(path), "valid": True, "description": "", "problems": []}
        try:
            entry["description"] = resolve(name).data.get("description", "")
        except ProfileError as e:
            entry["valid"] = False
            entry["problems"] = [{"file": f, "key": k, "message": m} for f, k, m in e.problems]
        found.append(entry)
    if args.json:
        import json

        print(json.dumps(found, indent=2))
        return 0
    _print_table([(p["name"], p["description"] if p["valid"] else "INVALID: " + _problem_text(p),
                   p["file"]) for p in found], ("profile", "description", "file"))
    return 0


def _problem_text(entry: dict) -> str:
    """The first problem of an invalid profile: `[parent file: ]key: message (and N more)`."""
    first = entry["problems"][0]
    where = "" if os.path.realpath(first["file"]) == os.path.realpath(entry["file"]) else \
        os.path.basename(first["file"]) + ": "
    more = len(entry["problems"]) - 1
    return (where + (f"{first['key']}: " if first["key"] else "") + first["message"]
            + (f" (and {more} more: `sandbox-kernel profiles validate {entry['file']}`)" if more else ""))


def cmd_profiles_show(args) -> int:
    from .layers.context import LaunchContext
    from .policy import CEILING_ENV, effective, resolve
    from .report import policy_rows

    policy = effective(args.name) if args.ceiling else resolve(args.name)
    _print_warnings(policy)
    # With --json, stdout is the resolved data alone (for jq and scripts).
    info = sys.stderr if args.json else sys.stdout
    print(f"profile: {policy.label}", file=info)
    print("from: " + ", ".join(policy.sources), file=info)
    ceiling = os.environ.get(CEILING_ENV, "").strip()
    if args.ceiling:
        print(f"ceiling: {policy.ceiling} ({CEILING_ENV}), from: {', '.join(policy.ceiling_sources)}"
              if policy.ceiling else
              f"ceiling: none ({CEILING_ENV} is not set): kernels get profile '{policy.name}' as it is", file=info)
    elif ceiling:
        print(f"note: {CEILING_ENV}={ceiling} is set: kernels started here get this profile narrowed by it "
              f"(add --ceiling to see it)", file=info)
    if args.json:
        import json

        print(json.dumps(policy.data, indent=2))
        return 0
    _print_table(policy_rows(policy), ("rule", "value", "hard/soft", "enforced by"))
    ctx = LaunchContext(env=dict(os.environ))
    print("placeholders here: " + "; ".join(
        f"{{{k}}} = {', '.join(ctx.expand('{' + k + '}'))}" for k in ("home", "cwd", "tmp", "python", "system")))
    return 0


def _print_warnings(policy, label: str = "") -> int:
    """Print (to stderr) what the profile says that takes no effect; returns how many."""
    from .policy_merge import warnings

    found = warnings(policy)
    log = policy.audit_log
    if log and "{" not in log and not os.path.isdir(os.path.dirname(log) or "/"):
        found.append(f"audit.log: the directory {os.path.dirname(log)} does not exist on this machine, so kernels "
                     f"of this profile refuse to start here until it is created (as root: `install -d -m 0755 "
                     f"{os.path.dirname(log)}`)")
    for w in found:
        print(f"sandbox-kernel: warning: {label or policy.label}: {w}", file=sys.stderr)
    return len(found)


def cmd_profiles_validate(args) -> int:
    from .policy import load_file, resolve, validate

    bad = 0
    for f in args.files:
        try:
            data = load_file(f)
            validate(data, f)
            # The parent chain too, and the merged result. An absolute path: `resolve`
            # would look a bare file name up as a profile name on the search path.
            n = _print_warnings(resolve(os.path.abspath(f)), f)
            print(f"{f}: ok" + (f" ({n} warning{'s' if n != 1 else ''} on stderr)" if n else ""))
        except ProfileError as e:
            bad += 1
            print(str(e), file=sys.stderr)
    if bad:
        print(f"{bad} of {len(args.files)} profile file{'s' if len(args.files) != 1 else ''} invalid",
              file=sys.stderr)
    return 1 if bad else 0


def cmd_check(args) -> int:
    from .notebook_check import check_notebooks

    return check_notebooks(args.notebooks, args.profile, as_json=args.json)


def cmd_run(args) -> int:
    from .launcher import run

    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SandboxError("nothing to run: give the command after `--`, e.g. "
                           "`sandbox-kernel run --profile free -- bash`")
    run(args.profile, command, args.connection_file, policy_cache=args.policy_cache,
        allowed_ips=args.allow_kernel_ip)
    return 1  # not reached: run() execs or raises


def cmd_export(args) -> int:
    from .layers import seccomp
    from .policy import effective, resolve

    policy = effective(args.profile) if args.ceiling else resolve(args.profile)
    if args.format == "json":
        doc = policy.data
    else:
        doc = seccomp.oci_document(policy)
        if policy.enforcement("seccomp") == "off":
            print(f"sandbox-kernel: profile '{policy.label}' turns seccomp off: the document allows every system call",
                  file=sys.stderr)
    import json

    text = json.dumps(doc, indent=2) + "\n"
    if not args.output or args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w") as fh:
            fh.write(text)
    except OSError as e:
        raise SandboxError(f"{args.output}: cannot write it ({e.strerror})") from None
    print(f"wrote {args.format} of profile '{policy.label}' to {args.output}", file=sys.stderr)
    return 0


def cmd_audit(args) -> int:
    """Read the trail (the log and its rotated files, oldest first): summarize or print records."""
    import json

    from .audit_policy import category_of

    log = args.log
    if not log:
        from .policy import effective

        log = effective(args.profile, dict(os.environ)).audit_log
        if not log:
            raise SandboxError(f"profile {args.profile or 'default'} keeps no audit log (audit.log); give --log PATH")
    files = [f"{log}.{i}" for i in range(100, 0, -1) if os.path.exists(f"{log}.{i}")] + [log]
    records, bad = [], 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                for line in fh:
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        bad += 1
        except OSError as e:
            raise SandboxError(f"cannot read the audit log {f}: {e.strerror}") from None
    if args.tenant:
        records = [r for r in records if r.get("tenant") == args.tenant]
    if args.json:
        for r in records[-args.tail:] if args.tail else records:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    counts: dict = {}
    for r in records:
        cat = category_of(r)
        if cat:
            key = (r.get("tenant", ""), cat, r.get("source", ""))
            counts[key] = counts.get(key, 0) + 1
    print(f"{len(records)} records in {len(files)} file(s)" + (f", {bad} unreadable lines" if bad else ""))
    print(f"{'tenant':<20} {'category':<10} {'source':<11} count")
    for (tenant, cat, source), n in sorted(counts.items()):
        print(f"{tenant:<20} {cat:<10} {source:<11} {n}")
    for r in records:
        if r.get("what") in ("kernel stopped", "kernel refused", "flood"):
            print(f"{r.get('time', '')} {r.get('tenant', '')} {r.get('what')}: {r.get('detail', '')}")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import doctor

    return doctor(args.profile, as_json=args.json, try_profiles=not args.no_try)


# --------------------------------------------------------------------------- parser

# What exit status 1 means for each command ("" is the top level). 0 is success,
# 2 a usage error (argparse), 141 output piped into a reader that stopped early.
EXIT_ONE = {
    "": "something found, invalid or refused (see each command's --help)",
    "install": "a profile is missing or invalid, or a kernelspec cannot be written (then nothing is installed)",
    "profiles": "see each subcommand's --help",
    "profiles list": "not used: an invalid profile is listed as INVALID",
    "profiles show": "no such profile, or the profile or the ceiling ($SANDBOX_KERNEL_CEILING) is invalid",
    "profiles validate": "a file is invalid (every problem is printed with its file and key)",
    "check": "something the profile forbids was found, a notebook could not be read, or the profile is invalid",
    "run": "refused to start: the profile is invalid or a layer it requires cannot be applied (stderr says "
           "which); once the command runs, its own status is passed on. With --connection-file (a kernel), a "
           "refused start instead serves the reason to the notebook on the kernel's ports, running nothing, and "
           "exits 0 when the kernel is shut down",
    "doctor": "a profile tried would not start on this host (each refusal is in the report, with the layer and "
              "the fix), an installed sandbox kernelspec is orphaned (its profile is gone or invalid, or its "
              "launcher is), or the --profile given is invalid; not when the profiles were not tried (--no-try, "
              "inside a kernel)",
}


def exit_status_epilog(command: str) -> str:
    import textwrap

    rows = [("0", "success" + (" (nothing found)" if command == "check" else "")),
            ("1", EXIT_ONE.get(command, "an error (the message says which and how to fix it)")),
            ("2", "usage error: unknown command or option, missing or malformed argument")]
    if command != "run":  # run execs the command, whose output is its own
        rows.append(("141", "the output went to a pipe whose reader stopped early (| head); nothing more is printed"))
    return "exit status:\n" + "\n".join(
        textwrap.fill(text, width=100, initial_indent=f"  {code:5}", subsequent_indent=" " * 7) for code, text in rows)


def _parser_class():
    """The parser class (argparse is imported here, not at module level: `run`, every
    kernel's start, is parsed without it when it has the kernelspec's form, _fast_run_args)."""
    import argparse

    class _Formatter(argparse.HelpFormatter):
        """Wraps descriptions as usual and keeps the lines of the exit status table."""

        def _fill_text(self, text, width, indent):
            if text.startswith("exit status:"):
                return "".join(indent + line for line in text.splitlines(keepends=True))
            return super()._fill_text(text, width, indent)

    class _Parser(argparse.ArgumentParser):
        """Every command's --help ends with what its exit statuses mean (subparsers are built
        with the parser's own class, so new commands get the table too)."""

        def __init__(self, **kwargs):
            kwargs.setdefault("formatter_class", _Formatter)
            super().__init__(**kwargs)
            if self.epilog is None:
                self.epilog = exit_status_epilog(self.prog.partition(" ")[2])

    return _Parser


RUN_OPTIONS = {"--profile": "profile", "--connection-file": "connection_file", "--policy-cache": "policy_cache",
               "--allow-kernel-ip": "allow_kernel_ip"}


def _fast_run_args(argv: list[str]):
    """`run [--OPTION VALUE | --OPTION=VALUE]... -- CMD ARGS...` with only `run`'s own option
    names spelt out, as kernelspecs and the README write it, parsed without importing
    argparse (~10 ms of every kernel start). Anything else (--help, an abbreviation, a
    value starting with '-', no `--`) returns None and argparse parses it as always."""
    if argv[:1] != ["run"] or "--" not in argv:
        return None
    end = argv.index("--")
    args = {"profile": "default", "connection_file": None, "policy_cache": None, "allow_kernel_ip": []}
    i = 1
    while i < end:
        key, eq, value = argv[i].partition("=")
        if not eq:
            if i + 1 >= end:
                return None
            value = argv[i + 1]
        i += 1 if eq else 2
        if key not in RUN_OPTIONS or not value or value.startswith("-"):
            return None
        if key == "--allow-kernel-ip":
            args["allow_kernel_ip"].append(value)
        else:
            args[RUN_OPTIONS[key]] = value
    from types import SimpleNamespace

    return SimpleNamespace(command=argv[end:], func=cmd_run, **args)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:  # noqa: F821 - imported inside
    """The command line; `only` builds just one command (`run` starts every kernel, so it
    skips building the others' parsers)."""
    import argparse

    _Parser = _parser_class()
    p = _Parser(prog="sandbox-kernel", description=(
        "An execution-sandbox Jupyter kernel: per-tenant policy profiles, an import guard, OS-enforced "
        "limits (seccomp, Landlock, rlimits, cgroups) and accelerator gating."))
    p.add_argument("--version", action="version", version=f"sandbox-kernel {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    if only in (None, "install"):
        s = sub.add_parser("install", help="install kernelspecs (one per profile) and the child-process guard hook",
                           description="Install a kernelspec named sandbox-<profile> (display name 'Python 3 "
                                       "(sandbox: <profile>)') whose argv runs the launcher, and the guard hook.")
        g = s.add_mutually_exclusive_group()
        g.add_argument("--profile", default="default", help="profile name or file (default: default)")
        g.add_argument("--all", action="store_true", help="one kernelspec per shipped profile")
        s.add_argument("--name", help="kernelspec name (default: sandbox-<profile>)")
        s.add_argument("--display-name", help="display name (default: 'Python 3 (sandbox: <profile>)')")
        s.add_argument("--pool", type=_pool_size, default=0, metavar="N",
                       help="start kernels from a warm pool keeping N ready per notebook directory and environment "
                            "(the sandbox-pool kernel provisioner; docs/pool.md); default 0: no pool")
        w = s.add_mutually_exclusive_group()
        w.add_argument("--user", action="store_true", help="install for the current user only")
        w.add_argument("--sys-prefix", action="store_true", help="install into this environment (sys.prefix)")
        w.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
        sl = s.add_argument_group("Slurm", "with any of these, the kernel runs as a Slurm job (srun; the kernelspec "
                                           "names the sandbox-slurm-provisioner; default name sandbox-<profile>-slurm)")
        sl.add_argument("--slurm", action="store_true", help="run the kernel as a Slurm job (cluster defaults)")
        for key, text in (("partition", "partition"), ("mem", "memory of the job, e.g. 4G"),
                          ("cpus", "CPUs of the job (--cpus-per-task)"), ("time", "time limit, e.g. 08:00:00"),
                          ("gres", "generic resources, e.g. gpu:1"), ("account", "account"), ("qos", "QOS")):
            sl.add_argument(f"--slurm-{key}", metavar=key.upper(), type=int if key == "cpus" else str, help=text)
        sl.add_argument("--slurm-arg", action="append", default=[], metavar="--OPTION=VALUE",
                        help="another srun option (repeatable)")
        s.set_defaults(func=cmd_install)

    if only in (None, "profiles"):
        s = sub.add_parser("profiles", help="list, show or validate policy profiles",
                           description="Profiles are looked up in $SANDBOX_KERNEL_PROFILE_PATH, "
                                       "/etc/sandbox-kernel/profiles, then the shipped profiles.")
        psub = s.add_subparsers(dest="profiles_command", metavar="SUBCOMMAND", required=True)
        t = psub.add_parser("list", help="every profile on the search path", description="List every profile.")
        t.add_argument("--json", action="store_true", help="print a JSON list of {name, file, valid, description, "
                                                           "problems} (for scripts)")
        t.set_defaults(func=cmd_profiles_list)
        t = psub.add_parser("show", help="the fully resolved policy, each rule hard or soft",
                            description="Show the resolved policy of a profile, each rule marked hard (OS) or soft.")
        t.add_argument("name", help="profile name or file")
        t.add_argument("--ceiling", action="store_true", help="narrow by $SANDBOX_KERNEL_CEILING as the kernel would")
        t.add_argument("--json", action="store_true", help="print the resolved data as JSON")
        t.set_defaults(func=cmd_profiles_show)
        t = psub.add_parser("validate", help="check profile files (exit 1 when invalid)",
                            description="Validate profile files against the schema; exit 1 with the errors.")
        t.add_argument("files", nargs="+", metavar="FILE")
        t.set_defaults(func=cmd_profiles_validate)

    if only in (None, "check"):
        s = sub.add_parser("check", help="scan notebooks for what a profile forbids (exit 1 when found)",
                           description="Static scan of notebooks: denied imports, installs and shell fetches, "
                                       "with cell numbers. Exit 1 when something is found.")
        s.add_argument("notebooks", nargs="+", metavar="NOTEBOOK.ipynb")
        s.add_argument("--profile", default="default", help="profile name or file (default: default)")
        s.add_argument("--json", action="store_true", help="print findings as JSON")
        s.set_defaults(func=cmd_check)

    if only in (None, "run"):
        s = sub.add_parser("run", help="apply the profile's layers, then exec a command",
                           description="Resolve the effective profile, set no_new_privs, join a cgroup, apply rlimits, "
                                       "capabilities, Landlock and seccomp, then exec CMD. Kernelspecs use it as argv "
                                       "prefix; it also wraps terminals and batch jobs.")
        s.add_argument("--profile", default="default", help="profile name or file (default: default)")
        s.add_argument("--connection-file", help="the kernel's connection file (its ports are the only ones bound)")
        s.add_argument("--policy-cache", metavar="FILE", help="validated-policy cache written by install (used where "
                                                             "still valid; installed kernelspecs pass it)")
        s.add_argument("--allow-kernel-ip", action="append", default=[], metavar="ADDR",
                       help="accept this non-loopback address in the connection file (a platform setting, e.g. for "
                            "kernels in a pod; by default only loopback addresses are accepted)")
        s.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
        s.set_defaults(func=cmd_run)

    if only in (None, "export"):
        s = sub.add_parser("export", help="write a profile's rules for other tools (OCI seccomp, JSON)",
                           description="oci-seccomp: the profile's final system-call rules as an OCI runtime-spec "
                                       "seccomp document (linux.seccomp of a container's config.json; Docker's "
                                       "--security-opt seccomp=FILE); json: the resolved profile.")
        s.add_argument("--profile", default="default", help="profile name or file (default: default)")
        s.add_argument("--format", choices=["oci-seccomp", "json"], default="oci-seccomp")
        s.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
        s.add_argument("--ceiling", action="store_true", help="narrow by $SANDBOX_KERNEL_CEILING as the kernel would")
        s.set_defaults(func=cmd_export)

    if only in (None, "audit"):
        s = sub.add_parser("audit", help="read and summarize the audit trail",
                           description="Summarize the audit trail (audit.log and its rotated files): refusals per "
                                       "tenant, category and source (supervisor: verified; kernel: unverified), "
                                       "and the kernels stopped or refused by the violation policy; or print the "
                                       "records as JSON lines.")
        s.add_argument("--log", help="the audit log (default: the profile's audit.log)")
        s.add_argument("--profile", default=None, help="profile whose audit.log to read (default: default)")
        s.add_argument("--tenant", help="only this tenant's records")
        s.add_argument("--json", action="store_true", help="print the records as JSON lines")
        s.add_argument("--tail", type=int, default=0, help="with --json: only the last N records")
        s.set_defaults(func=cmd_audit)

    if only in (None, "doctor"):
        s = sub.add_parser("doctor", help="what this machine supports, what is in force, which profiles start",
                           description="Print the Landlock ABI, libseccomp, cgroups, the layers active in this "
                                       "process (inside a kernel) and the accelerator device nodes; then start the "
                                       "launcher for real on a harmless command for every profile on the search "
                                       "path ($SANDBOX_KERNEL_PROFILE_PATH, /etc/sandbox-kernel/profiles, the "
                                       "shipped ones; or --profile) and say which would start and, for each that "
                                       "would not, which layer refuses and the fix; and every installed sandbox "
                                       "kernelspec that is orphaned (its profile gone or invalid). Exit 1 when one "
                                       "would not start or one is orphaned. Works before `sandbox-kernel install`.")
        s.add_argument("--profile", default=None, help="profile to evaluate and try (default: the kernel's, else "
                                                       "default; every profile on the search path is tried)")
        s.add_argument("--json", action="store_true", help="print the report as JSON")
        s.add_argument("--no-try", action="store_true", help="do not start the launcher for the profiles")
        s.set_defaults(func=cmd_doctor)

    return p


def _pool_size(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give the number of kernels to keep ready (0 or more)")
    return n


EXIT_PIPE = 128 + 13  # 141, as for a program ended by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Run one command; output piped into a reader that stops early (`| head`) ends quietly.

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError. It is
    handled once, here, as Python's docs advise (signal module, "Note on SIGPIPE"):
    flush inside the handler, then point stdout and stderr at /dev/null so that the
    interpreter's own flush at exit cannot fail again. SIGPIPE is not reset to SIG_DFL,
    which would also kill the process on any socket a command writes to.
    """
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):  # not a real file (captured in tests)
                pass
        os.close(devnull)
        return EXIT_PIPE


def _main(argv: list[str] | None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    args = _fast_run_args(args_in)
    if args is None:
        parser = build_parser("run" if args_in[:1] == ["run"] else None)
        args = parser.parse_args(argv)
    if args.command == "install" and args.all and args.name:
        parser.error("install: --name cannot be combined with --all (each profile gets sandbox-<profile>)")
    try:
        return args.func(args)
    except LayerUnavailable as e:
        print(f"sandbox-kernel: refusing to start: {e}", file=sys.stderr)
        return 1
    except (ProfileError, SandboxError) as e:
        print(f"sandbox-kernel: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
