"""The per-key policy facts in profiles/schema.json (x-layers, x-narrow, x-inherit): complete, valid,
generated into sandbox_kernel/policy_facts.py, and what narrow() is derived from.

The narrow() of before the facts (per-key code) is kept below as the oracle for one commit: the
derived narrow() gives the same effective policy on generated pairs.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from sandbox_kernel import policy, policy_facts, policy_merge, resources, schema_doc
from sandbox_kernel.layers.base import HARDNESS
from sandbox_kernel.resolved import device_key, parse_size
from sandbox_kernel.resolved import rule_module as _rule_module
from test_policy_fuzz import CAPS, Gen, gen_valid

SCHEMA = policy.schema()
_path_within = policy_merge._path_within
_intersect_dirs = policy_merge._intersect_dirs
NETWORK_ORDER = {"none": 0, "restricted": 1, "full": 2}
ENFORCEMENT_ORDER = {"off": 0, "best-effort": 1, "required": 2}
SIZE_LIMITS = ("memory", "address_space", "file_size", "message_queues")


FACTS_FILE = Path(policy_facts.__file__)
INHERIT = {"replace", "concatenate", "merge", "none"}


# --------------------------------------------------------------------------- the facts themselves

def test_every_schema_key_carries_its_facts():
    """Which layers enforce it (layer NAMEs), how it inherits along `extends` and how it narrows
    under a ceiling: on every key a profile can set; a key added without them fails here."""
    keys = list(schema_doc.leaf_nodes(SCHEMA))
    assert len(keys) > 50
    for key, node in keys:
        for kw in schema_doc.FACT_KEYWORDS:
            assert kw in node, f"{key}: no {kw} in profiles/schema.json"
        assert set(node["x-layers"]) <= set(HARDNESS), (key, node["x-layers"])
        assert len(set(node["x-layers"])) == len(node["x-layers"]), key
        kind = node["x-narrow"]
        assert kind == "none" or kind in policy_merge.NARROW, (key, kind)
        assert node["x-inherit"] in INHERIT, key
        kinds_of = "array" if node.get("type") == "array" else "object" if node.get("type") == "object" else None
        if node["x-inherit"] == "concatenate":
            assert kinds_of == "array", key
        assert (node["x-inherit"] == "merge") == (kinds_of == "object"), key  # mappings merge key by key
        if kind == "stricter":
            assert sorted(node["x-order"]) == sorted(node["enum"]), key
        if "x-identity" in node:
            assert node["x-identity"] in policy_merge.IDENTITY, key
        for cond in ("x-sides-where", "x-empty-unless"):
            for other in node.get(cond, {}):
                assert other in policy_facts.KEYS and list(policy_facts.KEYS).index(other) < \
                    list(policy_facts.KEYS).index(key), (key, other)  # narrowed before this key
        for sibling in node.get("x-requires-same", []):
            assert key.rsplit(".", 1)[0] + "." + sibling in policy_facts.KEYS, (key, sibling)
        if kind in ("min", "max"):
            assert node.get("type") in ("integer", "number") or node.get("$ref") == "#/$defs/size" \
                or node.get("x-compare") == "bytes", key
    # only the schema's own keywords and the x- facts
    unknown = {kw for _k, node in keys for kw in node if kw.startswith("x-")} \
        - set(schema_doc.FACT_KEYWORDS) - set(schema_doc.FACT_PARAMS)
    assert not unknown, unknown


def test_sizes_are_the_keys_of_the_size_type():
    sizes = [k for k, node in schema_doc.leaf_nodes(SCHEMA) if node.get("$ref") == "#/$defs/size"]
    assert list(policy_facts.SIZE_KEYS) == sizes and "limits.memory" in sizes and "filesystem.tmp_size" in sizes


def test_the_schema_with_its_facts_is_valid_and_so_is_every_shipped_profile():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    shipped = sorted(Path(resources.schema_path()).parent.glob("*.yaml"))
    assert len(shipped) >= 5
    for f in shipped:
        policy.resolve(str(f))


def test_the_facts_table_is_generated_from_the_schema():
    assert FACTS_FILE.read_text() == schema_doc.render_facts(), (
        "sandbox_kernel/policy_facts.py is stale: run "
        "`python -m sandbox_kernel.schema_doc --facts > sandbox_kernel/policy_facts.py`")
    assert policy_facts.KEYS == schema_doc.facts(SCHEMA)


def test_inheritance_and_orders_come_from_the_facts():
    concatenated = {k for k, f in policy_facts.KEYS.items() if f["inherit"] == "concatenate"}
    assert {".".join(p) for p in policy_merge.CONCATENATED_LISTS} == concatenated \
        == {"imports.deny", "imports.allow", "shell.deny", "filesystem.hidden"}
    assert policy.NETWORK_ORDER == {"none": 0, "restricted": 1, "full": 2}
    assert policy.ENFORCEMENT_ORDER == {"off": 0, "best-effort": 1, "required": 2}


def test_narrow_follows_a_changed_fact(monkeypatch):
    """narrow() reads the facts (no per-key code left): changing a key's kind changes its result."""
    a = policy.Policy(policy_merge._fill_defaults(SCHEMA, {"limits": {"processes": 10}}), name="a", sources=[])
    b = policy.Policy(policy_merge._fill_defaults(SCHEMA, {"limits": {"processes": 20}}), name="b", sources=[])
    assert policy.narrow(a, b).limits["processes"] == 10
    facts = dict(policy_facts.KEYS["limits.processes"], narrow="max")
    monkeypatch.setattr(policy_merge, "_NARROWED",
                        [(p, facts if p == ["limits", "processes"] else f) for p, f in policy_merge._NARROWED])
    assert policy.narrow(a, b).limits["processes"] == 20


