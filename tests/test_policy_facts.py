"""The per-key policy facts in profiles/schema.json (x-layers, x-narrow, x-inherit): complete, valid,
generated into sandbox_kernel/policy_facts.py, and what narrow() is derived from.

The narrow() of before the facts (per-key code) was this file's oracle for one commit (9a741c0: the
derived narrow() gave the same effective policy on 2,000 generated pairs); what it made of a set of
those pairs is recorded in tests/narrow_cases.json.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from sandbox_kernel import policy, policy_facts, policy_merge, resources, schema_doc
from sandbox_kernel.layers.base import HARDNESS

SCHEMA = policy.schema()


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


# --------------------------------------------------------------------------- recorded cases

CASES = Path(__file__).resolve().parent / "narrow_cases.json"
ABSENT = "<absent>"


def _value(data: dict, key: str):
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return ABSENT
        data = data[part]
    return data


def _policy(raw: dict, resolved: bool) -> policy.Policy:
    """A policy from a profile's own keys: its chain root and defaults, as resolve() fills them; with
    `resolved`, resolve()'s dropping of ports a mode does not use too (else as a hand-built one)."""
    data = policy_merge._fill_defaults(SCHEMA, policy_merge._merge(policy_merge._chain_root(), copy.deepcopy(raw)))
    if resolved:
        if data["network"]["mode"] != "restricted":
            data["network"]["tcp_connect_ports"] = []
        if data["network"]["mode"] == "none":
            data["network"]["listen_ports"] = []
    return policy.Policy(data, name="g", sources=[])


def test_narrow_gives_the_recorded_effective_policies():
    """Request/ceiling pairs, each with what the per-key narrow() before the schema's facts made of
    it (recorded from that code, this file's oracle in commit 9a741c0): the keys whose effective value
    differs from the request's, and that value. The derived narrow() gives the same, key by key.

    The pairs: generated by test_policy_fuzz.gen_valid (and the keys it leaves out), chosen so that
    each change of a key's facts that those pairs can show (a parameter dropped, another narrow kind)
    changes at least one case; and hand-made ones for a MIG device named two ways, sizes compared as
    bytes ("16G" and "8000M"), other device nodes on the two sides, and a hand-built `none` policy
    listing listen ports. (x-absent, for data a side lacks, is not exercised: filled data has every key.)
    """
    cases = json.loads(CASES.read_text())
    assert len(cases) >= 15
    changed_keys = set()
    for case in cases:
        req, ceil = _policy(case["request"], case["resolved"]), _policy(case["ceiling"], case["resolved"])
        out = policy.narrow(req, ceil).data
        for key in policy_facts.KEYS:
            want = case["changed"].get(key, _value(req.data, key))
            assert _value(out, key) == want, (key, case)
        changed_keys |= set(case["changed"])
    kinds = {policy_facts.KEYS[k]["narrow"] for k in changed_keys}
    assert kinds >= set(policy_merge.NARROW) - {"request"}, kinds  # every kind that can change a value


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
