"""JSON for the launch path: ``json.loads``/``json.dumps`` without importing ``json``.

The launcher reads the connection file and the validated-policy cache and writes the
layer status as JSON before any layer applies, on every kernel start. The ``json``
package itself costs about 9 ms there on a 2-core machine, because ``json.decoder``
imports ``re`` (and ``re`` imports ``enum``, ``functools``, ``collections``), although
CPython parses and writes JSON in C (``_json``) and needs none of them. This module
drives that C scanner and encoder directly, with the same settings as ``json.loads`` and
``json.dumps`` (tests compare the two on generated documents), and falls back to
``json`` on an interpreter without ``_json``.

An invalid document raises ``ValueError`` (``json.JSONDecodeError`` is one): the error
path imports ``json`` for its message, which costs only when it happens. One difference
from ``json``: a document nested deeper than the interpreter's recursion limit raises
``ValueError`` ("JSON nested too deeply"), not ``RecursionError``, so that callers that
refuse invalid input refuse this too.
"""

from __future__ import annotations

try:
    from _json import encode_basestring_ascii as _encode_ascii
    from _json import make_encoder as _make_encoder
    from _json import make_scanner as _make_scanner
except ImportError:  # pragma: no cover - an interpreter without the C accelerator
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


def loads(text: str | bytes) -> object:
    """``json.loads(text)``."""
    if _make_scanner is None:  # pragma: no cover
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


def dumps(obj: object, *, separators: tuple[str, str] = (", ", ": "), sort_keys: bool = False) -> str:
    """``json.dumps(obj, separators=..., sort_keys=...)`` (no indent)."""
    if _make_scanner is None:  # pragma: no cover
        import json

        return json.dumps(obj, separators=separators, sort_keys=sort_keys)
    item_separator, key_separator = separators
    encode = _make_encoder({}, _default, _encode_ascii, None, key_separator, item_separator, sort_keys, False, True)
    return "".join(encode(obj, 0))