# --------------------------------------------------------------------------- the oracle: narrow() before the facts

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


def old_narrow(req, ceil):
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
    return out


def _extras(r: random.Random, raw: dict) -> dict:
    """Keys gen_valid leaves out: the other limits, GPU hardware and tool directories, TPU patterns."""
    if r.random() < 0.5:
        lim = raw.setdefault("limits", {})
        for key, values in (("message_queues", ["128KiB", 819200, "1M"]), ("pending_signals", [1, 1024]),
                            ("inotify_instances", [1, 16]), ("inotify_watches", [8192, 100])):
            if r.random() < 0.5:
                lim[key] = r.choice(values)
    if r.random() < 0.4:
        acc = raw.setdefault("accelerators", {})
        gpu, tpu = acc.setdefault("gpu", {}), acc.setdefault("tpu", {})
        if r.random() < 0.3:
            gpu["caps_dir"] = r.choice(["/dev/nvidia-caps", "/dev/other-caps"])
        if r.random() < 0.5:
            gpu["tool_dirs"] = r.sample(["/usr/local/nvidia/bin", "{which:nvidia-smi}", "/usr/local/cuda/bin"],
                                        r.randint(0, 3))
        if r.random() < 0.3:
            tpu["device_pattern"] = r.choice(["/dev/accel{index}", "/dev/tpu{index}"])
        if r.random() < 0.3:
            tpu["shared_nodes"] = r.sample(["/dev/vfio/vfio", "/dev/x"], r.randint(0, 2))
    if r.random() < 0.2:
        raw["capabilities"] = {"keep": {c: r.choice("ab") for c in r.sample(CAPS, r.randint(0, 4))}}
    return raw


def _policy(raw: dict, cleaned: bool) -> policy.Policy:  # raw: valid (test_policy_fuzz checks gen_valid)
    data = policy_merge._fill_defaults(SCHEMA, policy_merge._merge(policy_merge._chain_root(), raw))
    if cleaned:  # what resolve() does: ports only where the mode uses them
        if data["network"]["mode"] != "restricted":
            data["network"]["tcp_connect_ports"] = []
        if data["network"]["mode"] == "none":
            data["network"]["listen_ports"] = []
    return policy.Policy(data, name="g", sources=[])


