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
on any key (tests/test_policy_fuzz.py states and checks this key by key).
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
from typing import Any

from .errors import ProfileError
from .paths import within
from .policy_load import load_file, schema, semantic_problems, validate
from .profile_files import CEILING_ENV, DEFAULT_PROFILE, chain_dirs, find_profile, is_path_like, profile_stem
from .resolved import Policy, device_key, parse_size
from .resolved import rule_module as _rule_module

MAX_EXTENDS_DEPTH = 16
NETWORK_ORDER = {"none": 0, "restricted": 1, "full": 2}
ENFORCEMENT_ORDER = {"off": 0, "best-effort": 1, "required": 2}
CONCATENATED_LISTS = {("imports", "deny"), ("imports", "allow"), ("shell", "deny"), ("filesystem", "hidden")}
SIZE_LIMITS = ("memory", "address_space", "file_size", "message_queues")


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


def resolve(name: str = DEFAULT_PROFILE, env: dict[str, str] | None = None) -> "Policy":
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


# --------------------------------------------------------------------------- warnings


REALLOW_DOC = "'Re-allowing what a parent denies' in docs/profile-reference.md"


def warnings(policy: "Policy") -> list[str]:
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


def _narrow_violations(a: dict, b: dict) -> dict:
    stops = [n for n in (a["stop_after"], b["stop_after"]) if n]
    return {"categories": list(dict.fromkeys(a["categories"] + b["categories"])),
            "notice": b["notice"] if b["notice"] is not None else a["notice"],
            "stop_after": min(stops) if stops else 0,
            "window_seconds": max(a["window_seconds"], b["window_seconds"]),
            "block_seconds": max(a["block_seconds"], b["block_seconds"])}


def narrow(req: "Policy", ceil: "Policy") -> "Policy":
    """Effective policy: never permits what either side forbids."""
    a, b = req.data, ceil.data
    out = copy.deepcopy(a)

    # A layer one side does not name (data from an older writer) counts as `required`.
    out["enforcement"] = {
        k: max(a["enforcement"].get(k, "required"), b["enforcement"].get(k, "required"),
               key=ENFORCEMENT_ORDER.__getitem__)
        for k in {**a["enforcement"], **b["enforcement"]}
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
    la, lb = na.get("listen_ports", []), nb.get("listen_ports", [])
    if la == "any" or lb == "any":
        listen = lb if la == "any" else la
    else:
        listen = [p for p in la if p in lb]
    if mode == "none":
        listen = []
    out["network"] = {"mode": mode, "tcp_connect_ports": list(ports), "udp": udp,
                      "listen_ports": listen if listen == "any" else list(listen)}

    out["exec"] = {"allow": _intersect_dirs(a["exec"]["allow"], b["exec"]["allow"])}
    fa, fb = a["filesystem"], b["filesystem"]
    out["filesystem"] = {
        "writable": _intersect_dirs(fa["writable"], fb["writable"]),
        "readable": _intersect_dirs(fa["readable"], fb["readable"]),
        "protected": _union(fa["protected"], fb["protected"]),
        "hidden": _union(fa["hidden"], fb["hidden"]),
        "noexec_writable": bool(fa["noexec_writable"] or fb["noexec_writable"]),
        "tmp_size": _min_opt(fa["tmp_size"], fb["tmp_size"], parse_size),
        "shm_size": _min_opt(fa["shm_size"], fb["shm_size"], parse_size),
        # Where the tenant's home is, not how much it may do: the platform's (ceiling's) choice wins.
        "home": fb["home"] if fb["home"] is not None else fa["home"],
    }

    out["capabilities"] = {"keep": {cap: why for cap, why in a["capabilities"]["keep"].items()
                                    if cap in b["capabilities"]["keep"]}}
    # a kernel of its own host uid is the stricter: either side asking for it wins
    hosts = {a.get("user_namespace", {}).get("host_uid", "same"), b.get("user_namespace", {}).get("host_uid", "same")}
    out["user_namespace"] = {"host_uid": "subordinate" if "subordinate" in hosts else "same"}

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
        conv = parse_size if key in SIZE_LIMITS else (lambda v: v)
        limits[key] = _min_opt(a["limits"].get(key), b["limits"].get(key), conv)
    out["limits"] = limits

    # The platform's audit log wins; the tenant's profile cannot turn auditing off.
    # The trail keeps the more of the two (size and rotations), the ceiling's metrics file where it
    # names one; the violation policy is the stricter of the two (every banned category of either,
    # the lower stop count, the longer window and block; the ceiling's notice where it has one).
    aa, ba = a["audit"], b["audit"]
    out["audit"] = {"log": ba["log"] or aa["log"], "max_bytes": max(aa["max_bytes"], ba["max_bytes"]),
                    "keep": max(aa["keep"], ba["keep"]), "metrics": ba["metrics"] or aa["metrics"],
                    "violations": _narrow_violations(a["audit"]["violations"], b["audit"]["violations"])}
    out["description"] = a.get("description", "")
    return Policy(out, name=req.name, sources=req.sources, ceiling=ceil.name,
                  ceiling_sources=ceil.sources)
