"""Loading and validating one profile file: safe YAML, the JSON Schema, clear errors.

The only module that imports PyYAML and jsonschema, and only inside the functions that
need them (``_yaml_loader``, ``_validator``): importing this module costs no third-party
import, so the launcher's cache-hit path and child interpreters never pay for them,
and on the launch path they are imported only where the validated-policy cache misses.

Every problem is a ``ProfileError`` naming the file, the key path and what is
expected; several problems of one file are reported together (at most
``MAX_REPORTED``). Inheritance and narrowing are in ``policy_merge``.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any
from collections.abc import Iterable

from . import resources
from .errors import ProfileError
from .policy_facts import KEYS
from .resolved import MAX_SIZE, device_key, parse_size

MAX_PROFILE_BYTES = 256 * 1024
MAX_REPORTED = 20  # problems listed per file

# --------------------------------------------------------------------------- loading


@lru_cache(maxsize=1)
def _yaml_loader():
    """Safe YAML without anchors/aliases and without duplicate keys.

    Profiles need no anchors, and refusing them rules out "billion laughs" documents
    whose expansion exhausts memory. (PyYAML is imported here, not at module level:
    child interpreters arm the guard from JSON and never pay for it.)
    """
    import yaml

    def _no_alias(node):
        return yaml.composer.ComposerError(
            None, None, "anchors and aliases (&name / *name) are not allowed in profiles", node.start_mark)

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[override]
            # Anchors live on the events (nodes do not keep them): refuse an alias, and
            # an anchor on a scalar, sequence or mapping, before anything is composed.
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise _no_alias(event)
            return super().compose_node(parent, index)

        def construct_object(self, node, deep=False):  # type: ignore[override]
            # PyYAML's constructors raise plain Python errors on some bad scalars (`!!int`
            # with no value: IndexError; an integer of more than sys.get_int_max_str_digits()
            # digits: ValueError): each becomes a YAML error at the value's own line.
            try:
                return super().construct_object(node, deep=deep)
            except (yaml.YAMLError, RecursionError):
                raise
            except Exception as e:  # noqa: BLE001 - any other failure is a value that cannot be read
                raise yaml.constructor.ConstructorError(
                    None, None, f"cannot read this value as {node.tag.rsplit(':', 1)[-1]}: {_why(e)}",
                    node.start_mark) from None

        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:  # unhashable key: reported by the base class
                    dup = False
                if dup:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                if not dup:
                    try:
                        seen.add(key)
                    except TypeError:
                        pass
            return super().construct_mapping(node, deep=deep)

    # YAML 1.2's booleans: only true/false. YAML 1.1 (PyYAML's default) also reads yes/no/on/off
    # as booleans, so `seccomp: off` would arrive as false and be refused with a puzzling
    # message; here it is the string the schema expects, and `udp: yes` is refused as "expected
    # a boolean" rather than silently taken as true.
    bool_tag = "tag:yaml.org,2002:bool"
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    return yaml, Loader


def _why(e: Exception) -> str:
    if isinstance(e, ValueError) and "digits" in str(e):
        return f"a number of more than {sys.get_int_max_str_digits()} digits"
    text = str(e) or type(e).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _indent_hint(text: str, line_no: int) -> str:
    """Where YAML reports a mapping error at a line (PyYAML marks the colon of the key it could
    not place), the indentation that caused it, in words; '' where it is something else.

    Two cases: the line is indented deeper than the line above, which has a value already
    (YAML reads it as part of that value); or it is indented less, to a column no key above
    uses (it belongs to no mapping)."""
    lines = text.splitlines()
    if not 0 < line_no < len(lines):
        return ""

    def indent(s: str) -> int:
        return len(s) - len(s.lstrip(" "))

    def content(s: str) -> bool:
        return bool(s.strip()) and not s.lstrip().startswith("#")

    cur = lines[line_no]
    above = [(i, lines[i]) for i in range(line_no - 1, -1, -1) if content(lines[i])]
    if not content(cur) or not above or ":" not in cur:
        return ""
    key = cur.strip().split(":", 1)[0].lstrip("- ").strip()
    i, prev = above[0]
    ci, pi = indent(cur), indent(prev)
    prev_key = prev.strip().split(":", 1)[0].lstrip("- ").strip()
    code = prev.split("#", 1)[0]  # (a colon only in the comment is no key)
    has_value = ":" in code and code.split(":", 1)[1].strip() != ""
    if ci > pi and has_value:
        return (f"line {line_no + 1} (`{key}:`) is indented {ci} space{'s' if ci != 1 else ''}, deeper than line {i + 1} (`{prev_key}:`, "
                f"{pi}), which already has a value; keys of one mapping line up: indent `{key}:` {pi} "
                f"space{'s' if pi != 1 else ''}, like `{prev_key}:`")
    levels = sorted({indent(s) for _, s in above})
    if ci < pi and ci not in levels:
        return (f"line {line_no + 1} (`{key}:`) is indented {ci} space{'s' if ci != 1 else ''}, which lines up with no key above "
                f"(they are at {', '.join(map(str, levels))}); indent it like the keys it belongs with")
    return ""


def load_file(path: Path | str) -> dict:
    """Read one profile file: safe YAML, a mapping, within the size limit."""
    path = Path(path)
    label = str(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ProfileError.one(label, "", "not a regular file; a profile is a YAML file")
        with open(path, "rb") as fh:  # never more than the limit: /dev/zero or a huge file stays harmless
            raw = fh.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise ProfileError.one(label, "", f"cannot read the file: {e.strerror or e}") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError.one(label, "", f"file is larger than {MAX_PROFILE_BYTES} bytes; a profile is a short YAML mapping")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError.one(label, "", "not UTF-8 text; a profile is a YAML file") from None
    memo = _PARSED.get((label, raw))
    if memo is not None:  # the same bytes of the same file, parsed before in this process
        import copy

        return copy.deepcopy(memo)
    empty = "file is empty; a profile is a YAML mapping such as `extends: base`"
    if not text.strip():  # whitespace only (tabs included, which YAML itself would refuse)
        raise ProfileError.one(label, "", empty)
    yaml, loader = _yaml_loader()
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, most C0/C1 controls)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise ProfileError.one(label, "", f"not valid YAML: line {line}, column {column}: character "
                                          f"U+{e.character:04X} is not allowed ({e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        hint = _indent_hint(text, mark.line) if mark else ""
        if hint:
            raise ProfileError.one(label, "", f"not valid YAML: {hint} (YAML: {where}{problem})") from None
        raise ProfileError.one(label, "", f"not valid YAML: {where}{problem}") from None
    except RecursionError:
        raise ProfileError.one(label, "", "not valid YAML: nested too deeply") from None
    if data is None:
        raise ProfileError.one(label, "", empty)
    if not isinstance(data, dict):
        raise ProfileError.one(label, "", f"expected a YAML mapping of profile keys (such as `extends: base`), found {_yaml_type(data)} {_short(data)}")
    for k in data:
        if not isinstance(k, str):
            raise ProfileError.one(label, _short(k), "keys must be strings")
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    import copy

    _PARSED[(label, raw)] = copy.deepcopy(data)  # (callers may change what they are given)
    return data


# Parsed profile files, by path and exact content: resolving a profile reads its `extends` chain,
# so `install --all`, doctor and the pool read base.yaml once per profile and again per cache
# entry (252 YAML parses in one `install --all`, ~5 s of pure-Python YAML). A file whose bytes
# changed is parsed again; what a file fails with is never kept.
_PARSED: dict[tuple[str, bytes], dict] = {}
_PARSED_MAX = 256


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "list", dict: "mapping", str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__)


def _found(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} (not a finite number)"
    return f"{_yaml_type(value)} {_short(value)}"


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value found in a file, cut short: an error message stays one line."""
    try:
        text = repr(value)
    except ValueError:  # an integer beyond sys.get_int_max_str_digits()
        text = "(an integer too long to print)"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _with_nul(value: Any, path: tuple = ()) -> Iterable[tuple]:
    """Key paths of strings (values or keys) that hold a NUL character."""
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                yield path
            else:
                yield from _with_nul(v, path + (k,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _with_nul(v, path + (i,))


def _oversized(value: Any, path: tuple = ()) -> Iterable[tuple]:
    """Key paths of integers beyond what any profile key holds (MAX_SIZE), keys included.

    Refused before the schema runs: jsonschema's own messages print the value, and an
    integer of thousands of digits cannot be printed (nor does any key need one).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > MAX_SIZE:
            yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, int) and not isinstance(k, bool) and abs(k) > MAX_SIZE:
                yield path
            else:
                yield from _oversized(v, path + (k,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _oversized(v, path + (i,))
    elif isinstance(value, (set, frozenset)):
        for v in value:
            yield from _oversized(v, path)


# --------------------------------------------------------------------------- validating


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(Path(resources.schema_path()).read_text())


# Optional libraries jsonschema imports, when installed, only to check `format` keywords,
# which profiles/schema.json does not use. A Jupyter server's environment has them
# (jupyter_events asks for jsonschema[format-nongpl]), and one of them, rfc3987_syntax,
# builds a Lark grammar at import: ~3 s of every profile load (a launcher's cache miss,
# `profiles validate`, `install`). They are held back while jsonschema is first imported.
FORMAT_ONLY_MODULES = ("rfc3987_syntax", "rfc3987", "rfc3986_validator", "rfc3339_validator", "isoduration",
                       "webcolors", "uri_template", "fqdn", "jsonpointer")


def _import_jsonschema():
    if "jsonschema" in sys.modules:
        return sys.modules["jsonschema"]
    held = [m for m in FORMAT_ONLY_MODULES if m not in sys.modules]
    for m in held:
        sys.modules[m] = None  # `import m` raises ImportError; jsonschema skips that format
    try:
        import jsonschema
    finally:
        for m in held:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return jsonschema


@lru_cache(maxsize=1)
def _validator():
    """Draft 2020-12 with strict numbers: an `integer` is an int (JSON Schema also calls
    5.0 an integer, which setrlimit, cgroup files and port rules would not take), and a
    `number` is finite (NaN passes every minimum/maximum comparison)."""
    jsonschema = _import_jsonschema()

    def is_integer(checker, value):
        return type(value) is int

    def is_number(checker, value):
        return type(value) is int or (type(value) is float and math.isfinite(value))

    base = jsonschema.Draft202012Validator
    strict = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine_many({"integer": is_integer, "number": is_number}))
    # The shipped schema is checked against its meta-schema by the test suite, not at
    # every kernel start (that check alone costs ~18 ms).
    return strict(schema())


def _key_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_TYPE_PHRASES = {"object": "a mapping (key: value lines)", "array": "a list", "string": "a string",
                 "integer": "an integer", "number": "a number", "boolean": "true or false", "null": "null"}


def _deref(sub: dict) -> dict:
    while isinstance(sub, dict) and "$ref" in sub:
        extra = {k: v for k, v in sub.items() if k != "$ref"}
        sub = {**schema()["$defs"][sub["$ref"].rsplit("/", 1)[-1]], **extra}
    return sub


def _type_phrase(sub: dict) -> str | None:
    sub = _deref(sub)
    t = sub.get("type")
    if isinstance(t, str):
        return _TYPE_PHRASES.get(t, f"a {t}")
    if isinstance(t, list):
        return " or ".join(_TYPE_PHRASES.get(x, x) for x in t)
    if "enum" in sub:
        return "one of " + ", ".join(repr(v) for v in sub["enum"])
    if "oneOf" in sub:
        phrases = [_type_phrase(b) for b in sub["oneOf"]]
        return " or ".join(dict.fromkeys(x for x in phrases if x)) or None
    return None


def _describe(sub: dict, fallback: str = "") -> str:
    """What a value here should be: its type, and the schema's description of it."""
    sub = _deref(sub)
    what = _type_phrase(sub) or "a valid value"
    desc = sub.get("description") or fallback
    if desc and "enum" not in sub:
        return f"{what} ({desc})"
    return what


_RANGE_WORDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _error_message(err, fallback: str = "") -> str:
    """One clear sentence for one schema error: what was found and what is expected."""
    validator, sub = err.validator, err.schema
    if validator == "additionalProperties":
        allowed = sorted(sub.get("properties", {}))
        return f"unknown key; allowed keys here: {', '.join(allowed)}"
    if validator == "required":
        missing = [k for k in sub["required"] if not isinstance(err.instance, dict) or k not in err.instance]
        return (f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}; "
                f"this entry needs the keys: "
                f"{', '.join(sub['required'])}")
    if validator == "enum":
        return f"{_short(err.instance)} is not allowed; expected one of {', '.join(repr(v) for v in sub['enum'])}"
    if validator == "type":
        return f"expected {_describe(sub, fallback)}, found {_found(err.instance)}"
    if validator in _RANGE_WORDS:
        what = _type_phrase(sub) or "a number"
        desc = sub.get("description") or fallback
        return (f"{_short(err.instance)} is out of range; expected {what} {_RANGE_WORDS[validator]} "
                f"{err.validator_value}" + (f" ({desc})" if desc else ""))
    if validator == "pattern":
        desc = _deref(sub).get("description") or fallback or f"a string matching {sub['pattern']}"
        return f"{_short(err.instance)} is not valid here; expected {desc}"
    if validator == "minLength":
        return f"must not be empty; expected {_describe(sub, fallback)}"
    if validator in ("oneOf", "anyOf"):
        return f"expected {_describe(sub, fallback)}, found {_found(err.instance)}"
    return f"{err.message}; expected {_describe(sub, fallback)}"


def _problems_of(err, fallback: str = "") -> list[tuple[str, str]]:
    """(key path, message) for one schema error.

    A ``oneOf`` error (a module name or a mapping; an integer or a size string; ...)
    is explained by the alternative whose type matches the value, at the deepest key
    (``imports.deny[1].module``), instead of "not valid under any of the given schemas".
    An unknown key is reported at its own path (``network.bogus``).
    """
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if extra:
            allowed_text = ", ".join(sorted(allowed))
            return [(_key_path(list(err.absolute_path) + [str(k)]),
                     f"unknown key {_short(k)}; allowed keys here: {allowed_text}") for k in extra]
    if err.validator in ("oneOf", "anyOf") and err.context:
        branches: dict[Any, list] = {}
        for sub in err.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [errs for errs in branches.values()
                   if not any(e.validator == "type" and not e.relative_path for e in errs)]
        if len(fitting) == 1:
            desc = _deref(err.schema).get("description") or fallback
            out: list[tuple[str, str]] = []
            for sub in sorted(fitting[0], key=lambda e: list(map(str, e.absolute_path))):
                out += _problems_of(sub, desc)
            return out
    return [(_key_path(err.absolute_path) or "(top level)", _error_message(err, fallback))]


def validate(data: dict, label: str) -> None:
    """Check one profile's own data (before inheritance) against the schema."""
    try:
        key = (label, repr(data))
    except ValueError:  # an integer too long to print (sys.get_int_max_str_digits): just check it
        key = None
    if key in _VALID:  # (what failed is never kept: it is checked, and reported, every time)
        return
    _validate(data, label)
    if key is None:
        return
    if len(_VALID) >= _PARSED_MAX:
        _VALID.clear()
    _VALID.add(key)


_VALID: set[tuple[str, str]] = set()  # (file, its data) that passed, as _PARSED keeps parses


def _validate(data: dict, label: str) -> None:
    big = list(dict.fromkeys(_oversized(data)))
    if big:
        raise ProfileError([(label, _key_path(p) or "(top level)",
                             f"integer out of range; no profile value is above {MAX_SIZE}")
                            for p in big[:MAX_REPORTED]])
    nul = list(dict.fromkeys(_with_nul(data)))
    if nul:  # a "\0" escape: no path or name can hold one (the OS refuses it)
        raise ProfileError([(label, _key_path(p) or "(top level)",
                             "contains a NUL character (\\0); no path, name or pattern can hold one")
                            for p in nul[:MAX_REPORTED]])
    errors = sorted(_validator().iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        problems: list[tuple[str, str, str]] = []
        for e in errors:
            for k, m in _problems_of(e):
                if (label, k, m) not in problems:
                    problems.append((label, k, m))
        if len(problems) > MAX_REPORTED:
            more = len(problems) - MAX_REPORTED
            problems = problems[:MAX_REPORTED] + [(label, "", f"... and {more} more problems")]
        raise ProfileError(problems)
    problems = semantic_problems(data)
    if problems:
        raise ProfileError([(label, k, m) for k, m in problems])


def semantic_problems(data: dict, *, own_file: bool = True) -> list[tuple[str, str]]:
    """What a JSON Schema cannot say: duplicates, sizes that parse, sensible combinations.

    ``own_file``: the data is one file's own keys (not merged with its parents), where
    a combination that contradicts itself is reported.
    """
    out: list[tuple[str, str]] = []
    net = data.get("network", {})
    ports = net.get("tcp_connect_ports", [])
    if len(set(ports)) != len(ports):
        out.append(("network.tcp_connect_ports", "lists a port twice"))
    if own_file and ports and net.get("mode") in ("none", "full"):
        out.append(("network.tcp_connect_ports", f"only used with `mode: restricted`, but mode is {net['mode']!r}; remove the ports or change the mode"))
    listen = net.get("listen_ports", [])
    if isinstance(listen, list) and len(set(listen)) != len(listen):
        out.append(("network.listen_ports", "lists a port twice"))
    if own_file and listen and net.get("mode") == "none":
        out.append(("network.listen_ports", "not used with `mode: none` (no IP socket exists there); "
                                            "remove the ports or change the mode"))
    fs = data.get("filesystem", {})
    # the values compared as bytes (the size keys and mps_memory_limit: x-compare in the schema),
    # limits first: the order problems are reported in
    in_bytes = [k for k, f in KEYS.items() if f.get("compare") == "bytes"]
    for key in sorted(in_bytes, key=lambda k: not k.startswith("limits.")):
        v = data
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if v is not None:
            try:
                parse_size(v)
            except ValueError as e:
                out.append((key, str(e)))
    if any(isinstance(p, str) and not [c for c in p.split("/") if c not in ("", ".")] for p in fs.get("hidden", [])):
        out.append(("filesystem.hidden", "hides `/`, which would leave the kernel nothing to run; "
                                         "list the sockets or directories to hide"))
    for kind, field in (("gpu", "devices"), ("tpu", "chips")):
        items = data.get("accelerators", {}).get(kind, {}).get(field)
        if items:
            keys = [device_key(d) for d in items]
            if len(set(keys)) != len(keys):
                out.append((f"accelerators.{kind}.{field}", "lists a device twice"))
    return out