@pytest.mark.parametrize("chunk", range(8))
def test_derived_narrow_equals_the_per_key_narrow(chunk, monkeypatch):
    """On 2,000 generated pairs (both orders, as resolve() leaves them and hand-built), the narrow()
    derived from the facts gives exactly the effective policy of the per-key code it replaced."""
    monkeypatch.setattr(policy_merge, "schema", lambda: SCHEMA)  # read once, not per $ref
    r = Gen(20 + chunk)
    for i in range(250):
        cleaned = i % 2 == 0
        a = _policy(_extras(r, gen_valid(r)), cleaned)
        b = _policy(_extras(r, gen_valid(r)), cleaned)
        for x, y in ((a, b), (b, a), (a, a)):
            want = old_narrow(x, y)
            got = policy.narrow(x, y).data
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), (x.data, y.data)
            assert got == want


# --------------------------------------------------------------------------- the facts' other readers

# What the human-facing texts (report's "enforced by", the README's table) call each layer.
LAYER_WORDS = [
    (r"seccomp", {"seccomp"}), (r"landlock", {"landlock"}),
    (r"mount[ _]namespace|tmpfs|bind mount|noexec", {"mount_namespace"}), (r"rlimit", {"rlimits"}),
    (r"cgroup", {"cgroup"}), (r"capabilit", {"capabilities"}),
    (r"pid[ _]namespace|user namespace", {"pid_namespace"}), (r"supervisor", {"pid_namespace", "cgroup"}),
    (r"import guard|pre-check|pre-execution|torch", {"import_guard"}),
    (r"environment|CUDA_VISIBLE_DEVICES|CUDA_MPS|MPS daemon", {"environment"}),
]


def named_layers(text: str) -> list[set[str]]:
    """The layers a text names: one set per mention (a supervisor is the PID namespace's or the cgroup's)."""
    import re

    return [layers for pattern, layers in LAYER_WORDS if re.search(pattern, text, re.I)]


def layers_of(key: str) -> set[str]:
    """A key's x-layers; a section's: those of its keys."""
    found = [k for k in policy_facts.KEYS if k == key or k.startswith(key + ".")]
    assert found, f"{key!r} is not a profile key of profiles/schema.json"
    return {name for k in found for name in policy_facts.KEYS[k]["layers"]}


def _rich_policy() -> policy.Policy:
    raw = {"network": {"mode": "restricted", "tcp_connect_ports": [443], "udp": True, "listen_ports": [8000]},
           "imports": {"deny": ["a", {"module": "b", "category": "mining", "reason": "r"}], "allow": ["a.b"]},
           "shell": {"deny": ["*evil*"]}, "filesystem": {"home": "/srv/{user}", "hidden": ["/h"]},
           "capabilities": {"keep": {"CAP_KILL": "signals"}}, "user_namespace": {"host_uid": "subordinate"},
           "accelerators": {"gpu": {"enabled": True, "devices": [0], "memory_fraction": 0.5, "mps_memory_limit": "8G"},
                            "tpu": {"enabled": True, "chips": [0]}},
           "limits": {k: (v if not policy_facts.KEYS[f"limits.{k}"]["size"] else "1GiB")
                      for k, v in (("memory", 0), ("address_space", 0), ("processes", 10), ("open_files", 64),
                                   ("file_size", 0), ("cpu_seconds", 60), ("inotify_instances", 8),
                                   ("inotify_watches", 100), ("message_queues", 0), ("pending_signals", 10))},
           "audit": {"log": "/var/log/x.jsonl", "violations": {"stop_after": 2, "notice": "n"}},
           "enforcement": {"seccomp": "best-effort", "pid_namespace": "off"}}
    policy.validate(raw, "rich")
    return policy.Policy(policy_merge._fill_defaults(SCHEMA, raw), name="rich", sources=[])


