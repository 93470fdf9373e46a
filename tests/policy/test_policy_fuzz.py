"""Fuzzing the profile loader and resolver, with hypothesis.

Two guarantees, over more than 10,000 generated documents in all (the budget of each
test is in its ``settings``; ``DOCUMENTS`` below adds them up):

(a) **Only our error.** For any document, YAML text or structured data, valid or
    near-valid, alone or in an ``extends`` graph, loading and resolving either gives a
    ``Policy`` or raises ``ProfileError``, whose messages are printable (UTF-8, no
    control characters, so the CLI can always print them). A policy that loads is
    also usable downstream: it survives the JSON transport, validates again, has the
    types the schema names (an ``integer`` is an ``int``, never ``5.0`` or ``True``;
    numbers are finite), renders in ``profiles show`` and narrows.

(b) **Never looser than allowed.** What "looser" means is defined once, key by key,
    in ``LOOSER`` below: ``looser(p, bound)`` lists every key on which ``p`` permits
    something ``bound`` does not. Then:

    - the effective policy (the request narrowed by the ceiling, as the launcher
      computes it from files) is never looser than the ceiling, on any key; nor looser
      than the requested profile, on any key but ``filesystem.home`` (where the
      tenant's home is, not what it may do: the ceiling's choice wins);
    - along ``extends``, a child is never looser than any of its ancestors on the
      entries that concatenate: it keeps every ``imports.deny``, ``shell.deny`` and
      ``filesystem.hidden`` entry. It may loosen anything else: ``extends`` is the
      profile author's composition tool (``free`` extends ``base`` and adds network),
      so it is not a bound: a child may also *add* ``imports.allow`` entries under a
      parent's deny. The bound on a tenant is the ceiling.
"""

from __future__ import annotations

import copy
import json
import math
import os
import posixpath
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from sandbox_kernel import policy, policy_facts, policy_merge, report
from sandbox_kernel.errors import ProfileError
from sandbox_kernel.resolved import rule_module

pytestmark = pytest.mark.slow  # the whole budget below: a minute and a half on one core

SCHEMA = policy.schema()
FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
# Examples per test, and documents per example: the total is asserted below.
BUDGET = {  # name: (examples, documents per example, on average)
    "yaml_text": (3000, 1),
    "yaml_tokens": (1500, 1),
    "structured": (800, 1),
    "near_valid": (2500, 1),
    "extends_graph": (400, 2.5),
    "narrowing": (400, 3),
    "chain": (350, 2.5),
}
DOCUMENTS = int(sum(n * docs for n, docs in BUDGET.values()))


# For quick local runs only (e.g. 0.05); CI runs the full budget.
SCALE = float(os.environ.get("SANDBOX_KERNEL_FUZZ_SCALE", "1"))


BUDGETED: dict[str, list[str]] = {}  # BUDGET entry: the tests that run it


def budget(name):
    def apply(fn):
        BUDGETED.setdefault(name, []).append(fn.__name__)
        return settings(max_examples=max(1, int(BUDGET[name][0] * SCALE)), **FUZZ)(fn)
    return apply


def test_the_fuzz_budget_is_in_force_and_covers_at_least_10000_documents():
    """Every BUDGET entry is the hypothesis setting of exactly one test of this module, as that
    test runs it (no later @settings overrides it), and at full scale they add up to 10,000
    documents or more."""
    assert sorted(BUDGETED) == sorted(BUDGET), (BUDGETED, BUDGET)
    for name, tests in BUDGETED.items():
        assert len(tests) == 1, (name, tests)
        fn = globals()[tests[0]]
        in_force = fn._hypothesis_internal_use_settings.max_examples
        assert in_force == max(1, int(BUDGET[name][0] * SCALE)), (name, tests[0], in_force)
    assert DOCUMENTS >= 10_000


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="sbx-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fresh_dir(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def env_for(d: Path, ceiling: str | None = None) -> dict:
    env = {policy.PROFILE_PATH_ENV: str(d)}
    if ceiling:
        env[policy.CEILING_ENV] = ceiling
    return env


# --------------------------------------------------------------------------- (a): what a loaded policy must be


def _printable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in text)


def check_error(e: ProfileError) -> None:
    assert e.problems, "a ProfileError names at least one problem"
    for file, key, message in e.problems:
        assert isinstance(file, str) and isinstance(key, str) and isinstance(message, str)
        assert message, (file, key)
        assert _printable(key), repr(key)
        assert _printable(message), repr(message)
        assert len(message) < 2000


def _strict_types(sub: dict, value, path: str) -> None:
    """The resolved data has exactly the types the schema names (what the layers rely on)."""
    sub = _deref(sub)
    if "oneOf" in sub:
        errors = []
        for branch in sub["oneOf"]:
            try:
                _strict_types(branch, value, path)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: {value!r} fits no branch: {errors}")
    t = sub.get("type")
    types = t if isinstance(t, list) else [t] if t else []
    if types:
        ok = ((value is None and "null" in types)
              or (isinstance(value, bool) and "boolean" in types)
              or (type(value) is int and ("integer" in types or "number" in types))
              or (type(value) is float and "number" in types and math.isfinite(value))
              or (type(value) is str and "string" in types)
              or (type(value) is list and "array" in types)
              or (type(value) is dict and "object" in types))
        assert ok, f"{path}: {value!r} ({type(value).__name__}) is not {types}"
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str, f"{path}: key {k!r}"
            if k in sub.get("properties", {}):
                _strict_types(sub["properties"][k], v, f"{path}.{k}")
    if isinstance(value, list) and "items" in sub:
        for i, v in enumerate(value):
            _strict_types(sub["items"], v, f"{path}[{i}]")


