"""The accelerator variables the environment layer sets (issue 10, item 4).

Frameworks must use the devices a profile grants and give a clean "no GPU" answer
where none is granted. JAX reads JAX_PLATFORMS: a platform it names that cannot start
is an error, and "cpu" keeps it off every accelerator; without the variable it tries
every backend it has and skips those that fail (jax 0.11.2 on an H100: `cpu` gives
[CpuDevice], unset gives [CudaDevice], `cuda,cpu` with no usable GPU raises
"Unable to initialize backend 'cuda'"). So JAX_PLATFORMS is "cpu" only where no GPU
or TPU is granted, and otherwise unset (or the platform's own value minus the
platforms not granted). torch, CuPy and TensorFlow follow CUDA_VISIBLE_DEVICES.

Pure computation on fake device patterns (regular files stand in for nodes: only
their presence matters here); no kernel is started. The kernel-level checks are in
test_accelerators.py, and the real-GPU ones there are marked `gpu`.
"""

from __future__ import annotations

import os

import pytest

from sandbox_kernel import accelerators
from sandbox_kernel.layers import environment
from sandbox_kernel.layers.base import LaunchContext, Status
from sandbox_kernel.policy import Policy, schema, validate
from sandbox_kernel.policy_merge import _fill_defaults


def make(tmp_path, *, gpu: dict | None = None, tpu: dict | None = None, present_gpus=(), present_chips=()) -> Policy:
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    for i in present_gpus:
        (dev / f"nvidia{i}").touch()
    for i in present_chips:
        (dev / f"accel{i}").touch()
    g = {"enabled": False, "device_pattern": str(dev / "nvidia{index}"), "shared_nodes": [],
         "caps_dir": str(dev / "nvidia-caps"), "capabilities_root": str(dev / "caps"), "tool_dirs": [], **(gpu or {})}
    t = {"enabled": False, "device_pattern": str(dev / "accel{index}"), "vfio_pattern": str(dev / "vfio" / "{index}"),
         "shared_nodes": [], **(tpu or {})}
    raw = {"accelerators": {"gpu": g, "tpu": t}}
    validate(raw, "t")
    return Policy(_fill_defaults(schema(), raw), name="t", sources=[])


def env_of(policy, **inherited):
    return accelerators.environment(policy, inherited)


def test_nothing_granted_means_cpu_only(tmp_path):
    e = env_of(make(tmp_path, present_gpus=[0], present_chips=[0]), JAX_PLATFORMS="cuda", TPU_LIBRARY_PATH="/x.so")
    assert e["JAX_PLATFORMS"] == "cpu"  # a platform's own value cannot bring back a device the profile denies
    assert e["CUDA_VISIBLE_DEVICES"] == "" and e["NVIDIA_VISIBLE_DEVICES"] == ""
    assert e["TPU_VISIBLE_CHIPS"] == "" and e["TPU_VISIBLE_DEVICES"] == ""
    assert "TPU_LIBRARY_PATH" in e and e["TPU_LIBRARY_PATH"] is None  # removed: JAX would dlopen it directly


def test_granted_gpu_lets_jax_choose_it(tmp_path):
    p = make(tmp_path, gpu={"enabled": True, "devices": [0]})
    e = env_of(p)
    assert "JAX_PLATFORMS" in e and e["JAX_PLATFORMS"] is None  # was "cpu": JAX ran on the CPU under `gpu`
    assert e["CUDA_VISIBLE_DEVICES"] == "0" and e["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert e["TPU_LIBRARY_PATH"] is None and e["TPU_VISIBLE_CHIPS"] == ""


@pytest.mark.parametrize("inherited, kept", [
    ("cpu", "cpu"),  # a platform that wants JAX on the CPU keeps it there
    ("cuda,cpu", "cuda,cpu"), ("gpu", "gpu"), ("CUDA", "CUDA"),
    ("tpu,cuda,cpu", "cuda,cpu"),  # no TPU is granted: dropped
    ("tpu", None), ("rocm", None), ("", None),
])
def test_platform_value_is_kept_less_what_is_not_granted(tmp_path, inherited, kept):
    p = make(tmp_path, gpu={"enabled": True, "devices": [0]})
    assert env_of(p, JAX_PLATFORMS=inherited)["JAX_PLATFORMS"] == kept


def test_every_gpu_present(tmp_path):
    p = make(tmp_path, gpu={"enabled": True}, present_gpus=[0, 1])
    e = env_of(p)
    assert e["CUDA_VISIBLE_DEVICES"] == "0,1" and e["JAX_PLATFORMS"] is None


def test_enabled_gpu_with_no_device_is_no_gpu(tmp_path):
    # `devices: []`, or every GPU present on a machine that has none: nothing is granted
    e = env_of(make(tmp_path, gpu={"enabled": True, "devices": []}))
    assert e["CUDA_VISIBLE_DEVICES"] == "" and e["JAX_PLATFORMS"] == "cpu"
    e = env_of(make(tmp_path, gpu={"enabled": True}))
    assert e["JAX_PLATFORMS"] == "cpu"


def test_granted_tpu(tmp_path):
    p = make(tmp_path, tpu={"enabled": True, "chips": [1]})
    e = env_of(p, JAX_PLATFORMS="cuda,tpu")
    assert e["JAX_PLATFORMS"] == "tpu"  # the GPU is not granted
    assert e["TPU_VISIBLE_CHIPS"] == "1" and "TPU_LIBRARY_PATH" not in e
    assert e["CUDA_VISIBLE_DEVICES"] == ""
    assert env_of(make(tmp_path, tpu={"enabled": True}, present_chips=[0]))["JAX_PLATFORMS"] is None
    # enabled, but no chip on this machine: nothing granted
    empty = tmp_path / "empty"
    empty.mkdir()
    assert env_of(make(empty, tpu={"enabled": True}))["JAX_PLATFORMS"] == "cpu"


def test_both_granted(tmp_path):
    p = make(tmp_path, gpu={"enabled": True, "devices": [0]}, tpu={"enabled": True, "chips": [0]})
    assert env_of(p)["JAX_PLATFORMS"] is None
    assert env_of(p, JAX_PLATFORMS="tpu,cuda,cpu")["JAX_PLATFORMS"] == "tpu,cuda,cpu"


def test_environment_layer_removes_what_is_unset(tmp_path):
    p = make(tmp_path, gpu={"enabled": True, "devices": [0]})
    ctx = LaunchContext({"PATH": os.defpath, "JAX_PLATFORMS": "tpu", "TPU_LIBRARY_PATH": "/opt/libtpu.so",
                         "HOME": str(tmp_path)})
    status = Status()
    environment.apply(p, ctx, status)
    assert "JAX_PLATFORMS" not in ctx.env and "TPU_LIBRARY_PATH" not in ctx.env
    assert ctx.env["CUDA_VISIBLE_DEVICES"] == "0"
    detail = status.layers["environment"]["detail"]
    assert "JAX_PLATFORMS unset" in detail and "TPU_LIBRARY_PATH unset" in detail
    # GPU-less: "cpu" is set, whatever was inherited
    ctx = LaunchContext({"PATH": os.defpath, "JAX_PLATFORMS": "cuda", "HOME": str(tmp_path)})
    environment.apply(make(tmp_path), ctx, Status())
    assert ctx.env["JAX_PLATFORMS"] == "cpu"
