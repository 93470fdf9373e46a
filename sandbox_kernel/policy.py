"""Policy profiles: find, load, validate, inherit (``extends``), narrow (ceiling).

A profile is YAML data checked against one JSON Schema (``profiles/schema.json``),
which also carries every default. Nothing here enforces anything: the layers in
``sandbox_kernel.layers`` and the import guard read the resolved ``Policy``.

Search path for a profile name: the directories in ``SANDBOX_KERNEL_PROFILE_PATH``
(colon-separated), then ``/etc/sandbox-kernel/profiles``, then the profiles shipped
with the package. A name resolves to ``<dir>/<name>.yaml``; a path to a file is
accepted too.

Inheritance: a child's mappings merge key by key into the parent's; a child's list
replaces the parent's, except the rule lists ``imports.deny``, ``imports.allow`` and
``shell.deny``, which are concatenated (a child cannot silently drop a parent's deny).

Narrowing: the platform may set ``SANDBOX_KERNEL_CEILING=<profile>`` in the Jupyter
server's environment. The effective policy is the requested profile narrowed by the
ceiling (``narrow``): deny lists unite, allow lists and device sets intersect, numeric
limits take the minimum, network takes the stricter mode, enforcement the stricter level.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import stat
from typing import Any, Iterable
from functools import lru_cache
from pathlib import Path

from . import resources
from .errors import ProfileError
from .resolved import Policy, normalise_distribution, rule_module as _rule_module

__all__ = ["Policy", "ProfileError", "effective", "narrow", "normalise_distribution", "resolve", "validate"]

PROFILE_PATH_ENV = "SANDBOX_KERNEL_PROFILE_PATH"
CEILING_ENV = "SANDBOX_KERNEL_CEILING"
SYSTEM_PROFILE_DIR = "/etc/sandbox-kernel/profiles"
DEFAULT_PROFILE = "default"
MAX_PROFILE_BYTES = 256 * 1024
MAX_EXTENDS_DEPTH = 16
MAX_REPORTED = 20  # problems listed per file
MAX_SIZE = 2**63 - 1  # what setrlimit and cgroup files take

NETWORK_ORDER = {"none": 0, "restricted": 1, "full": 2}
ENFORCEMENT_ORDER = {"off": 0, "best-effort": 1, "required": 2}
CONCATENATED_LISTS = {("imports", "deny"), ("imports", "allow"), ("shell", "deny")}


# --------------------------------------------------------------------------- finding


def search_path(env: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    dirs = [Path(p) for p in env.get(PROFILE_PATH_ENV, "").split(":") if p]
    dirs.append(Path(SYSTEM_PROFILE_DIR))
    dirs.append(resources.shipped_profiles_dir())
    return dirs


def is_path_like(name: str) -> bool:
    return "/" in name or name.endswith((".yaml", ".yml"))


def find_profile(name: str, env: dict[str, str] | None = None) -> Path:
    """Return the file for a profile name or path, or raise ProfileError."""
    if is_path_like(name):
        p = Path(name).expanduser()
        if not p.is_file():
            raise ProfileError.one(name, "", "profile file not found; give an existing .yaml file or a profile name")
        return p.resolve()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ProfileError.one(name, "", "not a valid profile name (letters, digits, '.', '_', '-')")
    dirs = search_path(env)
    for d in dirs:
        p = d / f"{name}.yaml"
        if p.is_file():
            return p.resolve()
    raise ProfileError.one(
        name, "", "no such profile; looked in " + ", ".join(str(d) for d in dirs)
        + f" (add a directory with {PROFILE_PATH_ENV}, or run `sandbox-kernel profiles list`)")


def list_profiles(env: dict[str, str] | None = None) -> list[tuple[str, Path]]:
    """Every profile name on the search path, first one of each name wins."""
    seen: dict[str, Path] = {}
    for d in search_path(env):
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                seen.setdefault(p.stem, p)
    return sorted(seen.items())


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

    return yaml, Loader


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
    empty = "file is empty; a profile is a YAML mapping such as `extends: base`"
    if not text.strip():  # whitespace only (tabs included, which YAML itself would refuse)
        raise ProfileError.one(label, "", empty)
    yaml, loader = _yaml_loader()
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ProfileError.one(label, "", f"not valid YAML: {where}{problem}") from None
    except RecursionError:
        raise ProfileError.one(label, "", "not valid YAML: nested too deeply") from None
    if data is None:
        raise ProfileError.one(label, "", empty)
    if not isinstance(data, dict):
        raise ProfileError.one(label, "", f"expected a YAML mapping of profile keys (such as `extends: base`), found {_yaml_type(data)} {_short(data)}")
    for k in data:
        if not isinstance(k, str):
            raise ProfileError.one(label, str(k), "keys must be strings")
    return data


def _yaml_type(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "list", dict: "mapping", str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__)


def _found(value: Any) -> str:
    if value is None:
        return "nothing (an empty value)"
    return f"{_yaml_type(value)} {_short(value)}"


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value found in a file, cut short: an error message stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------- validating


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.schema_path().read_text())


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    # The shipped schema is checked against its meta-schema by the test suite, not at
    # every kernel start (that check alone costs ~18 ms).
    return jsonschema.Draft202012Validator(schema())


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
    problems = _semantic_problems(data)
    if problems:
        raise ProfileError([(label, k, m) for k, m in problems])


def _semantic_problems(data: dict, *, own_file: bool = True) -> list[tuple[str, str]]:
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
    for key in ("memory", "address_space", "file_size"):
        v = data.get("limits", {}).get(key)
        if v is not None:
            try:
                parse_size(v)
            except ValueError as e:
                out.append((f"limits.{key}", str(e)))
    for kind, field in (("gpu", "devices"), ("tpu", "chips")):
        items = data.get("accelerators", {}).get(kind, {}).get(field)
        if items:
            keys = [device_key(d) for d in items]
            if len(set(keys)) != len(keys):
                out.append((f"accelerators.{kind}.{field}", "lists a device twice"))
    return out


_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)B?$")


def parse_size(value: int | str) -> int:
    """512MiB, 8G, 1.5GB, 1048576 -> bytes (K/M/G/T are powers of 1024 with or without i)."""
    from fractions import Fraction  # exact arithmetic; imported here, off the launcher's path
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; expected bytes or a string such as 8GiB")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{value} is not a positive size")
        if value > MAX_SIZE:
            raise ValueError(f"{value} is too large; at most {MAX_SIZE} bytes (8 EiB)")
        return value
    m = _SIZE_RE.match(str(value).strip())
    if not m:
        raise ValueError(f"{value!r} is not a size; expected bytes or a string such as 512MiB, 8G")
    # Exact arithmetic: a float turns a long digit string into inf (OverflowError).
    number, unit = Fraction(m.group(1)), m.group(2)
    result = int(number * 1024 ** "_KMGT".index(unit or "_"))
    if result < 1:
        raise ValueError(f"{value!r} is not a positive size")
    if result > MAX_SIZE:
        raise ValueError(f"{value!r} is too large; at most {MAX_SIZE} bytes (8 EiB)")
    return result


def device_key(d: Any) -> Any:
    """Identity of a device entry: an index, or a MIG UUID."""
    if isinstance(d, dict):
        return d["mig"]
    return d


# --------------------------------------------------------------------------- inheritance


def _merge(parent: Any, child: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(parent, dict) and isinstance(child, dict):
        out = dict(parent)
        for k, v in child.items():
            out[k] = _merge(parent[k], v, path + (k,)) if k in parent else copy.deepcopy(v)
        return out
    if path in CONCATENATED_LISTS and isinstance(parent, list) and isinstance(child, list):
        return parent + [c for c in child if c not in parent]
    return copy.deepcopy(child)


def _fill_defaults(sub: dict, data: Any) -> Any:
    if "$ref" in sub:
        sub = schema()["$defs"][sub["$ref"].rsplit("/", 1)[-1]]
    if not isinstance(data, dict) or "properties" not in sub:
        return data
    out = dict(data)
    for key, prop in sub["properties"].items():
        if key not in out and "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        if key in out:
            out[key] = _fill_defaults(prop, out[key])
    return out


def _load_chain(name: str, env: dict[str, str] | None) -> tuple[dict, list[str]]:
    """Load a profile and its ancestors; returns merged raw data and the chain of files."""
    chain: list[Path] = []
    datas: list[dict] = []
    current = name
    referrer: tuple[str, str] | None = None
    while True:
        try:
            path = find_profile(current, env)
        except ProfileError as e:
            if referrer:  # a missing parent is the child's error, at its `extends` key
                raise ProfileError.one(referrer[0], "extends", f"parent profile {current!r} not found: {e.problems[0][2]}") from None
            raise
        if path in chain:
            names = " -> ".join(p.stem for p in chain + [path])
            raise ProfileError.one(str(chain[-1]), "extends", f"inheritance cycle: {names}; remove one `extends`")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise ProfileError.one(str(path), "extends", f"more than {MAX_EXTENDS_DEPTH} levels of `extends`")
        data = load_file(path)
        validate(data, str(path))
        chain.append(path)
        datas.append(data)
        parent = data.get("extends")
        if not parent:
            break
        referrer = (str(path), parent)
        current = parent
    merged: dict = {}
    for data in reversed(datas):
        merged = _merge(merged, {k: v for k, v in data.items() if k != "extends"})
    return merged, [str(p) for p in chain]


def resolve(name: str = DEFAULT_PROFILE, env: dict[str, str] | None = None) -> "Policy":
    """Resolve one profile (with its parents) into a complete Policy, no ceiling."""
    merged, chain = _load_chain(name, env)
    data = _fill_defaults(schema(), merged)
    problems = _semantic_problems(data, own_file=False)
    if problems:
        raise ProfileError([(chain[0], k, m) for k, m in problems])
    display = Path(chain[0]).stem if is_path_like(name) else name
    return Policy(data, name=display, sources=chain)


def effective(name: str | None = None, env: dict[str, str] | None = None,
              cache: str | None = None) -> "Policy":
    """The requested profile narrowed by the ceiling named in SANDBOX_KERNEL_CEILING.

    ``cache``: a validated-policy cache (see policy_cache), used where still valid.
    """
    from . import policy_cache

    def load(n: str) -> Policy:
        return policy_cache.lookup(cache, n, env) or resolve(n, env)

    env = os.environ if env is None else env
    requested = load(name or DEFAULT_PROFILE)
    ceiling_name = env.get(CEILING_ENV, "").strip()
    if not ceiling_name:
        return requested
    try:
        ceiling = load(ceiling_name)
    except ProfileError as e:
        where = f"{CEILING_ENV}={ceiling_name}"
        raise ProfileError([(where if f == ceiling_name else f"{where} ({f})", k or "", m)
                            for f, k, m in e.problems]) from None
    return narrow(requested, ceiling)


# --------------------------------------------------------------------------- narrowing


def _path_within(p: str, root: str) -> bool:
    # Normalised first: `/home/u/../../etc` is not within `/home/u` (the schema refuses
    # `..` in profile paths; this keeps hand-built policies honest too).
    p, root = posixpath.normpath(p), posixpath.normpath(root)
    return p == root or p.startswith(root.rstrip("/") + "/")


def _intersect_dirs(a: list[str], b: list[str]) -> list[str]:
    """Directory grants allowed by both sides: the deeper of each nested pair."""
    out: list[str] = []
    for x in a:
        for y in b:
            deeper = x if _path_within(x, y) else y if _path_within(y, x) else None
            if deeper is not None and deeper not in out:
                out.append(deeper)
    return out


def _union(a: list, b: list, key=lambda v: v) -> list:
    seen = {json.dumps(key(v), sort_keys=True) for v in a}
    return list(a) + [v for v in b if json.dumps(key(v), sort_keys=True) not in seen]


def _min_opt(a, b, conv=lambda v: v):
    if a is None:
        return b
    if b is None:
        return a
    return a if conv(a) <= conv(b) else b


def _rule_pattern(item: Any) -> str:
    return item if isinstance(item, str) else item["pattern"]


def _narrow_devices(a: dict, b: dict, field: str, pattern_keys: tuple[str, ...]) -> dict:
    out = dict(a)
    out["enabled"] = bool(a.get("enabled")) and bool(b.get("enabled"))
    same_hw = all(a.get(k) == b.get(k) for k in pattern_keys)
    da, db = a.get(field), b.get(field)
    if not same_hw:
        # The two sides describe different device nodes: nothing is allowed by both.
        out["enabled"] = False
        out[field] = []
    elif da is None:
        out[field] = copy.deepcopy(db)
    elif db is None:
        out[field] = copy.deepcopy(da)
    else:
        keys_b = {json.dumps(device_key(d)) for d in db}
        out[field] = [d for d in da if json.dumps(device_key(d)) in keys_b]
    if out.get(field) is None:
        out.pop(field, None)
    return out


def narrow(req: "Policy", ceil: "Policy") -> "Policy":
    """Effective policy: never permits what either side forbids."""
    a, b = req.data, ceil.data
    out = copy.deepcopy(a)

    out["enforcement"] = {
        k: max(a["enforcement"][k], b["enforcement"][k], key=ENFORCEMENT_ORDER.__getitem__)
        for k in a["enforcement"]
    }
    out["imports"] = {
        "deny": _union(b["imports"]["deny"], a["imports"]["deny"], _rule_module),
        "allow": [m for m in a["imports"]["allow"] if m in b["imports"]["allow"]],
    }
    out["shell"] = {"deny": _union(b["shell"]["deny"], a["shell"]["deny"], _rule_pattern)}

    na, nb = a["network"], b["network"]
    mode = min(na["mode"], nb["mode"], key=NETWORK_ORDER.__getitem__)
    if mode == "restricted":
        restricted = [n for n in (na, nb) if n["mode"] == "restricted"]
        ports = restricted[0]["tcp_connect_ports"]
        for n in restricted[1:]:
            ports = [p for p in ports if p in n["tcp_connect_ports"]]
        udp = all(n["udp"] for n in restricted)
    else:
        ports, udp = [], False
    out["network"] = {"mode": mode, "tcp_connect_ports": list(ports), "udp": udp}

    out["exec"] = {"allow": _intersect_dirs(a["exec"]["allow"], b["exec"]["allow"])}
    out["filesystem"] = {
        "writable": _intersect_dirs(a["filesystem"]["writable"], b["filesystem"]["writable"]),
        "protected": _union(a["filesystem"]["protected"], b["filesystem"]["protected"]),
    }

    ga, gb = a["accelerators"]["gpu"], b["accelerators"]["gpu"]
    gpu = _narrow_devices(ga, gb, "devices", ("device_pattern", "caps_dir", "capabilities_root"))
    gpu["shared_nodes"] = [n for n in ga["shared_nodes"] if n in gb["shared_nodes"]]
    gpu["tool_dirs"] = [d for d in ga["tool_dirs"] if d in gb["tool_dirs"]]
    for key in ("memory_fraction",):
        v = _min_opt(ga.get(key), gb.get(key))
        if v is None:
            gpu.pop(key, None)
        else:
            gpu[key] = v
    mps = _min_opt(ga.get("mps_memory_limit"), gb.get("mps_memory_limit"), parse_size)
    if mps is None:
        gpu.pop("mps_memory_limit", None)
    else:
        gpu["mps_memory_limit"] = mps
    ta, tb = a["accelerators"]["tpu"], b["accelerators"]["tpu"]
    tpu = _narrow_devices(ta, tb, "chips", ("device_pattern", "vfio_pattern"))
    tpu["shared_nodes"] = [n for n in ta["shared_nodes"] if n in tb["shared_nodes"]]
    out["accelerators"] = {"gpu": gpu, "tpu": tpu}

    limits: dict[str, Any] = {}
    for key in set(a["limits"]) | set(b["limits"]):
        conv = parse_size if key in ("memory", "address_space", "file_size") else (lambda v: v)
        limits[key] = _min_opt(a["limits"].get(key), b["limits"].get(key), conv)
    out["limits"] = limits

    # The platform's audit log wins; the tenant's profile cannot turn auditing off.
    out["audit"] = {"log": b["audit"]["log"] or a["audit"]["log"]}
    out["description"] = a.get("description", "")
    return Policy(out, name=req.name, sources=req.sources, ceiling=ceil.name,
                  ceiling_sources=ceil.sources)


# --------------------------------------------------------------------------- the resolved policy
