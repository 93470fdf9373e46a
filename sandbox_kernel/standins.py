"""Stand-ins for standard-library modules on the launch path, each tested against the original.

Everything the launcher runs before confinement is the standard library or this package
(sandbox_kernel/startup.py declares which modules).
Some standard modules cost milliseconds of every kernel start there on a 2-core machine,
through what they import
(``re`` imports ``enum``, ``functools`` and ``collections``; ``json.decoder`` imports
``re``; ``signal``'s enum wrappers; OpenSSL's ``hashlib``; ``shutil`` imports ``bz2``,
``lzma`` and ``fnmatch``). This module holds what the launch path uses instead, in one
place, and tests/kernel/test_standins.py compares each with the module or pattern it replaces:

- ``json_loads``/``json_dumps``: ``json.loads``/``json.dumps``, driving CPython's C
  scanner and encoder (``_json``) directly;
- ``sha256_hex``: ``hashlib.sha256(data).hexdigest()`` with CPython's built-in SHA-256;
- ``signal``: the ``signal`` module's functions and constants from its C module;
- ``socket_module``: ``socket``'s C module, for socketpair and fd passing;
- ``which``: ``shutil.which`` on POSIX;
- ``kernel_id_of``, ``is_kernel_id``, ``valid_profile_name``, ``split_size``,
  ``which_name``: what a regular expression (named at each) would find, without ``re``.

Where a CPython-private module is missing (another interpreter or version: Python 3.12
renamed ``_sha256``), the public module is used instead: correct, only slower, and only
there (startup.PRIVATE_FALLBACKS; tests/kernel/test_launch_path.py launches without each).

JSON: an invalid document raises ``ValueError`` (``json.JSONDecodeError`` is one): the
error path imports ``json`` for its message, which costs only when it happens. One
difference from ``json``: a document nested deeper than the interpreter's recursion limit
raises ``ValueError`` ("JSON nested too deeply"), not ``RecursionError``, so that callers
that refuse invalid input refuse this too.
"""

from __future__ import annotations

import os

# --------------------------------------------------------------------------- json

try:
    from _json import encode_basestring_ascii as _encode_ascii
    from _json import make_encoder as _make_encoder
    from _json import make_scanner as _make_scanner
except ImportError:  # an interpreter without the C accelerator: json itself
    _make_scanner = None

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder`` (its default settings)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


def _error(message: str, doc: str, pos: int) -> ValueError:
    from json import JSONDecodeError

    return JSONDecodeError(message, doc, pos)


