"""Inheriting (``extends``) and narrowing (ceiling) profiles into the effective Policy.

Inheritance: a child's mappings merge key by key into the parent's; a child's list
replaces the parent's, except the rule lists ``imports.deny``, ``imports.allow``,
``shell.deny`` and ``filesystem.hidden``, which are concatenated (a child cannot
silently drop a parent's deny or un-hide a path); their schema defaults start every
chain (the daemon sockets ``filesystem.hidden`` lists by default stay hidden whatever a
profile lists). ``extends`` is a composition tool
for whoever writes profiles (the platform): a child may loosen anything else its
parent sets (``free`` adds network to ``base``). The boundary for a tenant is the
ceiling.

Narrowing: the platform may set ``SANDBOX_KERNEL_CEILING=<profile>`` in the Jupyter
server's environment. The effective policy is the requested profile narrowed by the
ceiling (``narrow``): deny, protected and hidden lists unite, allow lists and device
sets intersect (readable directories and kept capabilities too), numeric limits and sizes take the minimum, network takes the stricter
mode, enforcement the stricter level, ``noexec_writable`` is on when either side
turns it on, and the ceiling's ``home`` and audit log win where it sets them. The
effective policy is never looser than the ceiling, nor than the requested profile,
on any key (tests/policy/test_policy_fuzz.py states and checks this key by key).

Both are the schema's per-key facts (``x-inherit``, ``x-narrow`` and its parameters in
profiles/schema.json, generated into ``policy_facts``): ``narrow`` dispatches on each key's
narrow kind (``NARROW``), and the concatenated lists are the keys whose ``x-inherit`` is
``concatenate``.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
from typing import Any

from .errors import ProfileError
from .paths import within
from .policy_facts import KEYS
from .policy_load import load_file, schema, semantic_problems, validate
from .profile_files import CEILING_ENV, DEFAULT_PROFILE, chain_dirs, find_profile, is_path_like, profile_stem
from .resolved import Policy, device_key, parse_size
from .resolved import rule_module as _rule_module

MAX_EXTENDS_DEPTH = 16
# Orders of the ordered enums, from the schema's x-order (strictest first): network modes by how much
# they allow (none: 0), enforcement levels by how strict they are (off: 0).
NETWORK_ORDER = {m: i for i, m in enumerate(KEYS["network.mode"]["order"])}
ENFORCEMENT_ORDER = {lv: i for i, lv in enumerate(reversed(KEYS["enforcement.seccomp"]["order"]))}
# The lists a child adds to rather than replaces along `extends` (x-inherit: concatenate).
CONCATENATED_LISTS = {tuple(k.split(".")) for k, f in KEYS.items() if f["inherit"] == "concatenate"}


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


def _chain_root() -> dict:
    """Where every chain starts: the schema's defaults of the concatenated lists.

    So a default entry (the hidden daemon sockets) is a parent entry of every profile:
    a profile that lists its own entries adds to it, it does not replace it.
    """
    root: dict = {}
    for section, key in sorted(CONCATENATED_LISTS):
        default = schema()["properties"][section]["properties"][key].get("default", [])
        root.setdefault(section, {})[key] = copy.deepcopy(default)
    return root


def _load_chain(name: str, env: dict[str, str] | None) -> tuple[dict, list[str]]:
    """Load a profile and its ancestors; returns merged raw data and the chain of files.

    Parents are looked up by ``chain_dirs``: the search path, after the file's own
    directory when the profile is given as a file.
    """
    chain: list[str] = []
    datas: list[dict] = []
    dirs = chain_dirs(name, env)
    current = name
    referrer: tuple[str, str] | None = None
    while True:
        try:
            path = find_profile(current, env, dirs)
        except ProfileError as e:
            if referrer:  # a missing parent is the child's error, at its `extends` key
                raise ProfileError.one(referrer[0], "extends", f"parent profile {current!r} not found: {e.problems[0][2]}") from None
            raise
        if path in chain:
            # Reported in the file asked for (the one being validated or started), naming the
            # file whose `extends` closes the cycle.
            names = " -> ".join(profile_stem(p) for p in chain + [path])
            closing = "" if chain[-1] == chain[0] else f" ({chain[-1]} has `extends: {current}`)"
            raise ProfileError.one(chain[0], "extends", f"inheritance cycle: {names}{closing}; remove one `extends`")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise ProfileError.one(path, "extends", f"more than {MAX_EXTENDS_DEPTH} levels of `extends`")
        data = load_file(path)
        validate(data, path)
        chain.append(path)
        datas.append(data)
        parent = data.get("extends")
        if not parent:
            break
        referrer = (path, parent)
        current = parent
    merged = _chain_root()
    for data in reversed(datas):
        merged = _merge(merged, {k: v for k, v in data.items() if k != "extends"})
    return merged, chain


def resolve(name: str = DEFAULT_PROFILE, env: dict[str, str] | None = None) -> Policy:
    """Resolve one profile (with its parents) into a complete Policy, no ceiling."""
    merged, chain = _load_chain(name, env)
    data = _fill_defaults(schema(), merged)
    if data["network"]["mode"] != "restricted":
        # Ports a parent listed for `restricted` mean nothing once a child picks another
        # mode: the resolved policy drops them (and stays a valid profile on its own).
        data["network"]["tcp_connect_ports"] = []
    if data["network"]["mode"] == "none":
        data["network"]["listen_ports"] = []  # no IP socket exists there
    problems = semantic_problems(data, own_file=False)
    if problems:
        raise ProfileError([(chain[0], k, m) for k, m in problems])
    display = profile_stem(chain[0]) if is_path_like(name) else name
    return Policy(data, name=display, sources=chain)


def effective(name: str | None = None, env: dict[str, str] | None = None,
              cache: str | None = None) -> Policy:
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


# --------------------------------------------------------------------------- warnings


REALLOW_DOC = "'Re-allowing what a parent denies' in docs/profile-reference.md"


def warnings(policy: Policy) -> list[str]:
    """What a valid profile says that takes no effect (``profiles validate`` and ``show``
    print these): an ``imports.allow`` entry of the same name as an ``imports.deny`` entry
    (a parent's, usually ``base``'s), where the deny wins."""
    denies = {_rule_module(d) for d in policy.data["imports"]["deny"]}
    out = []
    for entry in policy.data["imports"]["allow"]:
        module = _rule_module(entry)
        if module not in denies:
            continue
        where = [f for f in policy.sources + policy.ceiling_sources if _denies(f, module)]
        out.append(f"imports.allow: {module!r} has no effect: imports.deny lists {module!r} too"
                   + (f" (in {', '.join(where)})" if where else "")
                   + ", and at equal specificity the deny wins; deny lists concatenate along `extends`, so a "
                     f"profile cannot drop its parent's deny. For how a platform lets a tenant import it, see "
                     f"{REALLOW_DOC}")
    return out


def _denies(path: str, module: str) -> bool:
    try:
        deny = (load_file(path).get("imports") or {}).get("deny") or []
        return any(_rule_module(d) == module for d in deny)
    except (ProfileError, TypeError, KeyError, AttributeError):
        return False


# --------------------------------------------------------------------------- narrowing


def _path_within(p: str, root: str) -> bool:
    # Normalised first: `/home/u/../../etc` is not within `/home/u` (the schema refuses
    # `..` in profile paths; this keeps hand-built policies honest too).
    return within(posixpath.normpath(p), posixpath.normpath(root))


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


def _rule_pattern(item: Any) -> str:
    return item if isinstance(item, str) else item["pattern"]


# What identifies an entry of a list, for union and intersection (x-identity): the value itself by default.
IDENTITY = {None: lambda v: v, "module": _rule_module, "pattern": _rule_pattern, "device": device_key}
_ABSENT = object()  # a key a side does not have, or a narrowed value that leaves the key out


def _bound(v, f: dict):
    """None where a side sets no bound (absent, null, or the kind's `unlimited` value), else comparable."""
    if v is None or v is _ABSENT or ("unlimited" in f and v == f["unlimited"]):
        return None
    return parse_size(v) if f.get("compare") == "bytes" else v


def _min(a, b, f: dict):
    ba, bb = _bound(a, f), _bound(b, f)
    if ba is None and bb is None:
        return f.get("unlimited", _ABSENT)
    if ba is None:
        return b
    if bb is None:
        return a
    return a if ba <= bb else b


def _intersection(a, b, f: dict):
    if "universal" in f:  # a value that allows everything (`any`; null: every device present)
        u = f["universal"]
        a, b = (None if a is _ABSENT else a), (None if b is _ABSENT else b)
        if a == u:
            return _ABSENT if b is None else b
        if b == u:
            return a
    if isinstance(a, dict):  # a mapping (capabilities.keep): the entries both sides name, the request's values
        return {k: v for k, v in a.items() if k in b}
    if "identity" not in f:
        return [v for v in a if v in b]
    key = IDENTITY[f["identity"]]
    keys_b = {json.dumps(key(v), sort_keys=True) for v in b}
    return [v for v in a if json.dumps(key(v), sort_keys=True) in keys_b]


def _union_kind(a, b, f: dict):
    key = IDENTITY[f.get("identity")]
    return _union(b, a, key) if f.get("first") == "ceiling" else _union(a, b, key)


def _stricter(a, b, f: dict):
    return min(a, b, key=f["order"].index)  # the order lists the strictest first


# narrow kind (x-narrow) -> how the request's value (a) and the ceiling's (b) of a key combine
NARROW = {
    "request": lambda a, b, f: a,
    "ceiling": lambda a, b, f: b if b is not None and b is not _ABSENT else a,
    "stricter": _stricter,
    "min": _min,
    "max": lambda a, b, f: max(a, b),
    "and": lambda a, b, f: bool(a) and bool(b),
    "or": lambda a, b, f: bool(a or b),
    "union": _union_kind,
    "intersection": _intersection,
    "intersection-paths": lambda a, b, f: _intersect_dirs(a, b),
}
# what a kind yields where a condition (x-requires-same, x-empty-unless, x-sides-where) empties it
EMPTY = {"and": bool, "intersection": list}
# (path, facts) of every key narrow() combines, in the schema's order (a key's conditions may read a key before it)
_NARROWED = [(key.split("."), f) for key, f in KEYS.items() if f["narrow"] != "none"]


def _get(data: dict, path: list[str], f: dict | None = None):
    for p in path:
        if not isinstance(data, dict) or p not in data:
            return copy.deepcopy(f["absent"]) if f and "absent" in f else _ABSENT
        data = data[p]
    return data


def _put(data: dict, path: list[str], value) -> None:
    for p in path[:-1]:
        data = data.setdefault(p, {})
    if value is _ABSENT:
        data.pop(path[-1], None)
    else:
        data[path[-1]] = value


def narrow(req: Policy, ceil: Policy) -> Policy:
    """Effective policy: never permits what either side forbids. Each key combines by its
    narrow kind (policy_facts.KEYS, from the schema's x-narrow), in the schema's order."""
    a, b = req.data, ceil.data
    out = copy.deepcopy(a)
    for path, f in _NARROWED:
        kind = f["narrow"]
        # the request's value from `out` (a copy already); the ceiling's copied where it is kept whole
        theirs = _get(b, path, f)
        sides = [_get(out, path, f), theirs]
        if "sides_where" in f:  # only the sides that use this value take part (the ports of `restricted`)
            sides = [v for v, d in zip(sides, (a, b))
                     if all(_get(d, k.split(".")) == want for k, want in f["sides_where"].items())]
            value = sides[0] if sides else EMPTY[kind]()
            for other in sides[1:]:
                value = NARROW[kind](value, other, f)
        else:
            value = NARROW[kind](sides[0], sides[1], f)
        if "requires_same" in f and any(_get(a, path[:-1] + [k]) != _get(b, path[:-1] + [k])
                                        for k in f["requires_same"]):
            value = EMPTY[kind]()  # the two sides describe different device nodes: nothing is allowed by both
        if "empty_unless" in f and any(_get(out, k.split(".")) not in allowed
                                       for k, allowed in f["empty_unless"].items()):
            value = EMPTY[kind]()  # e.g. no ports where the narrowed network mode uses none
        if value is theirs and isinstance(value, (list, dict)):
            value = copy.deepcopy(value)
        _put(out, path, value)
    return Policy(out, name=req.name, sources=req.sources, ceiling=ceil.name,
                  ceiling_sources=ceil.sources)
