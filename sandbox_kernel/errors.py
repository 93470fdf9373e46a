"""Exceptions shared by every part of sandbox-kernel.

`ProhibitedImportError` is what user code sees; the others end up as one clear
message on the command line or in the kernel's start-up log, never as a traceback.
"""

from __future__ import annotations


class ProhibitedImportError(ImportError):
    """A module the tenant's profile denies was imported.

    A subclass of ImportError so that libraries' ``try: import x / except
    ImportError`` fallbacks keep working.
    """

    def __init__(self, module: str, *, rule: str, category: str, reason: str, profile: str):
        self.module = module
        self.rule = rule
        self.category = category
        self.reason = reason
        self.profile = profile
        via = "" if rule == module else f" (rule '{rule}')"
        super().__init__(
            f"import of '{module}' is refused by sandbox profile '{profile}'{via}: "
            f"category {category}: {reason}",
            name=module,
        )


class SandboxError(Exception):
    """Base of the errors that stop a command or the kernel with a clear message."""


class ProfileError(SandboxError):
    """A profile could not be found, parsed or validated.

    ``problems`` is a list of (file, key path, message) so that several
    problems of one file are reported together.
    """

    def __init__(self, problems: list[tuple[str, str, str]]):
        # Each part printable on one line, whatever a file held (a key with a newline, a
        # lone surrogate, a control character): the message can always be printed.
        self.problems = [tuple(_printable(str(x)) for x in p) for p in problems]
        super().__init__("\n".join(self.format_one(*p) for p in self.problems))

    @staticmethod
    def format_one(file: str, key: str, message: str) -> str:
        where = f"{file}: {key}" if key else f"{file}"
        return f"{where}: {message}"

    @classmethod
    def one(cls, file: str, key: str, message: str) -> ProfileError:
        return cls([(str(file), key, message)])


def _printable(text: str) -> str:
    """`text` with every unprintable character (line breaks, controls, lone surrogates) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class LayerUnavailable(SandboxError):
    """A layer the profile requires cannot be applied on this machine.

    The message names the layer and the setting that would allow a weaker mode.
    """

    def __init__(self, layer: str, why: str, *, optional: bool = True):
        self.layer = layer
        self.why = why
        if optional:
            super().__init__(
                f"sandbox layer '{layer}' is required by the profile but cannot be applied: {why}. "
                f"The kernel will not start unconfined. To accept a weaker sandbox on this machine, "
                f"set `enforcement: {{{layer}: best-effort}}` in the profile (shown as such by "
                f"`sandbox-kernel profiles show` and `%sandbox`).")
        else:  # a check no profile can turn off
            super().__init__(f"sandbox check '{layer}' failed: {why}. The kernel will not start unconfined.")


class ProhibitedCommandError(PermissionError):
    """A cell would run a shell command (or install) that the profile's rules refuse."""

    def __init__(self, message: str, *, profile: str, category: str, rule: dict):
        self.profile = profile
        self.category = category
        self.rule = rule
        super().__init__(f"refused by sandbox profile '{profile}': {message}")

    def __str__(self) -> str:
        return self.args[0]