def test_report_rows_name_schema_keys_and_the_layers_the_schema_gives_them(profile_dir):
    """Every row of `profiles show` / `%sandbox` / doctor about a profile key names a key (or section)
    of the schema, its hard/soft is its layers' (x-layers, HARDNESS), and the layers its "enforced
    by" text names are among the key's x-layers."""
    from sandbox_kernel import report

    sections = set(SCHEMA["properties"])
    policies = [policy.resolve(n) for n in ("base", "free", "gpu", "research", "offline")] + [_rich_policy()]
    seen = set()
    for p in policies:
        for rule, _value, hard, how in report.policy_rows(p):
            key = rule.split(" ")[0]
            if key.split(".")[0] not in sections:
                continue  # not a profile key (core dumps, CUDA_VISIBLE_DEVICES, always denied syscalls, ...)
            seen.add(key)
            allowed = layers_of(key)
            if key.startswith("enforcement."):
                assert how == "profile" and hard == HARDNESS.get(key.split(".", 1)[1], "hard")
                continue
            for mention in named_layers(how):
                assert mention & allowed, (rule, how, mention, allowed)
            if key != "audit.log":  # hard only where a supervisor writes it: decided by the value
                assert hard == ("hard" if any(HARDNESS.get(lay) == "hard" for lay in allowed) else "soft"), rule
    assert {"network.mode", "limits.memory", "accelerators.gpu.tool_dirs", "audit.violations"} <= seen


def test_explain_names_a_layer_the_schema_gives_the_key():
    """explain.py's answers (layer, "KEY: why"): the layer is one of the key's x-layers."""
    import re

    from sandbox_kernel import explain
    from sandbox_kernel.layers import rlimits

    source = Path(explain.__file__).read_text()
    pairs = re.findall(r'return\s+"(\w+)",\s*\(?\s*f?"([a-z_.]+):', source)
    pairs += [(lay, key) for key in re.findall(r'return layer, \(?\s*f?"([a-z_.]+):', source)
              for lay in re.search(r'layer = "(\w+)" if .* else "(\w+)"', source).groups()]
    assert len(pairs) >= 8, pairs
    for layer, key in pairs:
        assert layer in layers_of(key), (layer, key)
    for key, _res, _value in rlimits.planned(_rich_policy()):  # "limits.KEY: ... fixed" is the rlimits layer's
        assert key == "core dumps" or "rlimits" in layers_of(f"limits.{key}"), key


def _readme_rows() -> list[tuple[list[str], str]]:
    """(keys, enforced by) of each row of the README's table of profile keys."""
    import re

    text = (Path(resources.schema_path()).resolve().parent.parent / "README.md").read_text()
    table = text.split("| key | meaning | default | enforced by |\n|---|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        keys, prefix = [], ""
        for name in re.findall(r"`([^`]+)`", cells[0]):
            if name.startswith("."):
                name = prefix + name
            prefix = name.rsplit(".", 1)[0]
            keys.append(name)
        rows.append((keys, cells[-1]))
    return rows


def test_the_readme_table_lists_every_key_with_the_layers_of_the_schema():
    """README.md's table of profile keys: every key of the schema has a row, and a row's "enforced
    by" names exactly the layers the schema gives its keys (x-layers), no other: fails on drift."""
    listed = set()
    for keys, how in _readme_rows():
        if keys == ["enforcement.<layer>"]:
            listed |= {k for k in policy_facts.KEYS if k.startswith("enforcement.")}
            continue
        want = set().union(*(layers_of(k) for k in keys))
        named = named_layers(how)
        for mention in named:
            assert mention & want, (keys, how, mention, want)
        missing = {lay for lay in want if not any(lay in m for m in named)}
        assert not missing, f"README row {keys}: 'enforced by' does not name {sorted(missing)} ({how!r})"
        listed |= {k for key in keys for k in policy_facts.KEYS if k == key or k.startswith(key + ".")}
    assert listed == set(policy_facts.KEYS), sorted(set(policy_facts.KEYS) - listed)
