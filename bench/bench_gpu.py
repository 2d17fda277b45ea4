"""VGG16 throughput on a GPU with the JAX backend, against the GPU's bf16 roofline.

Measures, with the project's own model builders (pipeline.models.backbones and .heads):
  - the conv base (VGG16 notop, random weights, the features stage's extractor: uint8 images
    in, preprocessing inside) in images/s at each side (default 32x32 and 224x224), in float32
    and in mixed_bfloat16, two ways: `predict` from host memory (what the features stage does)
    and a jitted forward pass on a batch already on the device (the model alone);
  - fine-tuning train steps/s (VGG16 + head, unfrozen from block5_conv1, batch 64 at 224x224)
    through `model.fit`, in both precisions;
  - the same fine-tuning through the pipeline's own path (`training.fit.fit_model`), fed from
    arrays in memory and streamed from a sharded store on disk (`training.feed.StreamFeed`), so
    the ratio says whether the feed keeps the GPU busy.
Each is set against the roofline: VGG16 at 224x224 is about 15.5 GFLOP per image forward,
scaled by (side/224)^2 for other sides; a train step counts 3x forward (an upper bound here:
blocks 1-4 are frozen, so their backward pass is skipped); the peak is --peak-tflops (989: H100
SXM dense bf16). Goal: at least 10,000 images/s at 224x224. Never asserts.

It runs with KERAS_BACKEND=jax and without TensorFlow (the GPU machine has none): the script
makes `import tensorflow` fail, so a run on a machine that has it still proves that nothing it
uses needs it.

    KERAS_BACKEND=jax python bench/bench_gpu.py                # on the GPU machine
    KERAS_BACKEND=jax python bench/bench_gpu.py --smoke        # tiny sizes, on a CPU
"""

from __future__ import annotations

import importlib.abc
import os
import shlex
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Makes `import tensorflow` fail as on a machine without it. (A None entry in sys.modules
    would not do: Keras takes `"tensorflow" in sys.modules` to mean it was imported.)"""

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by bench_gpu.py)")
        return None


# Before Keras is imported: the backend is chosen once, and TensorFlow must never load.
_BACKEND_GIVEN = "KERAS_BACKEND" in os.environ
os.environ.setdefault("KERAS_BACKEND", "jax")
sys.meta_path.insert(0, _NoTensorFlow())

import argparse  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GFLOP_PER_IMAGE_224 = 15.5
"""VGG16 notop forward pass at 224x224, in GFLOP (multiply-adds counted as two)."""
TRAIN_STEP_FORWARDS = 3.0
GOAL_IMAGES_PER_S = 10_000
GOAL_SIDE = 224
UNFREEZE_FROM = "block5_conv1"
NUM_CLASSES = 10


def forward_gflop(side: int) -> float:
    """GFLOP of one VGG16 forward pass at `side` x `side`."""
    return GFLOP_PER_IMAGE_224 * (side / 224) ** 2


@dataclass(frozen=True)
class Settings:
    sides: list[int]
    precisions: list[str]
    images: int
    batch_size: int
    repeats: int
    device_iterations: int
    train_side: int
    train_batch_size: int
    train_steps: int
    peak_tflops: float


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes that finish in a minute or two on a CPU; overrides the size options below",
    )
    parser.add_argument(
        "--sides", type=int, nargs="+", default=[32, 224], help="conv-base input sides to measure"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "mixed_bfloat16"],
        choices=("float32", "mixed_bfloat16", "mixed_float16", "bfloat16"),
        help="Keras dtype policies to measure",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=8192,
        help="images per predict run (rounded down to whole batches)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="conv-base batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument(
        "--device-iterations",
        type=int,
        default=20,
        help="batches per timed run of the on-device forward pass",
    )
    parser.add_argument("--train-side", type=int, default=224, help="fine-tuning input side")
    parser.add_argument("--train-batch-size", type=int, default=64, help="fine-tuning batch")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=30,
        help="train steps per epoch; the second epoch is timed",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the GPU's dense bf16 peak (989: H100 SXM; H200 is the same)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        settings = Settings(
            sides=[32, 64],
            precisions=args.precisions,
            images=16,
            batch_size=8,
            repeats=1,
            device_iterations=2,
            train_side=32,
            train_batch_size=8,
            train_steps=3,
            peak_tflops=args.peak_tflops,
        )
    else:
        settings = Settings(
            sides=args.sides,
            precisions=args.precisions,
            images=max(args.images // args.batch_size, 1) * args.batch_size,
            batch_size=args.batch_size,
            repeats=args.repeats,
            device_iterations=args.device_iterations,
            train_side=args.train_side,
            train_batch_size=args.train_batch_size,
            train_steps=args.train_steps,
            peak_tflops=args.peak_tflops,
        )
    return args, settings


def measure_forward(side: int, precision: str, settings: Settings) -> dict[str, float]:
    """Images/s of the features stage's extractor at `side` in `precision`: through `predict`
    from host memory, and as one jitted forward pass on a device-resident batch."""
    import jax
    import keras

    from pipeline.models.backbones import BACKBONES
    from pipeline.models.heads import build_feature_extractor

    keras.backend.clear_session()
    keras.mixed_precision.set_dtype_policy(precision)
    backbone = BACKBONES["vgg16"]
    base = backbone.build(side, None)
    extractor = build_feature_extractor((side, side, 3), backbone, base)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(settings.images, side, side, 3), dtype=np.uint8)

    # Warm-up compiles the one batch shape that the timed runs use (whole batches only).
    extractor.predict(images[: settings.batch_size], batch_size=settings.batch_size, verbose=0)
    predict_s = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        extractor.predict(images, batch_size=settings.batch_size, verbose=0)
        predict_s.append(time.perf_counter() - start)

    trainable = [variable.value for variable in extractor.trainable_variables]
    non_trainable = [variable.value for variable in extractor.non_trainable_variables]

    @jax.jit
    def forward(trainable, non_trainable, batch):
        outputs, _ = extractor.stateless_call(trainable, non_trainable, batch, training=False)
        return outputs

    batch = jax.device_put(images[: settings.batch_size])
    forward(trainable, non_trainable, batch).block_until_ready()
    device_s = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        for _ in range(settings.device_iterations):
            outputs = forward(trainable, non_trainable, batch)
        outputs.block_until_ready()
        device_s.append(time.perf_counter() - start)
    keras.mixed_precision.set_dtype_policy("float32")
    return {
        "predict": settings.images / min(predict_s),
        "device": settings.device_iterations * settings.batch_size / min(device_s),
    }


def measure_train(precision: str, settings: Settings) -> float:
    """Train steps/s of fine-tuning (VGG16 + head, unfrozen from block5_conv1) via `fit`:
    the second epoch, after the first has compiled the step."""
    import keras

    from pipeline.models.backbones import BACKBONES
    from pipeline.models.heads import build_fine_tune_model, set_trainable_from
    from pipeline.training.fit import compile_classifier

    keras.backend.clear_session()
    keras.mixed_precision.set_dtype_policy(precision)
    backbone = BACKBONES["vgg16"]
    side = settings.train_side
    base = backbone.build(side, None)
    model = build_fine_tune_model(
        (side, side, 3), NUM_CLASSES, backbone, base, dense_units=256, dropout_rate=0.5
    )
    set_trainable_from(base, UNFREEZE_FROM)
    compile_classifier(model, "rmsprop", 1e-5)
    count = settings.train_steps * settings.train_batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=count).astype(np.int64)

    epoch_s: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - self.start)

    model.fit(
        images,
        labels,
        batch_size=settings.train_batch_size,
        epochs=2,
        shuffle=False,
        callbacks=[EpochTimer()],
        verbose=0,
    )
    keras.mixed_precision.set_dtype_policy("float32")
    return settings.train_steps / epoch_s[-1]


def _EpochTimer():
    """A callback timing each epoch from its start to its last batch's end (not validation)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_s: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_s.append(self.end - self.start)

    return EpochTimer()


