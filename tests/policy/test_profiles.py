"""Profiles: shipped files, malformed files, inheritance, import rules, narrowing.

Pure Python: no kernel is started. Every test points SANDBOX_KERNEL_PROFILE_PATH at
its own directory, so profiles written by other tests never leak in.
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_kernel import policy, policy_merge, resources
from sandbox_kernel.errors import ProfileError
from sandbox_kernel.resolved import rule_module as _rule_module

SHIPPED = ["base", "free", "gpu", "research", "offline", "default"]
SHIPPED_DIR = Path(resources.shipped_profiles_dir())
SCHEMA_FILE = SHIPPED_DIR / "schema.json"


def write(d: Path, name: str, text: str) -> Path:
    p = d / f"{name}.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def make(raw: dict, name: str = "t") -> policy.Policy:
    """A Policy from one profile's raw data (validated, defaults filled), no file."""
    policy.validate(raw, name)
    return policy.Policy(policy_merge._fill_defaults(policy.schema(), raw), name=name, sources=[])


# --------------------------------------------------------------------------- shipped profiles


def test_default_profile_exists():
    assert (SHIPPED_DIR / "default.yaml").is_file()
    assert policy.DEFAULT_PROFILE == "default"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_resolves(name, profile_dir):
    p = policy.resolve(name)
    assert p.name == name
    assert p.sources[0] == str((SHIPPED_DIR / f"{name}.yaml").resolve())
    assert p.sources[-1] == str((SHIPPED_DIR / "base.yaml").resolve())
    assert p.data["description"]
    # Resolved data is complete and still valid against the schema (minus `extends`).
    policy.validate(p.data, name)
    assert p.import_rule("roop") is not None
    assert p.import_rule("json") is None
    # A round trip through the JSON transport keeps it identical.
    assert policy.Policy.from_json(p.to_json()) == p


def test_shipped_profiles_effective_without_ceiling(profile_dir):
    assert policy.effective().name == "default"
    assert policy.effective().data == policy.resolve("free").data | {"description": policy.resolve("default").data["description"]}


def test_schema_is_valid_draft_2020_12():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_yaml_validates_with_jsonschema_directly(name):
    """What an editor does with the schema, without sandbox_kernel's loader."""
    schema = json.loads(SCHEMA_FILE.read_text())
    data = yaml.safe_load((SHIPPED_DIR / f"{name}.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)


def test_schema_rejects_what_the_loader_rejects_for_editors():
    v = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert not v.is_valid({"network": {"mode": "partial"}})
    assert not v.is_valid({"filesystem": {"writable": ["/data/../etc"]}})
    assert not v.is_valid({"filesystem": {"writable": ["{home}x"]}})
    assert not v.is_valid({"extends": "base.yaml"})
    assert v.is_valid({"filesystem": {"writable": ["{home}", "{home}/work", "/data"]}})


def test_shipped_deny_lists_are_well_formed(profile_dir):
    base = policy.resolve("base")
    modules = [r["module"] for r in base.deny_rules()]
    assert len(modules) == len(set(modules))
    for r in base.deny_rules():
        assert r["category"] and r["reason"]


# --------------------------------------------------------------------------- malformed profiles

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9))

