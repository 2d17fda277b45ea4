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