def measure_pipeline_fit(precision: str, settings: Settings, store_root: Path) -> dict[str, float]:
    """Train steps/s of the fine-tuning model through `fit_model`, the train stage's path: fed
    from arrays, then streamed from a store of the same images on disk (second epoch each)."""
    import keras

    from pipeline.models.backbones import BACKBONES
    from pipeline.models.heads import build_fine_tune_model, set_trainable_from
    from pipeline.store import open_split, write_store_from_arrays
    from pipeline.training.feed import FeedSource
    from pipeline.training.fit import FitOptions, compile_classifier, fit_model

    side, batch = settings.train_side, settings.train_batch_size
    count = settings.train_steps * batch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, side, side, 3), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=count).astype(np.int64)
    classes = [str(index) for index in range(NUM_CLASSES)]
    write_store_from_arrays(
        store_root,
        {
            "train": (images, labels),
            "val": (images[:batch], labels[:batch]),
            "test": (images[:batch], labels[:batch]),
        },
        classes,
        shard_bytes=64 << 20,
    )
    rates = {}
    for label, train, val in (
        ("arrays", (images, labels), (images[:batch], labels[:batch])),
        (
            "store",
            FeedSource.from_split(open_split(store_root, "train")),
            FeedSource.from_split(open_split(store_root, "val")),
        ),
    ):
        keras.backend.clear_session()
        keras.mixed_precision.set_dtype_policy(precision)
        backbone = BACKBONES["vgg16"]
        base = backbone.build(side, None)
        model = build_fine_tune_model(
            (side, side, 3), NUM_CLASSES, backbone, base, dense_units=256, dropout_rate=0.5
        )
        set_trainable_from(base, UNFREEZE_FROM)
        compile_classifier(model, "rmsprop", 1e-5)
        timer = _EpochTimer()
        fit_model(
            model,
            train,
            val,
            FitOptions(epochs=2, batch_size=batch),
            seed=0,
            callbacks=[timer],
        )
        rates[label] = settings.train_steps / timer.epoch_s[-1]
    keras.mixed_precision.set_dtype_policy("float32")
    return rates


