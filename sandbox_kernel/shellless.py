"""`!` lines where the profile lets no shell run (``offline``: ``exec.allow: [{python}]``).

IPython runs every ``!cmd`` line with ``/bin/sh -c cmd``; where ``/bin/sh`` is outside
``exec.allow`` every such line is refused, ``!python -c "print(1)"`` included. Here a line
that is one plain command (words and quoted strings: no pipe, redirection, ``;``, ``&``,
variable, command substitution, glob, ``~`` or backslash, which would need the shell) runs
without the shell: its words become the argv of the program. Anything else goes to the
shell no more: the line is refused with a message saying why (the shell could not start).

Enforcement: none of its own; a convenience (soft). What may run is still decided by
Landlock's exec rules and the noexec mounts, exactly as for ``subprocess.run(argv)``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from .paths import real_exec_allowed

# Characters that mean something to sh outside quotes, and inside double quotes.
_SPECIAL = set("|&;<>()$`\\*?[]{}~#\n\r")
_SPECIAL_IN_DOUBLE = set("$`\\")
SHELL = "/bin/sh"


def plain_argv(cmd: str) -> list[str] | None:
    """The argv of `cmd` when it is one plain command that needs no shell, else None."""
    quote = None
    for ch in cmd:
        if quote == "'":
            if ch == "'":
                quote = None
        elif quote == '"':
            if ch == '"':
                quote = None
            elif ch in _SPECIAL_IN_DOUBLE:
                return None
        elif ch in ("'", '"'):
            quote = ch
        elif ch in _SPECIAL:
            return None
    if quote is not None:
        return None
    try:
        argv = shlex.split(cmd)
    except ValueError:
        return None
    if not argv or "=" in argv[0]:  # VAR=value cmd: an assignment for the shell
        return None
    return argv


def shell_allowed(policy) -> bool:
    """Whether the profile's exec.allow lets /bin/sh run (a profile with Landlock off: yes)."""
    from .layers.context import LaunchContext
    from .paths import within

    if policy.enforcement("landlock") == "off":
        return True
    real = os.path.realpath(SHELL)
    ctx = LaunchContext(env=dict(os.environ))
    allowed = real_exec_allowed(policy, ctx)
    return any(within(real, a) for a in allowed)


def install(shell, policy) -> bool:
    """Route plain `!` lines around the shell where the shell may not run. True if installed."""
    if shell_allowed(policy):
        return False

    def system(cmd):
        expanded = shell.var_expand(cmd, depth=1)
        argv = plain_argv(expanded)
        if argv is None:  # the shell would be refused: say why instead of "shell not found"
            print(f"sandbox: this line needs a shell (a pipe, redirection, variable, glob, ...), and exec.allow "
                  f"does not include {SHELL}: run one plain command per `!` line, or use subprocess from Python",
                  file=sys.stderr)
            shell.user_ns["_exit_code"] = 127
            return None
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
        except OSError as e:
            print(f"{argv[0]}: {e.strerror} (this profile runs `!` lines without a shell: exec.allow "
                  f"does not include {SHELL})", file=sys.stderr)
            shell.user_ns["_exit_code"] = 126 if isinstance(e, PermissionError) else 127
            return None
        sys.stdout.write(p.stdout.decode(errors="replace"))
        sys.stderr.write(p.stderr.decode(errors="replace"))
        sys.stdout.flush()
        from .nethint import command_hint

        hint = command_hint(expanded, p.returncode, policy)
        if hint:
            print(hint, file=sys.stderr)
        sys.stderr.flush()
        shell.user_ns["_exit_code"] = p.returncode
        return None

    shell.system = system
    return True