def _deref(sub: dict) -> dict:
    while "$ref" in sub:
        extra = {k: v for k, v in sub.items() if k != "$ref"}
        sub = {**SCHEMA["$defs"][sub["$ref"].rsplit("/", 1)[-1]], **extra}
    return sub


def _strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _strings(k)
            yield from _strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)


def check_policy(p: policy.Policy) -> None:
    """A policy that loaded is usable by everything downstream."""
    # No NUL in any string: every path reaches os functions, which refuse one (ValueError).
    assert not any("\x00" in x for x in _strings(p.data)), p.data
    again = policy.Policy.from_json(p.to_json())
    assert again == p
    policy.validate(json.loads(json.dumps(p.data)), "resolved")
    _strict_types(SCHEMA, p.data, "")
    report.policy_rows(p)
    policy.narrow(p, p)
    for key in policy_facts.SIZE_KEYS:
        section, _, name = key.partition(".")
        if p.data[section].get(name) is not None:
            policy.parse_size(p.data[section][name])


def load_or_refuse(target: str, env: dict | None = None, *, ceiling: bool = False):
    """Resolve; return the Policy or None (refused). Anything but ProfileError propagates and fails."""
    try:
        p = policy.effective(target, env) if ceiling else policy.resolve(target, env)
    except ProfileError as e:
        check_error(e)
        return None
    check_policy(p)
    return p


# --------------------------------------------------------------------------- generators: YAML text

YAML_ALPHABET = st.sampled_from(list(
    "abcxyz019 :-,[]{}#&*!|>'\"%@`?\t\n\r\\/.~_=+") + ["\u2028", "\x85", "\ufeff", "\u202e", "\x00", "é", "😀"])
KEYS = sorted(SCHEMA["properties"]) + ["deny", "allow", "mode", "tcp_connect_ports", "udp", "writable", "protected",
                                       "hidden", "home", "tmp_size", "gpu", "tpu", "enabled", "devices", "memory",
                                       "processes", "seccomp", "log", "module", "pattern"]
TOKENS = st.sampled_from(
    [f"{k}:" for k in KEYS] + KEYS + [
        "\n", "\n  ", "\n    ", "\n- ", "- ", ": ", ", ", "[", "]", "{", "}", "&a ", "*a", "&b ", "*b", "? ",
        "!!python/object/apply:os.system ['true']", "!!binary aGk=", "!!set {a, b}", "!!omap [a: 1]", "!!str",
        "!!int", "!!float", "!!timestamp", "2001-12-14", "1:20", "0x1F", "0o17", "1_000", ".nan", ".inf", "-.inf",
        "1e400", "99999999999999999999", "-1", "0", "5.0", "true", "no", "null", "~", "''", '""', "|\n  x",
        ">\n  y", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "#c\n", "'{home}'", "/run/x", "none",
        "restricted", "full", "required", "off", "8GiB", "{user}", "base", "free", "\t", "\u2028", "\x85",
        "\\ud800", '"\\ud800"', '"\\x00"', "'\u202e'",
    ])


def write_doc(d: Path, name: str, text: str | bytes) -> Path:
    p = d / f"{name}.yaml"
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    p.write_bytes(text)
    return p


@budget("yaml_text")
@given(st.one_of(st.text(YAML_ALPHABET, max_size=200), st.text(max_size=200), st.binary(max_size=200)))
def test_any_text_loads_or_raises_profile_error(scratch, text):
    load_or_refuse(str(write_doc(scratch, "text", text)), env_for(scratch))


@budget("yaml_tokens")
@given(st.lists(TOKENS, max_size=40).map("".join))
def test_yaml_token_soup_loads_or_raises_profile_error(scratch, text):
    load_or_refuse(str(write_doc(scratch, "tokens", text)), env_for(scratch))


# --------------------------------------------------------------------------- generators: structured data