# (id, files {name: text or bytes}, profile to resolve, file that must be named, key path or None,
#  fragments the message must contain: what is wrong and what is expected)
MALFORMED = [
    ("unknown-top-level-key", {"p": "extends: base\nnetwerk: {mode: none}\n"}, "p", "p", "netwerk",
     ["unknown key 'netwerk'", "allowed keys here", "network"]),
    ("unknown-nested-key", {"p": "network:\n  mode: none\n  bogus: 1\n"}, "p", "p", "network.bogus",
     ["unknown key 'bogus'", "mode, tcp_connect_ports, udp"]),
    ("unknown-key-in-deny-entry", {"p": "imports:\n  deny:\n    - {module: roop, reasn: x}\n"}, "p", "p",
     "imports.deny[0].reasn", ["unknown key 'reasn'", "reason"]),
    ("string-for-list", {"p": "network:\n  mode: restricted\n  tcp_connect_ports: '80'\n"}, "p", "p",
     "network.tcp_connect_ports", ["expected a list", "found string '80'"]),
    ("list-for-mapping", {"p": "network: [none]\n"}, "p", "p", "network", ["expected a mapping", "found list"]),
    ("empty-value-for-mapping", {"p": "network:\nlimits: {processes: 5}\n"}, "p", "p", "network",
     ["expected a mapping", "empty value"]),
    ("bool-for-int", {"p": "limits:\n  processes: true\n"}, "p", "p", "limits.processes",
     ["expected an integer", "found boolean True"]),
    ("float-for-int", {"p": "limits:\n  processes: 1.5\n"}, "p", "p", "limits.processes",
     ["expected an integer", "found number 1.5"]),
    ("cycle-a-b-a", {"a": "extends: b\n", "b": "extends: a\n"}, "a", "a", "extends",
     ["inheritance cycle: a -> b -> a", "b.yaml has `extends: a`)", "remove one `extends`"]),
    ("parent-name-typo", {"p": "extends: fre\n", "free": "description: x\n"}, "p", "p", "extends",
     ["parent profile 'fre' not found", "did you mean 'free'?"]),
    ("key-indented-deeper", {"p": "network:\n  mode: none\n   udp: true\n"}, "p", "p", None,
     ["line 3 (`udp:`) is indented 3 spaces, deeper than line 2 (`mode:`, 2)", "indent `udp:` 2 spaces"]),
    ("key-indented-to-no-level", {"p": "network:\n    mode: none\n  udp: true\n"}, "p", "p", None,
     ["line 3 (`udp:`) is indented 2 spaces, which lines up with no key above"]),
    # a colon only in the comment of the line above: no key there (the indentation hint raised
    # IndexError; found by the profile fuzz)
    ("colon-in-a-comment-above", {"p": "key # note: x\n  bad: 1\n"}, "p", "p", None,
     ["not valid YAML: line 2, column 3"]),
    ("self-extends", {"me": "extends: me\n"}, "me", "me", "extends", ["inheritance cycle: me -> me"]),
    ("missing-parent", {"p": "extends: nosuchparent\n"}, "p", "p", "extends",
     ["parent profile 'nosuchparent' not found", "SANDBOX_KERNEL_PROFILE_PATH"]),
    ("extends-a-file-name", {"p": "extends: base.yaml\n"}, "p", "p", "extends",
     ["'base.yaml' is not valid here", "name of the parent profile, such as `base`"]),
    ("broken-parent-named", {"child": "extends: parent\n", "parent": "limits: {processes: 0}\n"}, "child",
     "parent", "limits.processes", ["0 is out of range", ">= 1"]),
    ("port-0", {"p": "network:\n  mode: restricted\n  tcp_connect_ports: [0]\n"}, "p", "p",
     "network.tcp_connect_ports[0]", ["0 is out of range", "an integer >= 1", "TCP port"]),
    ("port-70000", {"p": "network:\n  mode: restricted\n  tcp_connect_ports: [443, 70000]\n"}, "p", "p",
     "network.tcp_connect_ports[1]", ["70000 is out of range", "<= 65535"]),
    ("port-http", {"p": "network:\n  mode: restricted\n  tcp_connect_ports: [http]\n"}, "p", "p",
     "network.tcp_connect_ports[0]", ["expected an integer", "found string 'http'"]),
    ("duplicate-port", {"p": "network:\n  mode: restricted\n  tcp_connect_ports: [80, 443, 80]\n"}, "p", "p",
     "network.tcp_connect_ports", ["lists a port twice"]),
    ("ports-with-mode-none", {"p": "network:\n  mode: none\n  tcp_connect_ports: [80]\n"}, "p", "p",
     "network.tcp_connect_ports", ["only used with `mode: restricted`", "mode is 'none'"]),
    ("negative-limit", {"p": "limits:\n  cpu_seconds: -5\n"}, "p", "p", "limits.cpu_seconds",
     ["-5 is out of range", ">= 1"]),
    ("negative-size", {"p": "limits:\n  memory: -1\n"}, "p", "p", "limits.memory", ["-1 is out of range", ">= 1"]),
    ("zero-processes", {"p": "limits:\n  processes: 0\n"}, "p", "p", "limits.processes",
     ["0 is out of range", "an integer >= 1"]),
    ("too-many-processes", {"p": "limits:\n  processes: 99999999999\n"}, "p", "p", "limits.processes",
     ["out of range", "<= 4194304"]),
    ("too-few-open-files", {"p": "limits:\n  open_files: 5\n"}, "p", "p", "limits.open_files", [">= 16"]),
    ("size-lots", {"p": "limits:\n  memory: lots\n"}, "p", "p", "limits.memory",
     ["'lots' is not valid here", "512MiB"]),
    ("size-zero-string", {"p": "limits:\n  file_size: '0.1'\n"}, "p", "p", "limits.file_size",
     ["not a positive size"]),
    ("size-huge", {"p": "limits:\n  memory: 99999999999999999999T\n"}, "p", "p", "limits.memory",
     ["too large", "at most"]),
    ("size-400-digits", {"p": "limits:\n  memory: '" + "9" * 400 + "'\n"}, "p", "p", "limits.memory",
     ["too large"]),
    ("mps-limit-zero", {"p": "accelerators:\n  gpu:\n    mps_memory_limit: 0M\n"}, "p", "p",
     "accelerators.gpu.mps_memory_limit", ["not a positive size"]),
    ("memory-fraction-0", {"p": "accelerators:\n  gpu:\n    memory_fraction: 0\n"}, "p", "p",
     "accelerators.gpu.memory_fraction", ["0 is out of range", "a number > 0"]),
    ("memory-fraction-1.5", {"p": "accelerators:\n  gpu:\n    memory_fraction: 1.5\n"}, "p", "p",
     "accelerators.gpu.memory_fraction", ["1.5 is out of range", "<= 1"]),
    ("bad-network-mode", {"p": "network:\n  mode: partial\n"}, "p", "p", "network.mode",
     ["'partial' is not allowed", "one of 'none', 'restricted', 'full'"]),
    ("bad-enforcement-level", {"p": "enforcement:\n  seccomp: maybe\n"}, "p", "p", "enforcement.seccomp",
     ["'maybe' is not allowed", "'required', 'best-effort', 'off'"]),
    ("module-with-space", {"p": "imports:\n  deny: [roop, 'foo bar']\n"}, "p", "p", "imports.deny[1]",
     ["'foo bar' is not valid here", "dotted Python module name"]),
    ("module-starts-with-digit", {"p": "imports:\n  deny:\n    - roop\n    - {module: 1abc}\n"}, "p", "p",
     "imports.deny[1].module", ["'1abc' is not valid here", "dotted Python module name"]),
    ("allow-module-starts-with-digit", {"p": "imports:\n  allow: [1abc]\n"}, "p", "p", "imports.allow[0]",
     ["'1abc'", "dotted Python module name"]),
    ("deny-entry-without-module", {"p": "imports:\n  deny:\n    - {reason: x}\n"}, "p", "p", "imports.deny[0]",
     ["missing key 'module'"]),
    ("distributions-not-a-list", {"p": "imports:\n  deny:\n    - {module: roop, distributions: roop}\n"}, "p",
     "p", "imports.deny[0].distributions", ["expected a list", "found string 'roop'"]),
    ("empty-shell-pattern", {"p": "shell:\n  deny: ['']\n"}, "p", "p", "shell.deny[0]", ["must not be empty"]),
    ("device-pattern-without-index", {"p": "accelerators:\n  gpu:\n    device_pattern: /dev/nvidia0\n"}, "p", "p",
     "accelerators.gpu.device_pattern", ["'/dev/nvidia0' is not valid here", "{index}"]),
    ("mig-device-missing-keys", {"p": "accelerators:\n  gpu:\n    devices: [{mig: MIG-abc}]\n"}, "p", "p",
     "accelerators.gpu.devices[0]", ["missing keys 'gpu', 'gpu_instance', 'compute_instance'"]),
    ("duplicate-device", {"p": "accelerators:\n  gpu:\n    devices: [0, 1, 0]\n"}, "p", "p",
     "accelerators.gpu.devices", ["lists a device twice"]),
    ("relative-writable-path", {"p": "filesystem:\n  writable: [data]\n"}, "p", "p", "filesystem.writable[0]",
     ["'data' is not valid here", "an absolute path"]),
    ("dotdot-writable-path", {"p": "filesystem:\n  writable: ['{home}', '{home}/../../etc']\n"}, "p", "p",
     "filesystem.writable[1]", ["is not valid here", "without `..`"]),
    ("relative-audit-log", {"p": "audit:\n  log: refusals.log\n"}, "p", "p", "audit.log",
     ["'refusals.log' is not valid here", "absolute path"]),
    ("noexec-writable-string", {"p": "filesystem:\n  noexec_writable: 'yes'\n"}, "p", "p",
     "filesystem.noexec_writable", ["expected true or false", "found string 'yes'"]),
    ("tmp-size-lots", {"p": "filesystem:\n  tmp_size: lots\n"}, "p", "p", "filesystem.tmp_size",
     ["'lots' is not valid here", "512MiB"]),
    ("shm-size-zero", {"p": "filesystem:\n  shm_size: 0\n"}, "p", "p", "filesystem.shm_size",
     ["0 is out of range", ">= 1"]),
    ("shm-size-huge", {"p": "filesystem:\n  shm_size: 99999999999T\n"}, "p", "p", "filesystem.shm_size",
     ["too large", "at most"]),
    ("home-relative", {"p": "filesystem:\n  home: homes/{user}\n"}, "p", "p", "filesystem.home",
     ["'homes/{user}' is not valid here", "absolute path", "{user}", "{uid}", "{tenant}"]),
    ("home-unknown-placeholder", {"p": "filesystem:\n  home: /srv/{home}\n"}, "p", "p", "filesystem.home",
     ["'/srv/{home}' is not valid here", "{tenant}"]),
    ("home-unbalanced-brace", {"p": "filesystem:\n  home: /srv/{user\n"}, "p", "p", "filesystem.home",
     ["'/srv/{user' is not valid here"]),
    ("home-dotdot", {"p": "filesystem:\n  home: /srv/{tenant}/../../etc\n"}, "p", "p", "filesystem.home",
     ["is not valid here", "without `..`"]),
    ("home-list", {"p": "filesystem:\n  home: [/srv]\n"}, "p", "p", "filesystem.home",
     ["expected a string or null", "found list"]),
    ("hidden-relative", {"p": "filesystem:\n  hidden: [run/docker.sock]\n"}, "p", "p", "filesystem.hidden[0]",
     ["'run/docker.sock' is not valid here", "an absolute path"]),
    ("hidden-root", {"p": "filesystem:\n  hidden: [/run/dbus, /./]\n"}, "p", "p", "filesystem.hidden",
     ["hides `/`"]),
    ("pid-namespace-level", {"p": "enforcement:\n  pid_namespace: sometimes\n"}, "p", "p",
     "enforcement.pid_namespace", ["'sometimes' is not allowed", "'required', 'best-effort', 'off'"]),
    # found by tests/policy/test_policy_fuzz.py
    ("empty-int-tag", {"p": "limits:\n  processes: !!int\n"}, "p", "p", None,
     ["not valid YAML: line 2, column 14", "cannot read this value as int"]),
    ("int-of-5000-digits", {"p": "limits:\n  processes: " + "9" * 5000 + "\n"}, "p", "p", None,
     ["not valid YAML: line 2", "a number of more than 4300 digits"]),
    ("int-beyond-64-bits", {"p": "accelerators:\n  gpu:\n    devices: [0x" + "f" * 400 + "]\n"}, "p", "p",
     "accelerators.gpu.devices[0]", ["integer out of range", "9223372036854775807"]),
    ("float-for-int-5.0", {"p": "limits:\n  processes: 5.0\n"}, "p", "p", "limits.processes",
     ["expected an integer", "found number 5.0"]),
    ("float-port-80.0", {"p": "network:\n  mode: restricted\n  tcp_connect_ports: [80.0]\n"}, "p", "p",
     "network.tcp_connect_ports[0]", ["expected an integer", "found number 80.0"]),
    ("nan-memory-fraction", {"p": "accelerators:\n  gpu:\n    memory_fraction: .nan\n"}, "p", "p",
     "accelerators.gpu.memory_fraction", ["expected a number", "nan (not a finite number)"]),
    ("nul-character", {"p": "description: a\x00b\n"}, "p", "p", None,
     ["not valid YAML: line 1, column 15", "character U+0000 is not allowed"]),
    ("nul-escape-in-path", {"p": 'filesystem: {writable: ["/data\\x00x"]}\n'}, "p", "p", "filesystem.writable[0]",
     ["contains a NUL character"]),
    ("nul-escape-in-audit-log", {"p": 'audit: {log: "/var/\\0log"}\n'}, "p", "p", "audit.log",
     ["contains a NUL character"]),
    ("key-with-line-break", {"p": 'network: {"x\\ny": 1}\n'}, "p", "p", "network.x\\ny",
     ["unknown key 'x\\ny'"]),
    ("non-string-key", {"p": "1: one\n"}, "p", "p", "1", ["keys must be strings"]),
    ("duplicate-yaml-key", {"p": "network:\n  mode: none\nnetwork:\n  mode: full\n"}, "p", "p", None,
     ["duplicate key 'network'", "line 3"]),
    ("empty-file", {"p": ""}, "p", "p", None, ["file is empty", "a YAML mapping"]),
    ("whitespace-only-file", {"p": "  \n\n\t\n   \n"}, "p", "p", None, ["file is empty", "a YAML mapping"]),
    ("comment-only-file", {"p": "# nothing here\n"}, "p", "p", None, ["file is empty"]),
    ("yaml-list", {"p": "- extends: base\n- network: {mode: none}\n"}, "p", "p", None,
     ["expected a YAML mapping", "found list"]),
    ("yaml-scalar", {"p": "free\n"}, "p", "p", None, ["expected a YAML mapping", "found string 'free'"]),
    ("yaml-number", {"p": "42\n"}, "p", "p", None, ["expected a YAML mapping", "found integer 42"]),
    ("not-yaml", {"p": "key: [unclosed\n"}, "p", "p", None, ["not valid YAML", "line 2"]),
    ("tab-indentation", {"p": "network:\n\tmode: none\n"}, "p", "p", None, ["not valid YAML", "'\\t'"]),
    ("python-tag", {"p": "description: !!python/object/apply:os.system [true]\n"}, "p", "p", None,
     ["not valid YAML", "could not determine a constructor"]),
    ("binary-non-utf8", {"p": b"\xff\xfe\x00\x81network: \xc3\x28\n"}, "p", "p", None, ["not UTF-8"]),
    ("yaml-bomb", {"p": BOMB}, "p", "p", None, ["anchors and aliases", "not allowed"]),
    ("deeply-nested", {"p": "description: " + "[" * 5000 + "]" * 5000 + "\n"}, "p", "p", None,
     ["nested too deeply"]),
    ("over-size-limit", {"p": "description: big\n" + "# padding\n" * 30000}, "p", "p", None,
     [f"larger than {policy.MAX_PROFILE_BYTES} bytes"]),
    ("anchor-in-valid-profile", {"p": "extends: base\nnetwork: &net\n  mode: none\n"}, "p", "p", None,
     ["anchors and aliases", "line 2"]),
    ("alias-in-valid-profile", {"p": "extends: base\ndescription: &d free tier\nnetwork:\n  mode: none\n"
                                     "imports:\n  deny: [*d]\n"}, "p", "p", None, ["anchors and aliases"]),
]


