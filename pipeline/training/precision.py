"""Mixed precision: the Keras dtype policy for the devices at hand.

`choose_precision` turns a setting (`auto` and the Keras policy names) and a description of the
devices into a policy name; `apply_precision` makes it Keras' global policy. With
`mixed_float16`, `model.compile` wraps the optimizer in a `LossScaleOptimizer` by itself (Keras
3's `compile(auto_scale_loss=True)`, the default). The classifier's output layer is built with
`dtype="float32"` so that probabilities and the loss stay in float32. Only the `_tensorflow_*`,
`_jax_*` and `_torch_*` probes touch a backend's own API, and they import it lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras

from pipeline.errors import ConfigError

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")

# bfloat16 has tensor-core support from Ampere (compute capability 8.0) on; older GPUs get
# float16, which needs loss scaling but runs fast from Volta (7.0) on.
BFLOAT16_MIN_COMPUTE_CAPABILITY = (8, 0)


def choose_precision(setting: str, devices: Sequence[str]) -> str:
    """The Keras dtype policy for `setting` on `devices` (as `describe_devices` lists them:
    "cpu", "tpu", "gpu" or "gpu:<major>.<minor>" with the compute capability).

    An explicit policy is returned as it is. `auto` means float32 where there is no
    accelerator (mixed precision only slows a CPU down), bfloat16 on TPUs and on GPUs that
    all have compute capability 8.0 or more, and float16 (with loss scaling) on older GPUs
    or GPUs whose capability is unknown. Pure: it probes nothing.
    """
    if setting not in PRECISIONS:
        raise ConfigError(
            f"precision {setting!r} is not one of {', '.join(PRECISIONS)}: "
            "use auto to pick by device"
        )
    if setting != "auto":
        return setting
    kinds = [_parse_device(device) for device in devices]
    if any(kind == "tpu" for kind, _ in kinds):
        return "mixed_bfloat16"
    capabilities = [capability for kind, capability in kinds if kind == "gpu"]
    if not capabilities:
        return "float32"
    # Every replica must run the same policy, so the oldest GPU decides.
    if all(c is not None and c >= BFLOAT16_MIN_COMPUTE_CAPABILITY for c in capabilities):
        return "mixed_bfloat16"
    return "mixed_float16"


def _parse_device(device: str) -> tuple[str, tuple[int, int] | None]:
    """("gpu", (8, 6)) for "gpu:8.6"; ("cpu", None) for "cpu"."""
    kind, _, capability = device.lower().partition(":")
    if kind not in ("cpu", "gpu", "tpu"):
        raise ValueError(
            f"unknown device {device!r}: expected cpu, tpu, gpu or gpu:<major>.<minor>"
        )
    if not capability:
        return kind, None
    try:
        major, minor = (int(part) for part in capability.split("."))
    except ValueError:
        raise ValueError(
            f"device {device!r}: the compute capability must read <major>.<minor>, e.g. gpu:8.6"
        ) from None
    return kind, (major, minor)


def apply_precision(policy: str) -> None:
    """Make `policy` Keras' global dtype policy; layers built afterwards compute in it (keep
    the output layer at `dtype="float32"`)."""
    if policy not in POLICIES:
        raise ConfigError(
            f"dtype policy {policy!r} is not one of {', '.join(POLICIES)} "
            "(resolve auto with choose_precision first)"
        )
    keras.mixed_precision.set_dtype_policy(policy)


def describe_devices() -> list[str]:
    """The local devices of the current backend, for `choose_precision`: ["cpu"] where
    there is no accelerator, else one entry per accelerator ("gpu:8.0", "tpu")."""
    probes = {
        "tensorflow": _tensorflow_devices,
        "jax": _jax_devices,
        "torch": _torch_devices,
    }
    probe = probes.get(keras.backend.backend())
    devices = probe() if probe else []
    return devices or ["cpu"]


def _tensorflow_devices() -> list[str]:
    """TensorFlow-only: each visible GPU with its compute capability."""
    import tensorflow as tf

    devices = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        devices.append(f"gpu:{capability[0]}.{capability[1]}" if capability else "gpu")
    return devices


def _jax_devices() -> list[str]:
    """JAX-only: this process's accelerators; a CUDA device carries its compute capability
    as a string such as "8.0"."""
    import jax

    devices = []
    for device in jax.local_devices():
        if device.platform == "gpu":
            capability = getattr(device, "compute_capability", None)
            devices.append(f"gpu:{capability}" if capability else "gpu")
        elif device.platform == "tpu":
            devices.append("tpu")
    return devices


def _torch_devices() -> list[str]:
    """PyTorch-only: each visible CUDA GPU with its compute capability."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        "gpu:{}.{}".format(*torch.cuda.get_device_capability(index))
        for index in range(torch.cuda.device_count())
    ]


CPU_BFLOAT16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""The CPU flags (as Linux lists them) of native bfloat16 arithmetic: without them bfloat16 is
emulated, slower than float32."""


def cpu_bfloat16_native(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 natively (AMX-BF16 or AVX-512 BF16); False where the
    CPU's flags cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool(CPU_BFLOAT16_FLAGS & set(value.split()))
    return False


def choose_explanation_precision(
    setting: str, devices: Sequence[str], backend: str, cpu_bfloat16: bool
) -> str:
    """float32 or bfloat16 for the gradient ascent of filter patterns (`evaluate.patterns.
    precision`). `auto` is bfloat16 where it is native: accelerators that `choose_precision`
    gives bfloat16, or a CPU with bfloat16 instructions under TensorFlow (oneDNN runs its
    convolutions on them; XLA on a CPU does not). Pure: it probes nothing."""
    if setting != "auto":
        return setting
    if devices and all(device == "cpu" for device in devices):
        return "bfloat16" if cpu_bfloat16 and backend == "tensorflow" else "float32"
    return "bfloat16" if choose_precision("auto", devices) == "mixed_bfloat16" else "float32"


def explanation_precision(setting: str) -> str:
    """`evaluate.patterns.precision` for this machine's devices and Keras backend: float32 or
    bfloat16 (see choose_explanation_precision)."""
    return choose_explanation_precision(
        setting, describe_devices(), keras.backend.backend(), cpu_bfloat16_native()
    )