class Raw:
    """YAML text written as is by `emit` (huge integers, tags, anchors and aliases)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:30]!r})"


RAW = st.sampled_from([
    Raw("9" * 5000), Raw("-" + "9" * 5000), Raw("0x" + "f" * 4000), Raw("1" + "0" * 400 + ".5"), Raw(".nan"),
    Raw(".inf"), Raw("-.inf"), Raw("1e400"), Raw("1.0e+400"), Raw("5.0"), Raw("80.0"), Raw("0.0"), Raw("-0.0"),
    Raw("2001-12-14"), Raw("2001-12-14t21:59:43.10-05:00"), Raw("1:20"), Raw("0o17"), Raw("0b101"), Raw("1_000"),
    Raw("!!binary aGVsbG8="), Raw("!!set {a: null, b: null}"), Raw("!!omap [{a: 1}, {b: 2}]"),
    Raw("!!pairs [{a: 1}]"), Raw("!!python/name:os.system"), Raw("!!float 1"), Raw("!!str 5"), Raw("!!int '7'"),
    Raw("&anchor [1, 2]"), Raw("*anchor"), Raw("&x a"), Raw("*x"), Raw("[" * 150 + "]" * 150),
    Raw("{a: " * 100 + "1" + "}" * 100), Raw('"\\ud800"'), Raw('"\\x00"'), Raw('"a\\nb"'), Raw("'\u2028'"),
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["", "none", "full", "required", "/", "{home}", "{user}", "8GiB", "0",
                                           "-1", "1.5", "/run/../etc", "MIG-x", "{index}", "roop", "a.b",
                                           "/x\x00y"]),
    RAW)
ANY_KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(-3, 3), st.none(), st.booleans())
DATA = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                     st.dictionaries(ANY_KEY, inner, max_size=5)), max_leaves=15)


def emit(v) -> str:
    """Flow-style YAML (a superset of JSON) that also writes Raw text and non-string keys."""
    if isinstance(v, Raw):
        return v.text
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return ".nan" if math.isnan(v) else ".inf" if v > 0 else "-.inf"
        r = repr(v)  # YAML 1.1 floats need a dot: 1e-09 would be a string
        return r.replace("e", ".0e", 1) if "e" in r and "." not in r else r
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(emit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{emit(k)}: {emit(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _has_raw(v) -> bool:
    if isinstance(v, Raw):
        return True
    if isinstance(v, list):
        return any(_has_raw(x) for x in v)
    if isinstance(v, dict):
        return any(_has_raw(k) or _has_raw(x) for k, x in v.items())
    return False


def to_yaml(data, block: bool) -> str:
    if block and not _has_raw(data):
        try:
            return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        except yaml.YAMLError:
            pass
    return emit(data) + "\n"


@budget("structured")
@given(st.dictionaries(ANY_KEY, DATA, max_size=6) | DATA, st.booleans())
def test_structured_data_loads_or_raises_profile_error(scratch, data, block):
    load_or_refuse(str(write_doc(scratch, "structured", to_yaml(data, block))), env_for(scratch))
    if isinstance(data, dict) and not _has_raw(data):
        try:  # the Python API on data that no YAML file gave
            policy.validate(data, "data")
        except ProfileError as e:
            check_error(e)


# --------------------------------------------------------------------------- generators: valid profiles
#
# Profiles are built by a seeded `random.Random` that hypothesis drives through its seed:
# hypothesis' own draws cost ~30 ms per profile here, which would put 10,000 documents
# far beyond the time budget. A failing example prints its documents (`note`), and
# its seed reproduces it.

MODULES = ["a", "a.b", "a.b.c", "a.c", "b", "b.a", "c", "roop", "libtpu"]
PATTERNS = ["*evil*", "magnet:?*", "*.torrent", "*github.com/x/*"]
EXEC_DIRS = ["/opt", "/opt/a", "/opt/a/b", "/opt/b", "/usr", "/usr/bin", "{python}", "{system}", "{system}/x"]
WRITABLE_DIRS = ["/data", "/data/x", "/data/x/y", "/data/y", "{home}", "{home}/w", "{tmp}", "/dev/shm", "{cwd}"]
PROTECTED = ["{home}/.jupyter", "{home}/.local/share/jupyter/kernels", "{home}/.ssh", "/data/x/keep"]
HIDDEN = ["/run/docker.sock", "/run/dbus", "/srv/agent.sock", "/run/user", "/var/run/crio"]
READABLE_DIRS = ["/", "/usr", "/usr/lib", "/etc", "/data", "/data/x", "{env}", "{home}", "{cwd}", "{tmp}"]
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETUID", "CAP_NET_BIND_SERVICE"]
HOMES = [None, "/srv/homes/{tenant}", "/srv/{user}", "/home/{uid}", "/srv/homes/{tenant}/{user}"]
SIZES = ["512MiB", "1G", 1073741824, "1.5GiB", "8GiB", 4096, "4096", "2 GiB", "3T", "100"]
MIG = {"mig": "MIG-0a1b", "gpu": 0, "gpu_instance": 1, "compute_instance": 0}
LAYER_NAMES = list(SCHEMA["properties"]["enforcement"]["properties"])
LEVELS = list(policy.ENFORCEMENT_ORDER)
SEEDS = st.integers(0, 2**64 - 1)


class Gen(random.Random):
    def coin(self, p=0.5) -> bool:
        return self.random() < p

    def some(self, items, max_size=None, unique=True):
        n = self.randint(0, len(items) if max_size is None else max_size)
        return self.sample(items, min(n, len(items))) if unique else [self.choice(items) for _ in range(n)]


def gen_valid(r: Gen) -> dict:
    """One profile's own keys: every schema key can appear, with values near the edges."""
    raw: dict = {}
    if r.coin(0.3):
        raw["description"] = "".join(r.choice("ab é😀-") for _ in range(r.randint(0, 12)))
    if r.coin():
        raw["imports"] = {"deny": [m if r.coin() else {"module": m, "category": "c", "reason": "r"}
                                   for m in r.some(MODULES, 4)],
                          "allow": r.some(MODULES, 3)}
    if r.coin():
        raw["shell"] = {"deny": [p if r.coin() else {"pattern": p, "category": "x"} for p in r.some(PATTERNS, 3)]}
    if r.coin(0.7):
        net: dict = {"mode": r.choice(["none", "restricted", "full"])}
        if r.coin():
            net["udp"] = r.coin()
        if net["mode"] == "restricted" and r.coin(0.8):
            net["tcp_connect_ports"] = r.some([1, 22, 53, 80, 443, 65535])
        if net["mode"] != "none" and r.coin(0.5):
            net["listen_ports"] = "any" if r.coin(0.3) else r.some([8000, 8888, 29500, 65535])
        raw["network"] = net
    if r.coin():
        raw["exec"] = {"allow": r.some(EXEC_DIRS, 4)}
    if r.coin(0.7):
        fs: dict = {}
        for key, alphabet in (("writable", WRITABLE_DIRS), ("readable", READABLE_DIRS), ("protected", PROTECTED),
                              ("hidden", HIDDEN)):
            if r.coin():
                fs[key] = r.some(alphabet, 4)
        for key in ("tmp_size", "shm_size"):
            if r.coin():
                fs[key] = r.choice(SIZES)
        if r.coin():
            fs["noexec_writable"] = r.coin()
        if r.coin():
            fs["landlock_with_view"] = r.coin()
        if r.coin():
            fs["home"] = r.choice(HOMES)
        raw["filesystem"] = fs
    if r.coin(0.3):
        raw["capabilities"] = {"keep": {c: "test" for c in r.some(CAPS, 3)}}
    if r.coin(0.3):
        raw["user_namespace"] = {"host_uid": r.choice(["same", "subordinate"])}
    if r.coin():
        gpu: dict = {"enabled": r.coin()}
        if r.coin():
            devices = r.some([0, 1, 2, 1023, "MIG-0a1b", MIG], 3)
            if len({policy.device_key(d) for d in devices}) == len(devices):
                gpu["devices"] = copy.deepcopy(devices)
        if r.coin():
            gpu["memory_fraction"] = r.choice([0.25, 0.5, 0.9, 1, 1.0, 1e-9])
        if r.coin(0.3):
            gpu["mps_memory_limit"] = r.choice(["16G", "8000M", "1M"])
        if r.coin(0.2):
            gpu["device_pattern"] = r.choice(["/dev/nvidia{index}", "/dev/dri/card{index}"])
        if r.coin(0.3):
            gpu["shared_nodes"] = r.some(["/dev/nvidiactl", "/dev/nvidia-uvm"])
        tpu: dict = {"enabled": r.coin()}
        if r.coin():
            tpu["chips"] = r.some([0, 1, 2, 3])
        if r.coin(0.2):
            tpu["vfio_pattern"] = r.choice(["/dev/vfio/{index}", "/dev/vfio/x{index}"])
        raw["accelerators"] = {"gpu": gpu, "tpu": tpu}
    if r.coin():
        lim: dict = {}
        for key in ("memory", "address_space", "file_size"):
            if r.coin():
                lim[key] = r.choice(SIZES)
        for key, lo, hi in (("processes", 1, 4194304), ("open_files", 16, 1073741816), ("cpu_seconds", 1, 2**63 - 1)):
            if r.coin():
                lim[key] = r.choice([lo, lo + 1, 64, 5000, hi])
        raw["limits"] = lim
    if r.coin():
        raw["enforcement"] = {k: r.choice(LEVELS) for k in r.some(LAYER_NAMES)}
    if r.coin(0.3):
        raw["audit"] = {"log": r.choice([None, "/var/log/a.log", "/var/log/b.log"])}
        if r.coin():
            raw["audit"]["max_bytes"] = r.choice([65536, 1 << 20, 1 << 30])
            raw["audit"]["keep"] = r.choice([1, 3, 100])
            raw["audit"]["metrics"] = r.choice([None, "/var/lib/m.prom"])
        if r.coin():
            raw["audit"]["violations"] = {k: v for k, v in {
                "categories": r.some(["deepfake", "mining", "torrent", "cracking", "tunnel", "network", "exec",
                                      "device", "syscall"]),
                "notice": r.choice([None, "no deepfakes here"]), "stop_after": r.choice([0, 1, 3]),
                "window_seconds": r.choice([1, 60, 3600]), "block_seconds": r.choice([0, 600])}.items() if r.coin()}
    return raw