def describe_environment() -> str:
    import jax
    import keras

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", str(device))
    return (
        f"keras {keras.__version__} (backend {keras.backend.backend()}), jax {jax.__version__}, "
        f"device {device.platform}: {kind} x{jax.device_count()}; "
        f"tensorflow loaded: {'tensorflow' in sys.modules}"
    )


def main(argv: list[str] | None = None) -> int:
    prefix = "" if _BACKEND_GIVEN else "(KERAS_BACKEND unset: the script chose jax) "
    env = f"KERAS_BACKEND={shlex.quote(os.environ['KERAS_BACKEND'])} " if _BACKEND_GIVEN else ""
    print(f"command: {prefix}{env}{shlex.join(sys.orig_argv)}", flush=True)
    args, settings = parse_args(argv)
    if os.environ["KERAS_BACKEND"] != "jax":
        print(
            f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}: this benchmark runs on jax only; "
            f"run it with KERAS_BACKEND=jax"
        )
        return 2
    print(describe_environment())
    peak = settings.peak_tflops
    print(
        f"roofline: {GFLOP_PER_IMAGE_224} GFLOP/image forward at 224x224 (x (side/224)^2), "
        f"train step {TRAIN_STEP_FORWARDS:g}x forward, peak {peak:g} TFLOP/s bf16"
        + ("; SMOKE: tiny sizes, the numbers mean nothing" if args.smoke else "")
    )
    print()
    print(
        f"conv base (vgg16 notop, random weights, uint8 in), batch {settings.batch_size}, "
        f"{settings.images} images per predict run, best of {settings.repeats}"
    )
    print(
        f"{'side':>5} {'precision':>15} {'predict img/s':>14} {'device img/s':>13} "
        f"{'device TFLOP/s':>15} {'% of peak':>10} {'roofline img/s':>15}"
    )
    results: dict[tuple[int, str], dict[str, float]] = {}
    for side in settings.sides:
        for precision in settings.precisions:
            rates = measure_forward(side, precision, settings)
            results[(side, precision)] = rates
            tflops = rates["device"] * forward_gflop(side) / 1000.0
            roofline = peak * 1000.0 / forward_gflop(side)
            print(
                f"{side:>5} {precision:>15} {rates['predict']:>14,.0f} "
                f"{rates['device']:>13,.0f} {tflops:>15.3g} {100 * tflops / peak:>9.3g}% "
                f"{roofline:>15,.0f}",
                flush=True,
            )

    print()
    side, batch = settings.train_side, settings.train_batch_size
    step_gflop = TRAIN_STEP_FORWARDS * forward_gflop(side) * batch
    print(
        f"fine-tune train steps (vgg16 + head, unfrozen from {UNFREEZE_FROM}), batch {batch} "
        f"at {side}x{side}, model.fit, second of two epochs of {settings.train_steps} steps"
    )
    print(
        f"{'precision':>15} {'steps/s':>9} {'images/s':>10} {'TFLOP/s':>9} {'% of peak':>10} "
        f"{'roofline steps/s':>17}"
    )
    for precision in settings.precisions:
        steps = measure_train(precision, settings)
        tflops = steps * step_gflop / 1000.0
        print(
            f"{precision:>15} {steps:>9.2f} {steps * batch:>10,.0f} {tflops:>9.3g} "
            f"{100 * tflops / peak:>9.3g}% {peak * 1000.0 / step_gflop:>17,.1f}",
            flush=True,
        )

    print()
    print(
        f"the same fine-tuning through the pipeline (training.fit.fit_model), batch {batch} at "
        f"{side}x{side}: fed from arrays in memory, and streamed from a sharded store on disk"
    )
    print(f"{'precision':>15} {'arrays steps/s':>15} {'store steps/s':>14} {'store/arrays':>13}")
    import tempfile

    for precision in settings.precisions:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-store-") as directory:
            rates = measure_pipeline_fit(precision, settings, Path(directory) / "prepared")
        print(
            f"{precision:>15} {rates['arrays']:>15.2f} {rates['store']:>14.2f} "
            f"{rates['store'] / rates['arrays']:>13.2f}",
            flush=True,
        )

    print()
    goal = f"goal: at least {GOAL_IMAGES_PER_S:,} images/s at {GOAL_SIDE}x{GOAL_SIDE}"
    at_goal_side = {key: value for key, value in results.items() if key[0] == GOAL_SIDE}
    if not at_goal_side:
        print(f"{goal}: not measured ({GOAL_SIDE} is not among the sides measured)")
        return 0
    for path, label in (
        ("predict", "Keras predict, the features stage's path"),
        ("device", "jitted forward on a device-resident batch"),
    ):
        precision, rate = max(
            ((key[1], value[path]) for key, value in at_goal_side.items()), key=lambda x: x[1]
        )
        verdict = "met" if rate >= GOAL_IMAGES_PER_S else "not met"
        print(f"{goal} ({label}): {verdict} ({rate:,.0f} images/s, {precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
