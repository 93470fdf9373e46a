"""The `sandbox-kernel` command: install, profiles, check, run, doctor."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .errors import LayerUnavailable, ProfileError, SandboxError


def _print_table(rows, headers) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers, box=box.SIMPLE, show_lines=False, expand=False)
    for r in rows:
        table.add_row(*[str(c) for c in r])
    Console(width=max(100, min(200, _width()))).print(table)


def _width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


# --------------------------------------------------------------------------- commands


def cmd_install(args) -> int:
    from .install import install_hook, install_prepared, prepare, shipped_profile_names

    where = {"user": args.user, "prefix": args.prefix}
    if args.sys_prefix:
        where = {"user": False, "prefix": sys.prefix}
    profiles = shipped_profile_names() if args.all else [args.profile]
    # Every profile is resolved and every name checked before anything is written:
    # a broken profile installs nothing (no kernelspec, no hook).
    prepared = [(p, *prepare(p, name=args.name, display_name=args.display_name)) for p in profiles]
    hook = install_hook()
    print(f"guard hook: {hook}")
    for p, name, spec in prepared:
        dest = install_prepared(name, spec, **where)
        print(f"installed kernelspec {os.path.basename(dest)} ({p}) in {dest}")
    return 0


def cmd_profiles_list(args) -> int:
    from .policy import list_profiles, resolve

    rows = []
    for name, path in list_profiles():
        try:
            desc = resolve(name).data.get("description", "")
        except ProfileError as e:
            desc = f"INVALID: {e.problems[0][2]}"
        rows.append((name, desc, str(path)))
    _print_table(rows, ("profile", "description", "file"))
    return 0


def cmd_profiles_show(args) -> int:
    from .layers.base import LaunchContext
    from .policy import effective, resolve
    from .report import policy_rows

    policy = effective(args.name) if args.ceiling else resolve(args.name)
    # With --json, stdout is the resolved data alone (for jq and scripts).
    info = sys.stderr if args.json else sys.stdout
    print(f"profile: {policy.label}", file=info)
    print("from: " + ", ".join(policy.sources + policy.ceiling_sources), file=info)
    if args.json:
        print(json.dumps(policy.data, indent=2))
        return 0
    _print_table(policy_rows(policy), ("rule", "value", "hard/soft", "enforced by"))
    ctx = LaunchContext(env=dict(os.environ))
    print("placeholders here: " + "; ".join(
        f"{{{k}}} = {', '.join(ctx.expand('{' + k + '}'))}" for k in ("home", "cwd", "tmp", "python", "system")))
    return 0


def cmd_profiles_validate(args) -> int:
    from .policy import load_file, resolve, validate

    bad = 0
    for f in args.files:
        try:
            data = load_file(f)
            validate(data, f)
            # The parent chain too, and the merged result. An absolute path: `resolve`
            # would look a bare file name up as a profile name on the search path.
            resolve(os.path.abspath(f))
            print(f"{f}: ok")
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
    from .policy import effective

    command = args.command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise SandboxError("nothing to run: give the command after `--`, e.g. "
                           "`sandbox-kernel run --profile free -- bash`")
    run(effective(args.profile, cache=args.policy_cache), command, args.connection_file)
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


def cmd_doctor(args) -> int:
    from .doctor import doctor

    return doctor(args.profile)


# --------------------------------------------------------------------------- parser


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; `only` builds just one command (`run` starts every kernel, so it
    skips building the others' parsers)."""
    p = argparse.ArgumentParser(prog="sandbox-kernel", description=(
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
        w = s.add_mutually_exclusive_group()
        w.add_argument("--user", action="store_true", help="install for the current user only")
        w.add_argument("--sys-prefix", action="store_true", help="install into this environment (sys.prefix)")
        w.add_argument("--prefix", metavar="DIR", help="install under DIR/share/jupyter/kernels")
        s.set_defaults(func=cmd_install)

    if only in (None, "profiles"):
        s = sub.add_parser("profiles", help="list, show or validate policy profiles",
                           description="Profiles are looked up in $SANDBOX_KERNEL_PROFILE_PATH, "
                                       "/etc/sandbox-kernel/profiles, then the shipped profiles.")
        psub = s.add_subparsers(dest="profiles_command", metavar="SUBCOMMAND", required=True)
        t = psub.add_parser("list", help="every profile on the search path", description="List every profile.")
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

    if only in (None, "doctor"):
        s = sub.add_parser("doctor", help="what this machine supports and what is in force",
                           description="Print the Landlock ABI, libseccomp, cgroups, the layers active in this "
                                       "process (inside a kernel) and the accelerator device nodes.")
        s.add_argument("--profile", default=None, help="profile to evaluate (default: the kernel's, else default)")
        s.set_defaults(func=cmd_doctor)

    return p


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
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