@settings(max_examples=300, **FUZZ)
@given(SEEDS)
def test_the_valid_generator_is_valid(seed):
    """Sanity of the generator itself (a generator of invalid profiles would make (b) vacuous)."""
    policy.validate(gen_valid(Gen(seed)), "generated")


# --------------------------------------------------------------------------- (a) near-valid documents

BAD_VALUES = [
    None, True, False, 0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**70), 10**30, 1.5, 5.0, 80.0, 0.0, -0.0, 1e308,
    float("nan"), float("inf"), float("-inf"), "", " ", "x" * 300, "\u202e" * 50, "😀", "é/é", "{tenant}/..",
    "/" + "a/" * 150, "/run/../etc", "{home}x", "{user}", "a\nb", "\x00", "/data\x00x", "{home}/\x00", "\ud800", "\u2028", "0", "-1", "8 GiB",
    "1.5", "none", "full", "required", "MIG-", "{index}", [], {}, [None], [[[[[[[[[[1]]]]]]]]]], {"x": None},
    {"mig": "MIG-1"}, {"enabled": True}, {"module": "a", "reason": ""}, [0, 0], [1, "1"], ["a", "a"],
]
RAW_ITEMS = [
    Raw("9" * 5000), Raw("0x" + "f" * 4000), Raw(".nan"), Raw(".inf"), Raw("5.0"), Raw("80.0"), Raw("2001-12-14"),
    Raw("1:20"), Raw("0o17"), Raw("!!binary aGVsbG8="), Raw("!!set {a: null}"), Raw("!!omap [{a: 1}]"),
    Raw("!!python/name:os.system"), Raw("!!int"), Raw("!!float"), Raw("!!int 'x'"), Raw("!!timestamp 2001-13-99"),
    Raw("&anchor [1, 2]"), Raw("*anchor"), Raw('"\\ud800"'), Raw('"\\x00"'), Raw("'\u2028'"),
]
BAD_KEYS = ["bogus", "", "Network", "mode ", " mode", "extends", "deny", 0, 1, None, True, 2**70, "é", "\ud800", "a\nb"]


