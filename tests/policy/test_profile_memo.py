"""Profile files are parsed and checked once per content in a process (policy_load._PARSED and
_VALID): resolving every shipped profile read base.yaml again for each one, and `install --all`
parsed 252 YAML documents. What a caller is given is its own copy, a changed file is read again,
and a file that fails is refused every time."""

import pytest

from sandbox_kernel import policy, policy_load
from sandbox_kernel.errors import ProfileError


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(policy_load, "_PARSED", {})
    monkeypatch.setattr(policy_load, "_VALID", set())


def _count_yaml_loads(monkeypatch) -> list:
    yaml, _loader = policy_load._yaml_loader()
    calls = []
    real = yaml.load

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(yaml, "load", counting)
    return calls


def test_each_file_is_parsed_once_across_profiles(monkeypatch):
    calls = _count_yaml_loads(monkeypatch)
    names = ["default", "offline", "research", "free", "gpu"]
    for name in names:
        policy.resolve(name)
    files = {f for name in names for f in policy.resolve(name).sources}
    assert len(calls) == len(files), (len(calls), sorted(files))


def test_callers_get_their_own_copy(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("extends: base\nlimits: {processes: 7}\n")
    first = policy_load.load_file(f)
    first["limits"]["processes"] = 9999
    first["extra"] = 1
    assert policy_load.load_file(f) == {"extends": "base", "limits": {"processes": 7}}


def test_a_changed_file_is_read_again(tmp_path, monkeypatch):
    f = tmp_path / "p.yaml"
    f.write_text("extends: base\nlimits: {processes: 7}\n")
    assert policy_load.load_file(f)["limits"]["processes"] == 7
    f.write_text("extends: base\nlimits: {processes: 8}\n")
    assert policy_load.load_file(f)["limits"]["processes"] == 8


def test_a_failure_is_refused_every_time(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("extends: base\nlimits: {processes: -1}\n")
    for _ in range(2):
        data = policy_load.load_file(f)
        with pytest.raises(ProfileError) as e:
            policy_load.validate(data, str(f))
        assert "limits.processes" in str(e.value)
    assert not policy_load._VALID


def test_valid_data_is_checked_once_per_content(monkeypatch):
    seen = []
    real = policy_load._validate
    monkeypatch.setattr(policy_load, "_validate", lambda data, label: (seen.append(label), real(data, label)))
    data = {"extends": "base", "limits": {"processes": 7}}
    policy_load.validate(data, "x.yaml")
    policy_load.validate(dict(data), "x.yaml")
    assert seen == ["x.yaml"]
    policy_load.validate({"extends": "base", "limits": {"processes": 8}}, "x.yaml")
    policy_load.validate(data, "y.yaml")
    assert seen == ["x.yaml", "x.yaml", "y.yaml"]
