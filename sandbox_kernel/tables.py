"""Tables for the `sandbox-kernel` command's human output (rich), one style for every command.

Only the CLI uses this (``profiles list/show``, ``doctor``); never the launch path, which
imports nothing outside the standard library and this package before confinement.
"""

from __future__ import annotations

import errno
import os


def width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 160


def print_table(rows, headers, title: str | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich would exit 1 itself; cli.main handles it for every command
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    if title:  # above the table, unwrapped (a rich title wraps to the table's width)
        print(title, flush=True)
    table = Table(*headers, box=box.SIMPLE, show_lines=False, expand=False)
    for r in rows:
        table.add_row(*[str(c) for c in r])
    _Console(width=max(100, min(200, width()))).print(table)