def gen_bad(r: Gen):
    if r.coin(0.25):
        return r.choice(RAW_ITEMS)
    if r.coin(0.1):
        return "".join(chr(r.randrange(0x110000)) for _ in range(r.randint(1, 20)))
    return copy.deepcopy(r.choice(BAD_VALUES))


def _paths(v, prefix=()):
    yield prefix
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, prefix + (i,))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _set(doc, path, value):
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def gen_near_valid(r: Gen):
    """A valid profile with one to three mutations: wrong types, unknown keys, edge values, nesting."""
    doc = gen_valid(r)
    for _ in range(r.randint(1, 3)):
        path = r.choice(list(_paths(doc)))
        how = r.choice(["replace", "replace", "unknown-key", "wrap", "wrap-deep", "extends", "drop"])
        if how == "replace":
            doc = _set(doc, path, gen_bad(r))
        elif how == "unknown-key" and isinstance(_get(doc, path), dict):
            _get(doc, path)[r.choice(BAD_KEYS)] = gen_bad(r)
        elif how == "wrap":
            cur = _get(doc, path)
            doc = _set(doc, path, r.choice([[cur], {"x": cur}, {"enabled": cur}]))
        elif how == "wrap-deep":  # deeper: test_profiles.py WORST_CASES
            cur = _get(doc, path)
            n = r.randint(10, 120)
            doc = _set(doc, path, Raw("[" * n + (emit(cur) if not _has_raw(cur) else "1") + "]" * n))
        elif how == "extends" and isinstance(doc, dict):
            doc["extends"] = r.choice(["nosuch", "x.yaml", "a/b", "", "fz", "..", "-x", "near", 5, None])
        elif how == "drop" and path:
            parent = _get(doc, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
    return doc


@budget("near_valid")
@given(SEEDS, st.integers(0, 2).map(lambda i: i == 0))
def test_near_valid_documents_load_or_raise_profile_error(scratch, seed, block):
    doc = gen_near_valid(Gen(seed))
    note(repr(doc))
    load_or_refuse(str(write_doc(scratch, "near", to_yaml(doc, block))), env_for(scratch))


# --------------------------------------------------------------------------- (a) extends graphs

NAMES = ["fz0", "fz1", "fz2", "fz3", "fz4"]
PARENTS = NAMES + ["nosuch", "base", "fz0.yaml", "../fz0", "FZ0"]


def gen_graph(r: Gen) -> dict:
    """A few profiles that extend each other: chains, cycles, self, missing parents, deep chains."""
    files = {}
    for name in r.sample(NAMES, r.randint(1, 4)):
        doc = gen_near_valid(r) if r.coin(0.25) else gen_valid(r)
        if isinstance(doc, dict) and r.coin(0.8):
            parent = r.choice(PARENTS)
            if parent == "base" and not r.coin(0.1):  # the shipped base costs ~50 ms: rarely
                parent = "fz0"
            doc["extends"] = parent
        files[name] = doc
    if r.coin(0.125):  # a chain deeper than MAX_EXTENDS_DEPTH, or just under it
        depth = policy.MAX_EXTENDS_DEPTH + r.choice([-1, 0, 1])
        for i in range(depth):
            files[f"deep{i}"] = {"extends": f"deep{i + 1}"}
        files[f"deep{depth}"] = {"description": "end"}
    return files


@budget("extends_graph")
@given(SEEDS, st.integers(0, 2).map(lambda i: i == 0))
def test_extends_graphs_load_or_raise_profile_error(scratch, seed, block):
    files = gen_graph(Gen(seed))
    note(repr(files))
    d = fresh_dir(scratch)
    for name, doc in files.items():
        write_doc(d, name, to_yaml(doc, block))
    for i, name in enumerate([n for n in files if not n.startswith("deep")] + (["deep0"] if "deep0" in files else [])):
        # by name (the search path), or given as a file (its parents beside it first)
        load_or_refuse(name if i % 2 else str(d / f"{name}.yaml"), env_for(d))
    shutil.rmtree(d)


# --------------------------------------------------------------------------- (b) "looser", defined once

def _order_net(mode):
    return policy.NETWORK_ORDER[mode]


def _within_any(path: str, roots: list[str]) -> bool:
    path = posixpath.normpath(path)
    return any(path == posixpath.normpath(r) or path.startswith(posixpath.normpath(r).rstrip("/") + "/")
               for r in roots)


def _devices_permitted(d: dict, field: str):
    """Device keys a side lets open: None = every device present."""
    items = d.get(field)
    return None if items is None else {json.dumps(policy.device_key(x)) for x in items}


def _accelerator_looser(kind: str, field: str, hw_keys: tuple[str, ...]):
    def check(p, b):
        pa, ba = p.data["accelerators"][kind], b.data["accelerators"][kind]
        if not pa["enabled"]:
            return None  # nothing opens
        if not ba["enabled"]:
            return f"enabled where the bound disables {kind}"
        if any(pa.get(k) != ba.get(k) for k in hw_keys):
            return f"names other device nodes ({', '.join(f'{k}={pa.get(k)!r}' for k in hw_keys)})"
        mine, theirs = _devices_permitted(pa, field), _devices_permitted(ba, field)
        if theirs is not None and (mine is None or not mine <= theirs):
            return f"{field} {mine or 'every device'} not within {theirs}"
        if not set(pa["shared_nodes"]) <= set(ba["shared_nodes"]):
            return f"shared_nodes {pa['shared_nodes']} not within {ba['shared_nodes']}"
        if kind == "gpu":
            if ba.get("memory_fraction") is not None and not (
                    pa.get("memory_fraction") is not None and pa["memory_fraction"] <= ba["memory_fraction"]):
                return f"memory_fraction {pa.get('memory_fraction')} above {ba['memory_fraction']}"
            if ba.get("mps_memory_limit") is not None and not (
                    pa.get("mps_memory_limit") is not None
                    and policy.parse_size(pa["mps_memory_limit"]) <= policy.parse_size(ba["mps_memory_limit"])):
                return f"mps_memory_limit {pa.get('mps_memory_limit')} above {ba['mps_memory_limit']}"
        return None
    return check


def _import_probes(*policies) -> list[str]:
    names = set()
    for p in policies:
        names |= {rule_module(r) for r in p.data["imports"]["deny"]}
        names |= set(p.data["imports"]["allow"])
    probes = set()
    for n in names | {"libtpu", "json"}:
        parts = n.split(".")
        probes |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} | {n + ".x", n + ".x.y"}
    return sorted(probes)