@pytest.mark.parametrize("files,target,named,key,fragments",
                         [pytest.param(*case[1:], id=case[0]) for case in MALFORMED])
def test_malformed_profile(files, target, named, key, fragments, profile_dir):
    for name, content in files.items():
        path = profile_dir / f"{name}.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    with pytest.raises(ProfileError) as info:  # any other exception fails the test
        policy.resolve(target)
    err = info.value
    message = str(err)
    assert "Traceback" not in message
    named_file = str((profile_dir / f"{named}.yaml").resolve())
    assert any(f == named_file for f, _, _ in err.problems), message
    assert message.startswith(named_file + ":"), message
    if key is not None:
        assert key in [k for _, k, _ in err.problems], message
        assert f"{named_file}: {key}: " in message
    for fragment in fragments:
        assert fragment in message
    assert len(message) < 2000  # one clear message, not a dump


def test_malformed_profile_table_is_large_enough():
    assert len(MALFORMED) >= 20
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)


def test_yaml_bomb_refused_at_its_first_anchor(tmp_path):
    """Structural, not timed: the loader stops at the first anchor (line 1), before any
    node is composed, so a "billion laughs" document never expands."""
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    with pytest.raises(ProfileError, match="anchors and aliases") as info:
        policy.load_file(p)
    assert "line 1, column 4" in str(info.value)  # `a: &a [...]`: the anchor itself


