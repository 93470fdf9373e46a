"""The launcher's hand-off to the kernel (SANDBOX_KERNEL_HANDOFF, layers.handoff.handoff_from_env):
what seccomp's stage 2 and the GPU tool verdicts need travels apart from the human-facing
status report (SANDBOX_KERNEL_LAYERS)."""

import json

import pytest

from sandbox_kernel.layers.handoff import HANDOFF_ENV, handoff_from_env

FACTS = {"stage_two": True, "stage_one": "restricted", "listen": "notify", "audited": False, "memfd_noexec": True}


@pytest.mark.kernel
def test_a_kernel_whose_stage_two_ran_reports_the_final_mode_and_hands_off_apart(make_kernel, who):
    """Network mode none over TCP: stage 1 allows TCP until the kernel's ports are bound, stage 2
    (in the kernel, from the hand-off) refuses it; the report says `none`, and carries no
    machine-only fields."""
    k = make_kernel("offline", user=who)
    r = k.ok("import json, os, socket\n"
             "try:\n    socket.socket().connect(('127.0.0.1', 9))\n    print('connected')\n"
             "except OSError as e:\n    print('refused', e.errno)\n"
             f"print(json.dumps([json.loads(os.environ['SANDBOX_KERNEL_LAYERS']), "
             f"json.loads(os.environ[{HANDOFF_ENV!r}])]))")
    first, second = r.stdout.strip().splitlines()
    assert first.startswith("refused"), r.stdout
    layers, handoff = json.loads(second)
    assert set(layers["seccomp"]) == {"state", "detail", "hard"}, layers["seccomp"]
    assert "sockets: none;" in layers["seccomp"]["detail"] and "TCP until" not in layers["seccomp"]["detail"]
    assert set(layers["environment"]) == {"state", "detail", "hard"}, layers["environment"]
    assert handoff["seccomp"]["stage_one"] == "restricted" and handoff["seccomp"]["stage_two"] is False, handoff
    assert handoff["gpu_tools"] == []


@pytest.mark.parametrize("text", [
    "[1", "[]", '{"other": 1}', '{"seccomp": []}', '{"seccomp": {"stage_two": true}}',
    json.dumps({"seccomp": dict(FACTS, stage_two="yes")}), json.dumps({"seccomp": dict(FACTS, extra=1)}),
    '{"gpu_tools": [1]}', '{"gpu_tools": [["a", "b", "c"]]}', '{"gpu_tools": {"a": 1}}',
    '{"gpu_tools": [["a", "b", "c", 4]]}', json.dumps({"seccomp": dict(FACTS, listen="maybe")}),
    json.dumps({"seccomp": dict(FACTS, stage_one="open")}),
])
def test_anything_but_what_the_launcher_writes_is_refused(text):
    with pytest.raises(ValueError):
        handoff_from_env({HANDOFF_ENV: text})


def test_what_the_launcher_writes_is_read_back():
    data = {"seccomp": FACTS, "gpu_tools": [["{which:nvidia-smi}", "/usr/bin/nvidia-smi", "granted", "on PATH"]]}
    assert handoff_from_env({HANDOFF_ENV: json.dumps(data)}) == data
    assert handoff_from_env({HANDOFF_ENV: '{"gpu_tools": []}'}) == {"gpu_tools": []}
    assert handoff_from_env({}) == {}


def test_the_values_checked_are_those_of_seccomp_and_the_schema():
    from sandbox_kernel import resources
    from sandbox_kernel.layers import handoff, seccomp

    assert set(handoff.HANDOFF_LISTEN) == set(seccomp.LISTEN_DETAIL)
    with open(resources.schema_path()) as fh:
        schema = json.load(fh)
    assert set(handoff.HANDOFF_MODES) == set(schema["properties"]["network"]["properties"]["mode"]["enum"])