def _imports_looser(p, b):
    allowed = [m for m in _import_probes(p, b) if b.import_rule(m) is not None and p.import_rule(m) is None]
    return f"imports {allowed} that the bound refuses" if allowed else None


def _superset(get, what):
    def check(p, b):
        missing = [x for x in get(b) if x not in get(p)]
        return f"drops {what} {missing}" if missing else None
    return check


def _subset(get, what):
    def check(p, b):
        extra = [x for x in get(p) if x not in get(b)]
        return f"adds {what} {extra}" if extra else None
    return check


def _dirs_within(section, key):
    def check(p, b):
        outside = [d for d in p.data[section][key] if not _within_any(d, b.data[section][key])]
        return f"grants {outside} outside {b.data[section][key]}" if outside else None
    return check


def _size_at_most(get, what):
    def check(p, b):
        mine, theirs = get(p), get(b)
        if theirs is None:
            return None
        if mine is None or policy.parse_size(mine) > policy.parse_size(theirs):
            return f"{what} {mine} above {theirs}"
        return None
    return check


def _limit(key):
    def check(p, b):
        theirs, mine = b.limits.get(key), p.limits.get(key)
        if theirs is None:
            return None
        conv = policy.parse_size if policy_facts.KEYS[f"limits.{key}"]["size"] else int
        if mine is None or conv(mine) > conv(theirs):
            return f"{mine} above {theirs}"
        return None
    return check


def _network_mode(p, b):
    return (f"{p.network['mode']} is looser than {b.network['mode']}"
            if _order_net(p.network["mode"]) > _order_net(b.network["mode"]) else None)


def _ports(p, b):
    if p.network["mode"] == "restricted" and b.network["mode"] == "restricted":
        extra = set(p.network["tcp_connect_ports"]) - set(b.network["tcp_connect_ports"])
        return f"ports {sorted(extra)} beyond the bound's" if extra else None
    return None


def _udp(p, b):
    if p.network["mode"] == "restricted" and b.network["mode"] == "restricted" and p.network["udp"] \
            and not b.network["udp"]:
        return "UDP where the bound refuses it"
    return None


def _listen(p, b):
    mine, theirs = p.network["listen_ports"], b.network["listen_ports"]
    if mine == "any":
        return None if theirs == "any" else "servers on any port where the bound lists ports"
    extra = set(mine) - (set() if theirs == "any" else set(theirs)) if theirs != "any" else set()
    return f"servers on ports {sorted(extra)} beyond the bound's" if extra else None


def _enforcement(layer):
    def check(p, b):
        mine, theirs = p.enforcement(layer), b.enforcement(layer)
        return (f"{mine} is weaker than {theirs}"
                if policy.ENFORCEMENT_ORDER[mine] < policy.ENFORCEMENT_ORDER[theirs] else None)
    return check


def _home(p, b):
    theirs = b.data["filesystem"]["home"]
    return f"home {p.data['filesystem']['home']!r}, not the bound's {theirs!r}" \
        if theirs is not None and p.data["filesystem"]["home"] != theirs else None


def _noexec(p, b):
    return "writable dirs may hold runnable files" \
        if b.data["filesystem"]["noexec_writable"] and not p.data["filesystem"]["noexec_writable"] else None


def _second_line(p, b):
    return "no Landlock file rules under the read view where the bound keeps them" \
        if b.data["filesystem"]["landlock_with_view"] and not p.data["filesystem"]["landlock_with_view"] else None