def json_loads(text: str | bytes) -> object:
    """``json.loads(text)``."""
    if _make_scanner is None:
        import json

        return json.loads(text)
    if isinstance(text, (bytes, bytearray)):
        if text[:2] in (b"\xff\xfe", b"\xfe\xff") or text[:3] == b"\xef\xbb\xbf" or b"\x00" in text[:4]:
            # a byte-order mark, UTF-16 or UTF-32: json's own encoding detection
            import json

            return json.loads(text)
        text = text.decode("utf-8", "surrogatepass")
    if text.startswith("\ufeff"):
        raise _error("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    start = _skip_whitespace(text, 0)
    try:
        value, end = _make_scanner(_Context())(text, start)
    except StopIteration as e:
        raise _error("Expecting value", text, e.value) from None
    except SystemError:
        # _json raises its errors as json.decoder.JSONDecodeError, which it only looks up in
        # sys.modules: before json is imported, an invalid document gives "returned NULL
        # without setting an exception". json itself then says what is wrong.
        import json

        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    end = _skip_whitespace(text, end)
    if end != len(text):
        raise _error("Extra data", text, end)
    return value


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _default(o: object) -> object:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def json_dumps(obj: object, *, separators: tuple[str, str] = (", ", ": "), sort_keys: bool = False) -> str:
    """``json.dumps(obj, separators=..., sort_keys=...)`` (no indent)."""
    if _make_scanner is None:
        import json

        return json.dumps(obj, separators=separators, sort_keys=sort_keys)
    item_separator, key_separator = separators
    encode = _make_encoder({}, _default, _encode_ascii, None, key_separator, item_separator, sort_keys, False, True)
    return "".join(encode(obj, 0))


# --------------------------------------------------------------------------- hashlib


def sha256_constructor():
    """``hashlib.sha256``: CPython's built-in SHA-256 (importing OpenSSL's hashlib costs about
    2 ms), else hashlib's (Python 3.12 renamed the built-in module ``_sha2``)."""
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return sha256


def sha256_hex(data: bytes) -> str:
    """``hashlib.sha256(data).hexdigest()``."""
    return sha256_constructor()(data).hexdigest()


# --------------------------------------------------------------------------- signal

try:  # signal's C module: the same functions and constants without the enum wrappers
    import _signal as signal  # noqa: F401 - used as standins.signal
except ImportError:  # the public module (its constants are enum members, which are ints)
    import signal  # type: ignore[no-redef]  # noqa: F401


# --------------------------------------------------------------------------- socket


def socket_module():
    """``socket``'s C module (socketpair, sendmsg/recvmsg, SCM_RIGHTS), else ``socket``."""
    try:
        import _socket
    except ImportError:
        import socket as _socket
    return _socket


# --------------------------------------------------------------------------- shutil.which


def which(name: str, path: str | None) -> str | None:
    """shutil.which on POSIX, the same answers: `name` itself if it has a slash, else the
    first entry of `path` holding an executable non-directory of that name."""
    def runnable(p: str) -> bool:
        return os.path.exists(p) and os.access(p, os.X_OK) and not os.path.isdir(p)

    if os.path.dirname(name):
        return name if runnable(name) else None
    path = os.environ.get("PATH", os.defpath) if path is None else path
    for d in path.split(os.pathsep) if path else []:
        if runnable(candidate := os.path.join(d, name)):
            return candidate
    return None


# --------------------------------------------------------------------------- re

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_ID_CHARS = frozenset(_ALNUM + "_-")
_DIGITS = "0123456789"


def is_kernel_id(kernel_id: object) -> bool:
    """A Jupyter kernel id as this package accepts one: ``[A-Za-z0-9_-]{1,64}`` (fullmatch)."""
    return isinstance(kernel_id, str) and 1 <= len(kernel_id) <= 64 and _ID_CHARS.issuperset(kernel_id)


def kernel_id_of(path: str) -> str:
    """The ID in a connection file named as Jupyter names them, ``kernel-<ID>.json``, else '':
    what ``re.search(r"kernel-([A-Za-z0-9_-]{1,64})\\.json$")`` finds in the file name."""
    name = os.path.basename(path)
    if not name.endswith(".json"):
        return ""
    stem, at = name[:-len(".json")], 0
    while (at := stem.find("kernel-", at)) >= 0:
        kid = stem[at + len("kernel-"):]
        if is_kernel_id(kid):
            return kid
        at += 1
    return ""


def valid_profile_name(name: str) -> bool:
    """A profile name: ``re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)``."""
    return bool(name) and name[0] in _ALNUM and all(c in _ALNUM or c in "_.-" for c in name)


def split_size(text: str) -> tuple[str, str] | None:
    """(number, unit) of a size string, as ``^([0-9]+(?:\\.[0-9]+)?)\\s*([KMGT]?)(i?)B?$``
    would match it (groups 1 and 2)."""
    i = 0
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    if i == 0:
        return None
    if text[i:i + 1] == "." and text[i + 1:i + 2] in tuple(_DIGITS):
        i += 1
        while i < len(text) and text[i] in _DIGITS:
            i += 1
    number, rest = text[:i], text[i:].lstrip()
    unit = rest[:1] if rest[:1] in ("K", "M", "G", "T") else ""
    rest = rest[len(unit):]
    rest = rest[1:] if rest.startswith("i") else rest
    return (number, unit) if rest in ("", "B") else None


def which_name(entry: str) -> str | None:
    """NAME of a ``{which:NAME}`` tool_dirs entry: ``^\\{which:([A-Za-z0-9._+-]+)\\}\\Z``, else None."""
    name = entry[len("{which:"):-1] if entry.startswith("{which:") and entry.endswith("}") else ""
    return name if name and all(c.isascii() and (c.isalnum() or c in "._+-") for c in name) else None