# Worst cases within the size limit: each must end in a ProfileError. Run in a child
# process whose only time limit is a generous hang guard (a hang is a bug; a slow,
# loaded CI machine is not), so no assertion depends on this machine's speed.
WORST_CASES = {
    "bomb": BOMB,
    "nested-5000": "description: " + "[" * 5000 + "]" * 5000 + "\n",
    "nested-at-size-limit": "description: " + "[" * (policy.MAX_PROFILE_BYTES // 2 - 20)
                            + "]" * (policy.MAX_PROFILE_BYTES // 2 - 20) + "\n",
    "nested-mappings": "a: " + "{b: " * 3000 + "c" + "}" * 3000 + "\n",
    "anchor-chain-at-size-limit": "".join(f"k{i}: &a{i} [*a{i - 1}, *a{i - 1}]\n" for i in range(1, 9000))[
        :policy.MAX_PROFILE_BYTES],
    "long-path-string": "filesystem:\n  writable: ['/" + "a/" * 100000 + "..']\n",
    "long-home-string": "filesystem:\n  home: '/" + "{user}x" * 30000 + "{'\n",
}
HANG_GUARD_S = 300


def test_worst_case_documents_are_refused_not_hung(tmp_path):
    files = {}
    for name, text in WORST_CASES.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(text)
        assert len(text.encode()) <= policy.MAX_PROFILE_BYTES, name
    code = textwrap.dedent("""
        import json, sys
        from sandbox_kernel import policy
        out = {}
        for name, path in json.loads(sys.argv[1]).items():
            try:
                policy.resolve(path)
                out[name] = "loaded"
            except policy.ProfileError as e:
                out[name] = str(e)
        print(json.dumps(out))
        """)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps({k: str(v) for k, v in files.items()})],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "anchors and aliases" in out["bomb"] and "anchors and aliases" in out["anchor-chain-at-size-limit"]
    for name in ("nested-5000", "nested-at-size-limit", "nested-mappings"):
        assert "nested too deeply" in out[name], (name, out[name])
    assert "filesystem.writable[0]" in out["long-path-string"]
    assert "filesystem.home" in out["long-home-string"]


def test_special_files_are_not_read(tmp_path):
    with pytest.raises(ProfileError, match="not a regular file"):
        policy.load_file("/dev/zero")  # would never end if read whole
    with pytest.raises(ProfileError, match="cannot read the file"):
        policy.load_file(tmp_path / "missing.yaml")
    with pytest.raises(ProfileError, match="not a regular file"):
        policy.load_file(tmp_path)


def test_several_problems_of_one_file_reported_together(profile_dir):
    write(profile_dir, "p", """\
        network:
          mode: restricted
          tcp_connect_ports: [0, 80, 70000]
        limits:
          processes: 0
        """)
    with pytest.raises(ProfileError) as info:
        policy.resolve("p")
    keys = [k for _, k, _ in info.value.problems]
    assert keys == ["limits.processes", "network.tcp_connect_ports[0]", "network.tcp_connect_ports[2]"]


def test_missing_profile_name_and_bad_name(profile_dir):
    with pytest.raises(ProfileError) as info:
        policy.resolve("nosuch")
    assert "nosuch: no such profile" in str(info.value)
    assert str(profile_dir) in str(info.value)
    with pytest.raises(ProfileError, match="not a valid profile name"):
        policy.resolve("-rf")
    with pytest.raises(ProfileError, match="profile file not found"):
        policy.resolve(str(profile_dir / "missing.yaml"))


# --------------------------------------------------------------------------- extends


def test_grandchild_inherits(profile_dir):
    write(profile_dir, "grand", """\
        extends: base
        description: grandparent
        network: {mode: restricted, tcp_connect_ports: [80, 443], udp: true}
        limits: {memory: 1GiB, processes: 10, cpu_seconds: 60}
        accelerators: {gpu: {enabled: true, devices: [0, 1], memory_fraction: 0.5}}
        """)
    write(profile_dir, "parent", """\
        extends: grand
        limits: {processes: 20}
        """)
    write(profile_dir, "child", """\
        extends: parent
        description: child
        """)
    p = policy.resolve("child")
    assert [Path(s).stem for s in p.sources] == ["child", "parent", "grand", "base"]
    assert p.data["description"] == "child"
    assert p.limits == {"memory": "1GiB", "processes": 20, "cpu_seconds": 60, "open_files": 8192,
                        "inotify_instances": 16, "inotify_watches": 8192, "message_queues": "128KiB",
                        "pending_signals": 1024}  # base's shares of the per-uid counters
    assert p.network == {"mode": "restricted", "tcp_connect_ports": [80, 443], "udp": True, "listen_ports": []}
    assert p.gpu["enabled"] is True and p.gpu["devices"] == [0, 1] and p.gpu["memory_fraction"] == 0.5
    assert p.import_rule("roop") is not None  # from base, two levels up


@pytest.mark.covers("extends")
@pytest.mark.covers("extends")
def test_child_list_replaces_parent_list(profile_dir):
    write(profile_dir, "parent", """\
        network: {mode: restricted, tcp_connect_ports: [80, 443]}
        exec: {allow: ["{system}", "{python}", /opt/tools]}
        filesystem: {writable: ["{home}", "{tmp}"], protected: ["{home}/.ssh"]}
        accelerators: {gpu: {enabled: true, devices: [0, 1, 2]}}
        """)
    write(profile_dir, "child", """\
        extends: parent
        network: {tcp_connect_ports: [22]}
        exec: {allow: ["{python}"]}
        filesystem: {writable: ["{tmp}"]}
        accelerators: {gpu: {devices: [2]}}
        """)
    p = policy.resolve("child")
    assert p.network["tcp_connect_ports"] == [22]
    assert p.network["mode"] == "restricted"
    assert p.data["exec"]["allow"] == ["{python}"]
    assert p.data["filesystem"]["writable"] == ["{tmp}"]
    assert p.data["filesystem"]["protected"] == ["{home}/.ssh"]
    assert p.gpu["devices"] == [2] and p.gpu["enabled"] is True


@pytest.mark.covers("imports.deny", "imports.allow", "shell.deny")
@pytest.mark.covers("imports.deny", "imports.allow", "shell.deny")
def test_rule_lists_concatenate(profile_dir):
    write(profile_dir, "parent", """\
        imports: {deny: [aaa, {module: bbb, category: x, reason: y}], allow: [aaa.ok]}
        shell: {deny: ["*evil*"]}
        """)
    write(profile_dir, "child", """\
        extends: parent
        imports: {deny: [ccc, aaa], allow: [bbb.ok]}
        shell: {deny: ["*worse*", {pattern: "*.torrent", category: torrent, reason: "no torrents"}]}
        """)
    p = policy.resolve("child")
    assert p.data["imports"]["deny"] == ["aaa", {"module": "bbb", "category": "x", "reason": "y"}, "ccc"]
    assert p.data["imports"]["allow"] == ["aaa.ok", "bbb.ok"]
    assert [r["pattern"] for r in p.shell_rules()] == ["*evil*", "*worse*", "*.torrent"]
    for m in ("aaa.x", "bbb.x", "ccc", "ccc.d"):
        assert p.import_rule(m) is not None, m
    assert p.import_rule("aaa.ok") is None and p.import_rule("bbb.ok.sub") is None
    assert p.import_rule("aaa") is None  # the package above an allowed module


def test_child_cannot_drop_parent_deny(profile_dir):
    write(profile_dir, "child", "extends: free\nimports: {deny: []}\nshell: {deny: []}\n")
    p = policy.resolve("child")
    assert p.import_rule("roop") is not None
    assert any(r["pattern"] == "magnet:?*" for r in p.shell_rules())


def test_child_mapping_merges_key_by_key(profile_dir):
    write(profile_dir, "parent", """\
        network: {mode: restricted, tcp_connect_ports: [80], udp: true}
        limits: {memory: 2GiB, processes: 100}
        enforcement: {seccomp: best-effort, landlock: best-effort}
        accelerators: {gpu: {enabled: true, memory_fraction: 0.5}}
        """)
    write(profile_dir, "child", """\
        extends: parent
        network: {udp: false}
        limits: {processes: 50}
        enforcement: {landlock: required}
        accelerators: {gpu: {devices: [1]}}
        """)
    p = policy.resolve("child")
    assert p.network == {"mode": "restricted", "tcp_connect_ports": [80], "udp": False, "listen_ports": []}
    assert p.limits == {"memory": "2GiB", "processes": 50}
    assert p.enforcement("seccomp") == "best-effort" and p.enforcement("landlock") == "required"
    assert p.enforcement("rlimits") == "required"  # schema default
    assert p.gpu["enabled"] is True and p.gpu["memory_fraction"] == 0.5 and p.gpu["devices"] == [1]


def test_search_path_order(tmp_path, monkeypatch):
    d1, d2 = tmp_path / "first", tmp_path / "second"
    d1.mkdir()
    d2.mkdir()
    monkeypatch.setenv(policy.PROFILE_PATH_ENV, f"{d1}:{d2}")
    assert policy.search_path() == [str(d1), str(d2), "/etc/sandbox-kernel/profiles", str(SHIPPED_DIR)]
    assert policy.search_path({}) == ["/etc/sandbox-kernel/profiles", str(SHIPPED_DIR)]

    shipped_free = policy.resolve("free")
    assert shipped_free.sources[0] == str((SHIPPED_DIR / "free.yaml").resolve())

    write(d2, "free", "extends: base\ndescription: second dir\n")
    assert policy.resolve("free").data["description"] == "second dir"
    write(d1, "free", "extends: base\ndescription: first dir\n")
    p = policy.resolve("free")
    assert p.data["description"] == "first dir"
    assert p.sources[0] == str((d1 / "free.yaml").resolve())
    assert dict(policy.list_profiles())["free"] == str(d1 / "free.yaml")
    # `extends: free` from the shadowing dir finds the shadow too: the search path is one namespace.
    write(d2, "child", "extends: free\n")
    assert policy.resolve("child").data["description"] == "first dir"

    monkeypatch.setenv(policy.PROFILE_PATH_ENV, str(d2))
    assert policy.resolve("free").data["description"] == "second dir"
    monkeypatch.delenv(policy.PROFILE_PATH_ENV)
    assert policy.resolve("free").sources[0] == str((SHIPPED_DIR / "free.yaml").resolve())


def test_explicit_env_mapping_is_used(tmp_path):
    write(tmp_path, "mine", "description: from env mapping\n")
    env = {policy.PROFILE_PATH_ENV: str(tmp_path)}
    assert policy.resolve("mine", env).data["description"] == "from env mapping"


def test_path_to_file_is_a_profile_name(tmp_path, profile_dir, monkeypatch):
    f = write(tmp_path, "lab", "extends: free\ndescription: lab\nlimits: {processes: 7}\n")
    p = policy.resolve(str(f))
    assert p.name == "lab"
    assert p.sources[0] == str(f.resolve())
    assert p.limits["processes"] == 7
    assert p.network["tcp_connect_ports"] == [53, 80, 443]
    monkeypatch.chdir(tmp_path)
    assert policy.resolve("lab.yaml").limits["processes"] == 7
    assert policy.resolve("./lab.yaml").name == "lab"


@pytest.mark.covers("extends")
@pytest.mark.covers("extends")
def test_too_deep_extends_chain(profile_dir):
    for i in range(policy.MAX_EXTENDS_DEPTH + 2):
        write(profile_dir, f"p{i}", f"extends: p{i + 1}\n" if i <= policy.MAX_EXTENDS_DEPTH else "description: end\n")
    with pytest.raises(ProfileError, match=f"more than {policy.MAX_EXTENDS_DEPTH} levels"):
        policy.resolve("p0")


# --------------------------------------------------------------------------- a profile given as a file


def sk(*args, cwd=None):
    """The CLI in a fresh interpreter (the environment carries profile_dir's search path)."""
    return subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture
def beside(tmp_path, profile_dir):
    """A directory of profiles that is not on the search path."""
    d = tmp_path / "tenant-profiles"
    d.mkdir()
    write(d, "team", "extends: base\nlimits: {processes: 33}\n")
    write(d, "lab", "extends: team\ndescription: lab\n")
    return d


def test_validate_finds_extends_parents_beside_the_file(beside):
    proc = sk("profiles", "validate", str(beside / "lab.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert f"{beside / 'lab.yaml'}: ok" in proc.stdout
    proc = sk("profiles", "validate", "lab.yaml", cwd=beside)  # a bare file name in the cwd
    assert proc.returncode == 0, proc.stderr
    assert "lab.yaml: ok" in proc.stdout
    # and what validate checked is what a kernel started with this file gets
    p = policy.resolve(str(beside / "lab.yaml"))
    assert [Path(s).stem for s in p.sources] == ["lab", "team", "base"]
    assert p.limits["processes"] == 33


def test_parents_beside_the_file_come_first(beside, profile_dir):
    write(profile_dir, "team", "extends: base\nlimits: {processes: 99}\n")  # on the search path too
    write(beside, "free", "extends: base\ndescription: the one beside\n")
    write(beside, "child", "extends: free\n")
    assert policy.resolve(str(beside / "lab.yaml")).limits["processes"] == 33
    assert policy.resolve(str(beside / "child.yaml")).data["description"] == "the one beside"
    proc = sk("profiles", "show", str(beside / "child.yaml"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["network"]["mode"] == "none"  # not the shipped free's
    # a profile found by name keeps the search path as its one namespace
    assert policy.resolve("team").limits["processes"] == 99


def test_validate_names_a_broken_or_missing_parent_beside(beside):
    write(beside, "broken", "limits: {processes: 0}\n")
    write(beside, "kid", "extends: broken\n")
    write(beside, "orphan", "extends: nosuchparent\n")
    proc = sk("profiles", "validate", str(beside / "kid.yaml"), str(beside / "orphan.yaml"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{(beside / 'broken.yaml').resolve()}: limits.processes: 0 is out of range" in proc.stderr
    orphan = f"{(beside / 'orphan.yaml').resolve()}: extends: parent profile 'nosuchparent' not found"
    assert orphan in proc.stderr
    assert f"looked in {beside.resolve()}, " in proc.stderr  # the file's own directory first


def test_policy_cache_follows_parents_beside_the_file(beside, tmp_path):
    from sandbox_kernel import policy_cache

    cache = tmp_path / "cache.json"
    lab = str(beside / "lab.yaml")
    policy_cache.write(str(cache), [lab])
    hit = policy_cache.lookup(str(cache), lab)
    assert hit is not None and hit.limits["processes"] == 33
    write(beside, "team", "extends: base\nlimits: {processes: 34}\n")  # the parent beside changes
    assert policy_cache.lookup(str(cache), lab) is None


# --------------------------------------------------------------------------- filesystem and enforcement keys

DAEMON_SOCKETS = ["/run", "/var/run"]
CREDENTIALS = ["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssl/private", "/etc/munge"]


@pytest.mark.parametrize("name", SHIPPED)
def test_new_keys_defaults_in_every_shipped_profile(name, profile_dir):
    fs = policy.resolve(name).data["filesystem"]
    assert fs["noexec_writable"] is True
    assert (fs["tmp_size"], fs["shm_size"], fs["home"]) == ("2GiB", "1GiB", None)
    assert fs["hidden"][:2] == DAEMON_SOCKETS and set(CREDENTIALS) <= set(fs["hidden"])
    assert "/" not in fs["readable"] and not any(r.startswith(("/home", "/root", "/var", "/srv")) for r in fs["readable"])
    assert policy.resolve(name).data["capabilities"]["keep"] == {}
    assert fs["protected"] == ["{home}/.jupyter", "{home}/.local/share/jupyter/kernels"]
    assert policy.resolve(name).enforcement("pid_namespace") == "best-effort"


def test_resolved_policy_drops_ports_of_another_mode(profile_dir):
    """Found by the fuzz: a child that picks `mode: none` under a `restricted` parent
    resolved with the parent's ports, which is not a valid profile on its own."""
    write(profile_dir, "p", "extends: free\nnetwork: {mode: none}\n")
    p = policy.resolve("p")
    assert p.network["tcp_connect_ports"] == []
    policy.validate(p.data, "resolved")


def test_base_states_noexec_writable_explicitly():
    assert yaml.safe_load((SHIPPED_DIR / "base.yaml").read_text())["filesystem"]["noexec_writable"] is True


@pytest.mark.covers("filesystem.hidden")
@pytest.mark.covers("filesystem.hidden")
def test_hidden_concatenates_along_extends(profile_dir):
    write(profile_dir, "parent", "extends: base\nfilesystem: {hidden: [/srv/agent.sock]}\n")
    write(profile_dir, "child", "extends: parent\nfilesystem: {hidden: [], writable: ['{tmp}']}\n")
    write(profile_dir, "more", "extends: parent\nfilesystem: {hidden: [/var/run, /opt/secret]}\n")
    default_hidden = policy.schema()["properties"]["filesystem"]["properties"]["hidden"]["default"]
    assert policy.resolve("child").data["filesystem"]["hidden"] == default_hidden + ["/srv/agent.sock"]
    assert policy.resolve("more").data["filesystem"]["hidden"] == default_hidden + ["/srv/agent.sock", "/opt/secret"]
    # other filesystem keys still replace or merge as before
    assert policy.resolve("child").data["filesystem"]["writable"] == ["{tmp}"]


def test_new_filesystem_keys_merge_and_validate(profile_dir):
    write(profile_dir, "p", """\
        extends: free
        filesystem:
          noexec_writable: false
          tmp_size: 512MiB
          shm_size: 268435456
          home: /srv/homes/{tenant}/{user}-{uid}
        enforcement: {pid_namespace: required}
        """)
    p = policy.resolve("p")
    fs = p.data["filesystem"]
    assert fs["noexec_writable"] is False and fs["tmp_size"] == "512MiB" and fs["shm_size"] == 268435456
    assert fs["home"] == "/srv/homes/{tenant}/{user}-{uid}"
    assert p.enforcement("pid_namespace") == "required"
    assert p.import_rule("roop") is not None


@pytest.mark.covers("filesystem.noexec_writable", "filesystem.tmp_size", "filesystem.shm_size", "filesystem.home",
                    "filesystem.hidden")
@pytest.mark.covers("filesystem.noexec_writable", "filesystem.tmp_size", "filesystem.shm_size", "filesystem.home",
                    "filesystem.hidden")
def test_narrow_new_filesystem_keys():
    req = make({"filesystem": {"noexec_writable": False, "tmp_size": "4GiB", "shm_size": "256MiB",
                               "home": "/srv/tenant-choice", "hidden": ["/a"]},
                "enforcement": {"pid_namespace": "off"}})
    ceil = make({"filesystem": {"noexec_writable": True, "tmp_size": "1G", "shm_size": "1GiB",
                                "home": "/srv/homes/{tenant}", "hidden": ["/b"]},
                 "enforcement": {"pid_namespace": "required"}})
    for n, home in ((policy.narrow(req, ceil), "/srv/homes/{tenant}"), (policy.narrow(ceil, req), "/srv/tenant-choice")):
        fs = n.data["filesystem"]
        assert fs["noexec_writable"] is True  # true wins either way
        assert policy.parse_size(fs["tmp_size"]) == 1024**3 and policy.parse_size(fs["shm_size"]) == 256 * 1024**2
        assert sorted(fs["hidden"]) == ["/a", "/b"]
        assert n.enforcement("pid_namespace") == "required"
        assert fs["home"] == home  # the ceiling's home wins when it sets one
    assert policy.narrow(req, make({})).data["filesystem"]["home"] == "/srv/tenant-choice"
    assert policy.narrow(make({}), make({})).data["filesystem"]["noexec_writable"] is True
    off = make({"filesystem": {"noexec_writable": False}})
    assert policy.narrow(off, off).data["filesystem"]["noexec_writable"] is False


def test_report_rows_show_new_keys(profile_dir):
    from sandbox_kernel.report import policy_rows

    rows = {r[0]: r for r in policy_rows(policy.resolve("free"))}
    assert rows["filesystem.noexec_writable"][1].startswith("on: ") and rows["filesystem.noexec_writable"][2] == "hard"
    assert rows["filesystem.tmp_size"][1] == "2 GiB private /tmp"
    assert rows["filesystem.shm_size"][1] == "1 GiB private /dev/shm"
    assert rows["filesystem.home"][1] == "$HOME"
    assert "/run" in rows["filesystem.hidden"][1] and rows["filesystem.hidden"][2] == "hard"
    assert "~/.local/lib" not in rows["filesystem.protected"][1] and "{home}/.local/lib" not in rows["filesystem.protected"][1]
    p = make({"filesystem": {"noexec_writable": False, "home": "/srv/{user}"}, "enforcement": {"pid_namespace": "off"}})
    rows = {r[0]: r for r in policy_rows(p)}
    assert rows["filesystem.noexec_writable"][1].startswith("off: ")
    assert rows["filesystem.home"][1] == "/srv/{user}" and "bind mount" in rows["filesystem.home"][3]
    assert rows["enforcement.pid_namespace"][1:3] == ("off", "hard")


# --------------------------------------------------------------------------- import rules


def test_name_blocks_module_and_submodules():
    p = make({"imports": {"deny": ["roop"]}})
    for m in ("roop", "roop.core", "roop.core.face_swapper"):
        assert p.import_rule(m)["module"] == "roop", m
    for m in ("roopx", "xroop", "x.roop", "roo", "json"):
        assert p.import_rule(m) is None, m


def test_submodule_rule_blocks_only_its_subtree(profile_dir):
    p = policy.resolve("free")
    for m in ("insightface", "insightface.app", "insightface.model_zoo", "insightface.model_zoo.arcface_onnx",
              "insightface.model_zoo.inswapperx"):
        assert p.import_rule(m) is None, m
    for m in ("insightface.model_zoo.inswapper", "insightface.model_zoo.inswapper.x"):
        rule = p.import_rule(m)
        assert rule is not None and rule["module"] == "insightface.model_zoo.inswapper"
        assert rule["category"] == "deepfake"


@pytest.mark.covers("imports.allow")
@pytest.mark.covers("imports.allow")
def test_more_specific_allow_wins():
    p = make({"imports": {"deny": ["a", "x.y"], "allow": ["a.b", "x.y.z"]}})
    assert p.import_rule("a.b") is None
    assert p.import_rule("a.b.c") is None
    assert p.import_rule("a.c")["module"] == "a"
    assert p.import_rule("x.y.z.w") is None
    assert p.import_rule("x.y.q")["module"] == "x.y"


def test_deny_wins_at_equal_specificity():
    p = make({"imports": {"deny": ["a.b"], "allow": ["a.b"]}})
    assert p.import_rule("a.b")["module"] == "a.b"
    assert p.import_rule("a.b.c")["module"] == "a.b"
    assert p.import_rule("a") is None


@pytest.mark.covers("imports.allow")
@pytest.mark.covers("imports.allow")
def test_package_above_allowed_module_is_importable():
    p = make({"imports": {"deny": ["a"], "allow": ["a.b.c"]}})
    # Python imports a, then a.b, then a.b.c: all three must pass the guard.
    assert p.import_rule("a") is None
    assert p.import_rule("a.b") is None
    assert p.import_rule("a.b.c") is None
    assert p.import_rule("a.b.c.d") is None
    assert p.import_rule("a.b.other")["module"] == "a"
    assert p.import_rule("a.other")["module"] == "a"
    assert p.import_rule("a.bc")["module"] == "a"  # a prefix of a name is not its parent


def test_libtpu_follows_tpu_enablement():
    off = make({"accelerators": {"tpu": {"enabled": False}}})
    on = make({"accelerators": {"tpu": {"enabled": True}}})
    assert off.import_rule("libtpu")["category"] == "accelerator"
    assert off.import_rule("libtpu.sdk") is not None
    assert on.import_rule("libtpu") is None and on.import_rule("libtpu.sdk") is None


def test_denied_distributions(profile_dir):
    p = policy.resolve("free")
    dists = p.denied_distributions()
    assert dists["python-libtorrent"]["module"] == "libtorrent"
    assert dists["flask-ngrok"]["module"] == "flask_ngrok"
    assert "insightface" not in dists  # the submodule rule does not refuse `pip install insightface`


# --------------------------------------------------------------------------- narrowing (examples)


@pytest.mark.covers("imports.deny", "imports.allow")
@pytest.mark.covers("imports.deny", "imports.allow")
def test_narrow_import_lists():
    req = make({"imports": {"deny": ["a"], "allow": ["a.b", "a.c"]}})
    ceil = make({"imports": {"deny": ["a", "z"], "allow": ["a.b"]}})
    n = policy.narrow(req, ceil)
    assert n.import_rule("z") is not None  # deny lists unite
    assert n.import_rule("a.b") is None  # allowed by both
    assert n.import_rule("a.c") is not None  # allow lists intersect
    assert n.data["imports"]["allow"] == ["a.b"]
    assert policy.narrow(ceil, req).import_rule("a.c") is not None


@pytest.mark.covers("accelerators.gpu.enabled", "accelerators.gpu.devices", "accelerators.tpu.chips")
@pytest.mark.covers("accelerators.gpu.enabled", "accelerators.gpu.devices", "accelerators.tpu.chips")
def test_narrow_devices():
    def gpu(devices, enabled=True):
        g = {"enabled": enabled} | ({} if devices is None else {"devices": devices})
        return make({"accelerators": {"gpu": g}})

    assert policy.narrow(gpu([0, 1, 2]), gpu([1, 2, 3])).gpu["devices"] == [1, 2]
    assert policy.narrow(gpu(None), gpu([1])).gpu["devices"] == [1]
    assert policy.narrow(gpu([3]), gpu(None)).gpu["devices"] == [3]
    assert "devices" not in policy.narrow(gpu(None), gpu(None)).gpu  # every GPU present
    assert policy.narrow(gpu([0]), gpu([0], enabled=False)).gpu["enabled"] is False
    other_hw = make({"accelerators": {"gpu": {"enabled": True, "device_pattern": "/dev/dri/card{index}"}}})
    n = policy.narrow(gpu([0]), other_hw)
    assert n.gpu["enabled"] is False and n.gpu["devices"] == []
    tpu = policy.narrow(make({"accelerators": {"tpu": {"enabled": True, "chips": [0, 1]}}}),
                        make({"accelerators": {"tpu": {"enabled": True, "chips": [1, 2]}}}))
    assert tpu.tpu["enabled"] is True and tpu.tpu["chips"] == [1]
    assert tpu.import_rule("libtpu") is None
    mig = "MIG-0a1b2c"
    a = make({"accelerators": {"gpu": {"enabled": True, "devices": [
        {"mig": mig, "gpu": 0, "gpu_instance": 1, "compute_instance": 0}, 1]}}})
    b = make({"accelerators": {"gpu": {"enabled": True, "devices": [mig]}}})
    assert [policy.device_key(d) for d in policy.narrow(a, b).gpu["devices"]] == [mig]


@pytest.mark.covers("limits.memory", "limits.processes", "limits.cpu_seconds", "limits.file_size",
                    "accelerators.gpu.memory_fraction", "accelerators.gpu.mps_memory_limit")
@pytest.mark.covers("limits.memory", "limits.processes", "limits.cpu_seconds", "limits.file_size",
                    "accelerators.gpu.memory_fraction", "accelerators.gpu.mps_memory_limit")
def test_narrow_limits_take_minimum_sizes_as_bytes():
    req = make({"limits": {"memory": "8GiB", "processes": 100, "file_size": "1.5G"}})
    ceil = make({"limits": {"memory": 4 * 1024**3, "processes": 500, "cpu_seconds": 60, "file_size": 1024**3 * 2}})
    n = policy.narrow(req, ceil)
    assert policy.parse_size(n.limits["memory"]) == 4 * 1024**3
    assert n.limits["processes"] == 100
    assert n.limits["cpu_seconds"] == 60
    assert policy.parse_size(n.limits["file_size"]) == int(1.5 * 1024**3)
    # "512MiB" < "1G" although "5" > "1" as text
    assert policy.narrow(make({"limits": {"memory": "512MiB"}}),
                         make({"limits": {"memory": "1G"}})).limits["memory"] == "512MiB"
    g = policy.narrow(make({"accelerators": {"gpu": {"enabled": True, "memory_fraction": 0.9,
                                                     "mps_memory_limit": "16G"}}}),
                      make({"accelerators": {"gpu": {"enabled": True, "memory_fraction": 0.5,
                                                     "mps_memory_limit": "8000M"}}})).gpu
    assert g["memory_fraction"] == 0.5 and g["mps_memory_limit"] == "8000M"


@pytest.mark.parametrize("a,b,mode,ports", [
    ({"mode": "full"}, {"mode": "restricted", "tcp_connect_ports": [80, 443]}, "restricted", [80, 443]),
    ({"mode": "restricted", "tcp_connect_ports": [80, 443]}, {"mode": "restricted", "tcp_connect_ports": [443, 22]},
     "restricted", [443]),
    ({"mode": "none"}, {"mode": "full"}, "none", []),
    ({"mode": "restricted", "tcp_connect_ports": [80]}, {"mode": "none"}, "none", []),
    ({"mode": "full"}, {"mode": "full"}, "full", []),
])
@pytest.mark.covers("network.mode", "network.tcp_connect_ports")
@pytest.mark.covers("network.mode", "network.tcp_connect_ports")
def test_narrow_network(a, b, mode, ports):
    for x, y in ((a, b), (b, a)):
        n = policy.narrow(make({"network": x}), make({"network": y}))
        assert n.network["mode"] == mode
        assert n.network["tcp_connect_ports"] == ports


@pytest.mark.parametrize("a,b,listen", [
    ({"mode": "full", "listen_ports": "any"}, {"mode": "full"}, []),
    ({"mode": "full", "listen_ports": "any"}, {"mode": "restricted", "listen_ports": [8000, 8001]}, [8000, 8001]),
    ({"mode": "full", "listen_ports": "any"}, {"mode": "full", "listen_ports": "any"}, "any"),
    ({"mode": "full", "listen_ports": [8000, 9000]}, {"mode": "full", "listen_ports": [9000, 7000]}, [9000]),
    ({"mode": "full", "listen_ports": "any"}, {"mode": "none"}, []),
])
@pytest.mark.covers("network.listen_ports")
@pytest.mark.covers("network.listen_ports")
def test_narrow_listen_ports(a, b, listen):
    """A ceiling never widens servers: the common ports; `any` yields to the other side."""
    for x, y in ((a, b), (b, a)):
        assert policy.narrow(make({"network": x}), make({"network": y})).network["listen_ports"] == listen


@pytest.mark.parametrize("network,key,words", [
    ({"mode": "restricted", "listen_ports": [8000, 8000]}, "network.listen_ports", "twice"),
    ({"mode": "none", "listen_ports": [8000]}, "network.listen_ports", "mode: none"),
    ({"mode": "full", "listen_ports": "all"}, "network.listen_ports", "expected"),
    ({"mode": "full", "listen_ports": [0]}, "network.listen_ports", "expected"),
])
def test_listen_ports_refused_by_name(tmp_path, network, key, words):
    f = tmp_path / "bad.yaml"
    f.write_text("network: " + json.dumps(network) + "\n")
    with pytest.raises(ProfileError) as e:
        policy.resolve(str(f))
    assert key in str(e.value) and words in str(e.value), str(e.value)


@pytest.mark.covers("network.udp")
@pytest.mark.covers("network.udp")
def test_narrow_udp_needs_both_restricted_sides():
    r = {"mode": "restricted", "tcp_connect_ports": [53]}
    assert policy.narrow(make({"network": r | {"udp": True}}), make({"network": r})).network["udp"] is False
    assert policy.narrow(make({"network": r | {"udp": True}}), make({"network": {"mode": "full"}})).network["udp"]


@pytest.mark.covers("enforcement.import_guard", "enforcement.no_new_privs", "enforcement.capabilities",
                    "enforcement.rlimits", "enforcement.cgroup", "enforcement.mount_namespace",
                    "enforcement.pid_namespace", "enforcement.landlock", "enforcement.seccomp")
@pytest.mark.covers("enforcement.import_guard", "enforcement.no_new_privs", "enforcement.capabilities",
                    "enforcement.rlimits", "enforcement.cgroup", "enforcement.mount_namespace",
                    "enforcement.pid_namespace", "enforcement.landlock", "enforcement.seccomp")
def test_narrow_enforcement_takes_stricter_level():
    a = make({"enforcement": {"seccomp": "off", "landlock": "required", "cgroup": "best-effort"}})
    b = make({"enforcement": {"seccomp": "best-effort", "landlock": "off", "cgroup": "off"}})
    n = policy.narrow(a, b)
    assert n.enforcement("seccomp") == "best-effort"
    assert n.enforcement("landlock") == "required"
    assert n.enforcement("cgroup") == "best-effort"
    assert n.enforcement("mount_namespace") == "best-effort"


@pytest.mark.covers("exec.allow", "filesystem.writable")
@pytest.mark.covers("exec.allow", "filesystem.writable")
def test_narrow_paths_are_path_aware():
    a = make({"exec": {"allow": ["/opt/tools/bin", "/usr", "{python}"]},
              "filesystem": {"writable": ["/data", "/scratch", "{home}"]}})
    b = make({"exec": {"allow": ["/opt/tools", "/usr/bin", "/usr/lib"]},
              "filesystem": {"writable": ["/data/tenant", "/scratch2", "{home}/work"]}})
    n = policy.narrow(a, b)
    assert sorted(n.data["exec"]["allow"]) == ["/opt/tools/bin", "/usr/bin", "/usr/lib"]
    assert sorted(n.data["filesystem"]["writable"]) == ["/data/tenant", "{home}/work"]  # /scratch2 is not in /scratch
    assert sorted(policy.narrow(b, a).data["filesystem"]["writable"]) == ["/data/tenant", "{home}/work"]


def test_path_within_normalises():
    assert policy_merge._path_within("/data/x", "/data")
    assert policy_merge._path_within("/data", "/data/")
    assert not policy_merge._path_within("/data2", "/data")
    assert not policy_merge._path_within("/data/../etc", "/data")
    # Hand-built policies (not through the schema) cannot escape with `..` either.
    assert policy_merge._intersect_dirs(["/home/u/../../etc"], ["/home/u"]) == []


@pytest.mark.covers("audit.log")
@pytest.mark.covers("audit.log")
def test_narrow_audit_log_of_ceiling_wins():
    req, ceil = make({"audit": {"log": "/var/log/tenant.log"}}), make({"audit": {"log": "/var/log/platform.log"}})
    assert policy.narrow(req, ceil).audit_log == "/var/log/platform.log"
    assert policy.narrow(req, make({})).audit_log == "/var/log/tenant.log"  # ceiling sets none: still logged
    assert policy.narrow(make({}), ceil).audit_log == "/var/log/platform.log"


def test_effective_with_ceiling_env(profile_dir, monkeypatch):
    write(profile_dir, "platform", """\
        extends: base
        network: {mode: restricted, tcp_connect_ports: [443]}
        limits: {memory: 2GiB, processes: 64}
        imports: {deny: [torch_extra]}
        audit: {log: /var/log/sandbox.log}
        """)
    assert policy.effective("research").network["mode"] == "full"
    monkeypatch.setenv(policy.CEILING_ENV, "platform")
    p = policy.effective("research")
    assert p.label == "research (ceiling platform)"
    assert p.ceiling == "platform" and p.ceiling_sources[0].endswith("platform.yaml")
    assert p.network == {"mode": "restricted", "tcp_connect_ports": [443], "udp": False, "listen_ports": []}
    assert p.limits["processes"] == 64 and p.limits["memory"] == "2GiB"
    assert p.import_rule("torch_extra") is not None
    assert p.audit_log == "/var/log/sandbox.log"
    assert p.gpu["enabled"] is False  # the ceiling enables no GPU
    free = policy.effective("free")
    assert free.network["tcp_connect_ports"] == [443]
    assert free.limits["memory"] == "2GiB"
    # The transport keeps the ceiling.
    assert policy.Policy.from_json(p.to_json()).label == p.label
    monkeypatch.setenv(policy.CEILING_ENV, "  ")
    assert policy.effective("research").ceiling is None


def test_bad_ceiling_names_the_variable(profile_dir, monkeypatch):
    monkeypatch.setenv(policy.CEILING_ENV, "nosuchceiling")
    with pytest.raises(ProfileError) as info:
        policy.effective("free")
    assert str(info.value).startswith("SANDBOX_KERNEL_CEILING=nosuchceiling: ")
    assert "no such profile" in str(info.value)
    write(profile_dir, "broken", "limits: {processes: 0}\n")
    monkeypatch.setenv(policy.CEILING_ENV, "broken")
    with pytest.raises(ProfileError) as info:
        policy.effective("free")
    msg = str(info.value)
    assert "SANDBOX_KERNEL_CEILING=broken" in msg and "broken.yaml" in msg and "limits.processes" in msg


# --------------------------------------------------------------------------- narrowing (properties)

MODULES = ["a", "a.b", "a.b.c", "a.c", "b", "b.a", "c", "libtpu"]
PROBES = sorted(set(MODULES + [m + ".x" for m in MODULES] + ["a.b.c.d", "d", "b.b", "libtpu.sdk"]))
EXEC_DIRS = ["/opt", "/opt/a", "/opt/a/b", "/opt/b", "/usr", "/usr/bin", "{python}", "{system}"]
WRITABLE_DIRS = ["/data", "/data/x", "/data/x/y", "/data/y", "{home}", "{home}/w", "{tmp}", "/dev/shm"]
PATH_PROBES = sorted(set(EXEC_DIRS + WRITABLE_DIRS + [d + "/z" for d in EXEC_DIRS + WRITABLE_DIRS]
                         + ["/opt/ab", "/data2", "/"]))
SIZES = ["512MiB", "1G", 1073741824, "1.5GiB", "8GiB", 4096, "4096", "2 GiB"]
LAYERS = list(policy.schema()["properties"]["enforcement"]["properties"])
LEVELS = list(policy.ENFORCEMENT_ORDER)
SIZE_KEYS = {"memory", "address_space", "file_size"}


@st.composite
def raw_profiles(draw):
    raw: dict = {}
    raw["imports"] = {"deny": draw(st.lists(st.sampled_from(MODULES[:-1]), unique=True, max_size=4)),
                      "allow": draw(st.lists(st.sampled_from(MODULES[:-1]), unique=True, max_size=3))}
    mode = draw(st.sampled_from(["none", "restricted", "full"]))
    net: dict = {"mode": mode, "udp": draw(st.booleans())}
    if mode == "restricted":
        net["tcp_connect_ports"] = draw(st.lists(st.sampled_from([22, 53, 80, 443, 8080]), unique=True))
    raw["network"] = net
    gpu: dict = {"enabled": draw(st.booleans())}
    devices = draw(st.none() | st.lists(st.integers(0, 4), unique=True))
    if devices is not None:
        gpu["devices"] = devices
    fraction = draw(st.none() | st.sampled_from([0.25, 0.5, 0.9, 1.0]))
    if fraction is not None:
        gpu["memory_fraction"] = fraction
    tpu: dict = {"enabled": draw(st.booleans())}
    chips = draw(st.none() | st.lists(st.integers(0, 3), unique=True))
    if chips is not None:
        tpu["chips"] = chips
    raw["accelerators"] = {"gpu": gpu, "tpu": tpu}
    limits = {}
    for key in ("memory", "address_space", "file_size"):
        if draw(st.booleans()):
            limits[key] = draw(st.sampled_from(SIZES))
    for key, lo in (("processes", 1), ("open_files", 16), ("cpu_seconds", 1)):
        if draw(st.booleans()):
            limits[key] = draw(st.integers(lo, 5000))
    raw["limits"] = limits
    raw["exec"] = {"allow": draw(st.lists(st.sampled_from(EXEC_DIRS), unique=True, max_size=4))}
    raw["filesystem"] = {"writable": draw(st.lists(st.sampled_from(WRITABLE_DIRS), unique=True, max_size=4))}
    raw["enforcement"] = draw(st.dictionaries(st.sampled_from(LAYERS), st.sampled_from(LEVELS), max_size=4))
    log = draw(st.none() | st.sampled_from(["/var/log/a.log", "/var/log/b.log"]))
    raw["audit"] = {"log": log}
    return raw


policies = raw_profiles().map(make)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _within_any(path: str, roots: list[str]) -> bool:
    path = posixpath.normpath(path)
    return any(path == posixpath.normpath(r) or path.startswith(posixpath.normpath(r).rstrip("/") + "/")
               for r in roots)


def _devices(d: dict, field: str):
    """Device keys a side permits: None = every device present; empty when disabled."""
    if not d["enabled"]:
        return set()
    items = d.get(field)
    return None if items is None else {json.dumps(policy.device_key(x)) for x in items}


def _permits(p: policy.Policy) -> dict:
    """What a policy permits, in comparable form."""
    net = p.network
    return {
        "imports": {m: p.import_rule(m) is None for m in PROBES},
        "mode": net["mode"],
        "ports": set(net["tcp_connect_ports"]) if net["mode"] == "restricted" else None,
        "udp": net["udp"] if net["mode"] == "restricted" else None,
        "gpu": _devices(p.gpu, "devices"),
        "tpu": _devices(p.tpu, "chips"),
        "limits": {k: (policy.parse_size(v) if k in SIZE_KEYS else v)
                   for k, v in p.limits.items() if v is not None},
        "exec": {q: _within_any(q, p.data["exec"]["allow"]) for q in PATH_PROBES},
        "writable": {q: _within_any(q, p.data["filesystem"]["writable"]) for q in PATH_PROBES},
        "enforcement": dict(p.data["enforcement"]),
        "audit": p.audit_log is not None,
        "memory_fraction": p.gpu.get("memory_fraction") if p.gpu["enabled"] else None,
    }


@PROPERTY_SETTINGS
@given(policies, policies)
def test_narrowing_never_permits_what_either_side_forbids(a, b):
    n = policy.narrow(a, b)
    assert n.ceiling == b.name
    for m in PROBES:
        if a.import_rule(m) is not None or b.import_rule(m) is not None:
            assert n.import_rule(m) is not None, m
    order = policy.NETWORK_ORDER
    assert order[n.network["mode"]] <= min(order[a.network["mode"]], order[b.network["mode"]])
    if n.network["mode"] == "restricted":
        for side in (a, b):
            if side.network["mode"] == "restricted":
                assert set(n.network["tcp_connect_ports"]) <= set(side.network["tcp_connect_ports"])
                assert side.network["udp"] or not n.network["udp"]
    else:
        assert n.network["tcp_connect_ports"] == []
    for kind, field in (("gpu", "devices"), ("tpu", "chips")):
        got = n.data["accelerators"][kind]
        if got["enabled"]:
            for side in (a, b):
                s = side.data["accelerators"][kind]
                assert s["enabled"]
                if s.get(field) is not None:
                    assert got.get(field) is not None
                    assert {json.dumps(policy.device_key(x)) for x in got[field]} <= _devices(s, field)
    for key, value in a.limits.items() | b.limits.items():
        if value is None:
            continue
        conv = policy.parse_size if key in SIZE_KEYS else int
        assert n.limits.get(key) is not None, key
        assert conv(n.limits[key]) <= conv(value), key
    for field, sub in (("exec", "allow"), ("filesystem", "writable")):
        for path in n.data[field][sub]:
            assert _within_any(path, a.data[field][sub]), path
            assert _within_any(path, b.data[field][sub]), path
    for layer in LAYERS:
        level = policy.ENFORCEMENT_ORDER[n.enforcement(layer)]
        assert level >= policy.ENFORCEMENT_ORDER[a.enforcement(layer)]
        assert level >= policy.ENFORCEMENT_ORDER[b.enforcement(layer)]
    if a.audit_log or b.audit_log:
        assert n.audit_log in (a.audit_log, b.audit_log) and n.audit_log is not None
    if n.gpu["enabled"]:
        for side in (a, b):
            if side.gpu.get("memory_fraction") is not None:
                assert n.gpu["memory_fraction"] <= side.gpu["memory_fraction"]
    # Probe-level: everything the result permits, both sides permit.
    pn, pa, pb = _permits(n), _permits(a), _permits(b)
    for q in PATH_PROBES:
        for what in ("exec", "writable"):
            if pn[what][q]:
                assert pa[what][q] and pb[what][q], (what, q)
    # The narrowed data is still a valid profile.
    policy.validate(n.data, "narrowed")


@PROPERTY_SETTINGS
@given(policies)
def test_narrowing_is_idempotent(a):
    assert _permits(policy.narrow(a, a)) == _permits(a)


@PROPERTY_SETTINGS
@given(policies, policies)
def test_narrowing_is_commutative_in_what_it_permits(a, b):
    ab, ba = _permits(policy.narrow(a, b)), _permits(policy.narrow(b, a))
    # The audit log is the ceiling's when it has one (not symmetric by design): compare presence only.
    assert ab == ba


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(policies, policies, policies)
def test_narrowing_is_associative_for_imports_and_network(a, b, c):
    left = _permits(policy.narrow(policy.narrow(a, b), c))
    right = _permits(policy.narrow(a, policy.narrow(b, c)))
    for key in ("imports", "mode", "ports", "udp", "gpu", "tpu", "limits", "exec", "writable", "enforcement"):
        assert left[key] == right[key], key


def test_property_alphabet_covers_nested_rules():
    """Sanity of the generators: the alphabet holds nested names, so submodule rules are exercised."""
    assert any("." in m for m in MODULES) and "a.b.c.d" in PROBES
    assert os.path.join("/opt", "a") in EXEC_DIRS


def test_yaml_1_2_booleans(profile_dir):
    """`off` is the enforcement level, not YAML 1.1's false; `yes` is not a boolean."""
    write(profile_dir, "offword", "extends: free\nenforcement: {pid_namespace: off, mount_namespace: off}\n")
    assert policy.resolve("offword").enforcement("pid_namespace") == "off"
    write(profile_dir, "yesword", "extends: free\nnetwork: {udp: yes}\n")
    with pytest.raises(ProfileError) as e:
        policy.resolve("yesword")
    assert "network.udp" in str(e.value) and "expected true or false" in str(e.value) and "'yes'" in str(e.value)


def test_the_documented_way_to_re_allow_what_base_denies(profile_dir):
    """docs/profile-reference.md, 'Re-allowing what a parent denies': a copy of base without
    the entry, a copy of free extending it; the tenant's profile extending that copy may import
    the module, and validate has nothing to warn about."""
    base = yaml.safe_load((SHIPPED_DIR / "base.yaml").read_text())
    base["imports"]["deny"] = [d for d in base["imports"]["deny"] if d["module"] != "pyngrok"]
    (profile_dir / "base-tunnels.yaml").write_text(yaml.safe_dump(base))
    free = yaml.safe_load((SHIPPED_DIR / "free.yaml").read_text())
    free["extends"] = "base-tunnels"
    (profile_dir / "free-tunnels.yaml").write_text(yaml.safe_dump(free))
    write(profile_dir, "tenant", "extends: free-tunnels\n")
    p = policy.resolve("tenant")
    modules = [_rule_module(d) for d in p.data["imports"]["deny"]]
    assert "pyngrok" not in modules and "ngrok" in modules, modules
    assert policy_merge.warnings(p) == []
    assert "pyngrok" in [_rule_module(d) for d in policy.resolve("free").data["imports"]["deny"]]