def _audit(p, b):
    return "no audit log where the bound keeps one" if b.audit_log and not p.audit_log else None


def _audit_at_least(key):
    def check(p, b):
        return f"audit.{key} below the bound's" if p.data["audit"][key] < b.data["audit"][key] else None
    return check


def _metrics(p, b):
    return "no metrics file where the bound names one" \
        if b.data["audit"]["metrics"] and not p.data["audit"]["metrics"] else None


def _violations(p, b):
    pv, bv = p.data["audit"]["violations"], b.data["audit"]["violations"]
    if not set(bv["categories"]) <= set(pv["categories"]):
        return "a category the bound bans is not banned"
    if bv["stop_after"] and (not pv["stop_after"] or pv["stop_after"] > bv["stop_after"]):
        return "stops later than the bound"
    if pv["window_seconds"] < bv["window_seconds"]:
        return "counts violations over a shorter window"
    if pv["block_seconds"] < bv["block_seconds"]:
        return "blocks the tenant for less time"
    return None


def _modules(p):
    return [rule_module(r) for r in p.data["imports"]["deny"]]


def _patterns(p):
    return [r if isinstance(r, str) else r["pattern"] for r in p.data["shell"]["deny"]]


# key -> check(p, bound) -> None, or what p permits that the bound does not
LOOSER = {
    "imports": _imports_looser,
    "imports.deny": _superset(_modules, "denied modules"),
    "imports.allow": _subset(lambda p: p.data["imports"]["allow"], "allowed modules"),
    "shell.deny": _superset(_patterns, "shell patterns"),
    "network.mode": _network_mode,
    "network.tcp_connect_ports": _ports,
    "network.udp": _udp,
    "network.listen_ports": _listen,
    "exec.allow": _dirs_within("exec", "allow"),
    "filesystem.writable": _dirs_within("filesystem", "writable"),
    "filesystem.readable": _dirs_within("filesystem", "readable"),
    "filesystem.protected": _superset(lambda p: p.data["filesystem"]["protected"], "protected paths"),
    "filesystem.hidden": _superset(lambda p: p.data["filesystem"]["hidden"], "hidden paths"),
    "filesystem.noexec_writable": _noexec,
    "filesystem.landlock_with_view": _second_line,
    "filesystem.tmp_size": _size_at_most(lambda p: p.data["filesystem"]["tmp_size"], "/tmp"),
    "filesystem.shm_size": _size_at_most(lambda p: p.data["filesystem"]["shm_size"], "/dev/shm"),
    "filesystem.home": _home,
    "accelerators.gpu": _accelerator_looser("gpu", "devices", ("device_pattern", "caps_dir", "capabilities_root")),
    "accelerators.tpu": _accelerator_looser("tpu", "chips", ("device_pattern", "vfio_pattern")),
    **{f"limits.{k}": _limit(k) for k in SCHEMA["properties"]["limits"]["properties"]},
    **{f"enforcement.{k}": _enforcement(k) for k in LAYER_NAMES},
    "audit.log": _audit,
    "audit.max_bytes": _audit_at_least("max_bytes"),
    "audit.keep": _audit_at_least("keep"),
    "audit.metrics": _metrics,
    "audit.violations": _violations,
    "capabilities.keep": _subset(lambda p: sorted(p.data["capabilities"]["keep"]), "kept capabilities"),
    "user_namespace.host_uid": lambda p, b: "the tenant's own host uid where the bound gives each kernel one"
    if b.data["user_namespace"]["host_uid"] == "subordinate" and p.data["user_namespace"]["host_uid"] != "subordinate"
    else None,
}
# The entries that concatenate along `extends`: what a child keeps of every ancestor.
KEPT_ALONG_EXTENDS = ("imports.deny", "shell.deny", "filesystem.hidden")


def looser(p: policy.Policy, bound: policy.Policy, keys=None) -> dict[str, str]:
    """Every key on which `p` permits something `bound` does not."""
    out = {}
    for key in keys or LOOSER:
        why = LOOSER[key](p, bound)
        if why:
            out[key] = why
    return out


def test_looser_covers_every_schema_key():
    """Every key a profile can set is either compared or says why it is not."""
    not_ordered = {"extends", "description", "imports", "shell", "network", "exec", "filesystem", "accelerators",
                   "limits", "enforcement", "audit", "capabilities"}
    covered = set(LOOSER)
    for top, sub in SCHEMA["properties"].items():
        if top in not_ordered and "properties" in sub:
            for key in sub["properties"]:
                name = f"{top}.{key}"
                assert name in covered, name


