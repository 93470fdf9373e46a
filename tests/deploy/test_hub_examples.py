"""The logic of the shipped JupyterHub examples, loaded as JupyterHub loads them (a config
file run with `get_config` and `load_subconfig`), with stand-in spawners: which ceiling
each user gets, and which KubeSpawner profiles each user is offered. (The Hub itself,
end to end, is tests/deploy/test_jupyterhub.py; KubeSpawner needs a cluster.)"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from testenv import REPO
from traitlets.config import Config

EXAMPLES = REPO / "examples" / "jupyterhub"


def load(name: str, monkeypatch, **env) -> tuple[Config, dict]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    c = Config()
    ns: dict = {}

    def load_subconfig(path):
        exec(compile(Path(path).read_text(), str(path), "exec"), {"get_config": lambda: c,
                                                                  "load_subconfig": load_subconfig})

    ns.update(get_config=lambda: c, load_subconfig=load_subconfig, __file__=str(EXAMPLES / name))
    exec(compile((EXAMPLES / name).read_text(), str(EXAMPLES / name), "exec"), ns)
    return c, ns


def spawner(name: str, groups: list[str]):
    return SimpleNamespace(user=SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups]),
                           environment={}, log=logging.getLogger("test"))


@pytest.mark.parametrize("groups, ceiling", [
    (["sandbox-free"], "free"),
    (["sandbox-research"], "research"),
    (["sandbox-research", "sandbox-exam"], "offline"),   # the strictest listed first wins
    (["sandbox-gpu", "sandbox-free"], "free"),
    ([], "offline"),                                      # in no listed group: fail closed
    (["some-other-group"], "offline"),
])
def test_pre_spawn_hook_sets_the_ceiling_of_the_users_groups(monkeypatch, groups, ceiling):
    monkeypatch.delenv("SANDBOX_CEILING_GROUPS", raising=False)
    c, _ = load("jupyterhub_config.py", monkeypatch)
    s = spawner("no-such-system-user-xyz", groups)
    c.Spawner.pre_spawn_hook(s)
    assert s.environment == {"SANDBOX_KERNEL_CEILING": ceiling}


def test_ceiling_groups_from_the_environment(monkeypatch):
    c, _ = load("jupyterhub_config.py", monkeypatch, SANDBOX_CEILING_GROUPS="exam=offline, students=free",
                SANDBOX_DEFAULT_CEILING="offline")
    s = spawner("no-such-system-user-xyz", ["students"])
    c.Spawner.pre_spawn_hook(s)
    assert s.environment["SANDBOX_KERNEL_CEILING"] == "free"


@pytest.mark.parametrize("value", ["exam", "exam=", "=offline", "exam=offline,students"])
def test_a_malformed_group_table_stops_the_hub_at_start(monkeypatch, value):
    with pytest.raises(ValueError, match="SANDBOX_CEILING_GROUPS: .* is not GROUP=PROFILE"):
        load("jupyterhub_config.py", monkeypatch, SANDBOX_CEILING_GROUPS=value)


def test_unix_groups_count_for_a_system_account(monkeypatch):
    """root's primary group (root) is a Unix group: mapped, it decides the ceiling."""
    c, _ = load("jupyterhub_config.py", monkeypatch, SANDBOX_CEILING_GROUPS="root=research")
    s = spawner("root", [])
    c.Spawner.pre_spawn_hook(s)
    assert s.environment["SANDBOX_KERNEL_CEILING"] == "research"


@pytest.mark.parametrize("groups, offered", [
    (["sandbox-free"], ["free"]),
    (["sandbox-gpu", "sandbox-free"], ["free", "gpu"]),
    ([], ["exam"]),
    (["sandbox-research"], ["research"]),
])
def test_kubespawner_offers_only_the_profiles_of_the_users_groups(monkeypatch, groups, offered):
    monkeypatch.delenv("SANDBOX_CEILING_GROUPS", raising=False)
    c, _ = load("kubespawner_profiles.py", monkeypatch)
    assert c.JupyterHub.spawner_class == "kubespawner.KubeSpawner"
    assert callable(c.Spawner.pre_spawn_hook)  # the ceiling hook came along
    profiles = c.KubeSpawner.profile_list(spawner("u", groups))
    assert [p["slug"] for p in profiles] == offered
    assert [p.get("default", False) for p in profiles] == [True] + [False] * (len(profiles) - 1)
    for p in profiles:
        assert "groups" not in p and "environment" not in p["kubespawner_override"]