def test_looser_detects_what_it_should():
    """The definition can fail: hand-made looser policies are caught, key by key."""
    def mk(raw):
        policy.validate(raw, "t")
        return policy.Policy(policy_merge._fill_defaults(SCHEMA, raw), name="t", sources=[])

    strict = mk({"imports": {"deny": ["a"]}, "shell": {"deny": ["*x*"]},
                 "network": {"mode": "restricted", "tcp_connect_ports": [443]},
                 "exec": {"allow": ["/usr/bin"]}, "filesystem": {"writable": ["/data/x"], "readable": ["/usr"],
                                                                 "tmp_size": "1G", "landlock_with_view": True,
                                                                 "home": "/srv/{user}", "hidden": ["/h"]},
                 "accelerators": {"gpu": {"enabled": True, "devices": [0], "memory_fraction": 0.5}},
                 "limits": {"memory": "1G", "processes": 10}, "enforcement": {"pid_namespace": "required"},
                 "audit": {"log": "/var/log/x", "max_bytes": 1 << 20, "keep": 3, "metrics": "/var/lib/x.prom",
                           "violations": {"stop_after": 2, "block_seconds": 60}}, "capabilities": {"keep": {"CAP_KILL": "signals"}},
                 "user_namespace": {"host_uid": "subordinate"}})
    assert looser(strict, strict) == {}
    def setting(section, **values):
        return lambda raw: raw[section].update(values)

    cases = {
        "imports": setting("imports", allow=["a.b"]),
        "imports.deny": setting("imports", deny=[]),
        "shell.deny": setting("shell", deny=[]),
        "network.mode": setting("network", mode="full", tcp_connect_ports=[]),
        "network.tcp_connect_ports": setting("network", tcp_connect_ports=[443, 22]),
        "network.udp": setting("network", udp=True),
        "network.listen_ports": setting("network", listen_ports=[8000]),
        "exec.allow": setting("exec", allow=["/usr"]),
        "filesystem.writable": setting("filesystem", writable=["/data"]),
        "filesystem.readable": setting("filesystem", readable=["/"]),
        "capabilities.keep": setting("capabilities", keep={"CAP_KILL": "signals", "CAP_CHOWN": "chown"}),
        "filesystem.protected": setting("filesystem", protected=[]),
        "filesystem.hidden": setting("filesystem", hidden=[]),
        "filesystem.noexec_writable": setting("filesystem", noexec_writable=False),
        "filesystem.landlock_with_view": setting("filesystem", landlock_with_view=False),
        "filesystem.tmp_size": setting("filesystem", tmp_size="2G"),
        "filesystem.home": setting("filesystem", home="/elsewhere"),
        "accelerators.gpu": lambda raw: raw["accelerators"]["gpu"].update(devices=[0, 1]),
        "limits.memory": setting("limits", memory="2G"),
        "limits.processes": lambda raw: raw["limits"].pop("processes"),
        "enforcement.pid_namespace": setting("enforcement", pid_namespace="best-effort"),
        "audit.log": setting("audit", log=None),
        "user_namespace.host_uid": setting("user_namespace", host_uid="same"),
        "audit.max_bytes": setting("audit", max_bytes=65536),
        "audit.keep": setting("audit", keep=1),
        "audit.metrics": setting("audit", metrics=None),
        "audit.violations": lambda raw: raw["audit"]["violations"].update(stop_after=0),
    }
    for key, change in cases.items():
        raw = json.loads(json.dumps(strict.data))
        change(raw)
        assert key in looser(mk(raw), strict), key



# --------------------------------------------------------------------------- (b) the properties

@budget("narrowing")
@given(SEEDS, st.integers(0, 2).map(lambda i: i == 0))
def test_effective_policy_is_never_looser_than_ceiling_or_request(scratch, seed, block):
    """The launcher's effective policy, from files: request and ceiling each an `extends` chain.

    Never looser than the ceiling on any key; never looser than the request on any key
    but `filesystem.home` (the ceiling's home wins: a place, not a permission)."""
    r = Gen(seed)
    chains = {"req": [gen_valid(r) for _ in range(r.randint(1, 2))],
              "ceil": [gen_valid(r) for _ in range(r.randint(1, 2))]}
    note(repr(chains))
    d = fresh_dir(scratch)
    for prefix, chain in chains.items():
        for i, doc in enumerate(chain):
            if i + 1 < len(chain):
                doc = {**doc, "extends": f"{prefix}{i + 1}"}
            write_doc(d, f"{prefix}{i}", to_yaml(doc, block))
    env = env_for(d, ceiling="ceil0")
    requested, ceiling = policy.resolve("req0", env), policy.resolve("ceil0", env)
    eff = load_or_refuse("req0", env, ceiling=True)
    assert eff is not None  # both sides are valid: narrowing them cannot fail
    assert eff.ceiling == "ceil0"
    assert looser(eff, ceiling) == {}
    assert looser(eff, requested, [k for k in LOOSER if k != "filesystem.home"]) == {}
    shutil.rmtree(d)


@budget("chain")
@given(SEEDS, st.integers(0, 2).map(lambda i: i == 0))
def test_a_child_keeps_every_ancestors_deny_and_hidden_entries(scratch, seed, block):
    """Along `extends`, a child never drops a deny or hidden entry of any ancestor (it may
    loosen anything else: see the module docstring)."""
    r = Gen(seed)
    chain = [gen_valid(r) for _ in range(r.randint(2, 3))]
    note(repr(chain))
    d = fresh_dir(scratch)
    for i, doc in enumerate(chain):
        if i + 1 < len(chain):
            doc = {**doc, "extends": f"c{i + 1}"}
        write_doc(d, f"c{i}", to_yaml(doc, block))
    env = env_for(d)
    resolved = [policy.resolve(f"c{i}", env) for i in range(len(chain))]
    for child_index, child in enumerate(resolved):
        for ancestor in resolved[child_index + 1:]:
            assert looser(child, ancestor, KEPT_ALONG_EXTENDS) == {}
    shutil.rmtree(d)
