"""False-alarm and detection rates of the drift monitor on scikit-learn's digits.

    python bench/bench_monitor.py [--windows 20 --size 200 --alpha 0.01 --seed 0]

Trains a small Keras CNN on digits (train 65 %, val 15 %, test 20 %, by a fixed seed), fits
the embedding projection on the train features and builds the monitoring reference on the test
split, as registration does. Then runs `detect_drift` on windows of traffic: val images as they
are (no drift: a flag is a false alarm), darker, blurred, inverted, and 9s shown to a second
model trained on 0-8 only (an unseen class). Prints, for each, how many windows flagged drift,
which tests fired and the mean seconds per `detect_drift` call, next to the goals: at most 1
false alarm in 20 windows, and at least 19 detections in 20 for each shift.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MAX_FALSE_ALARMS = 1
MIN_DETECTIONS = 19
GOAL_WINDOWS = 20
EPOCHS = 20
BATCH_SIZE = 32
UNSEEN_CLASS = 9


@dataclass(frozen=True)
class Scenario:
    name: str
    shifted: bool
    """False: same distribution as the reference (a flag is a false alarm)."""
    model: str
    """Which model answers: "all" (0-9) or "seen" (trained on 0-8 only)."""
    pool: np.ndarray
    """The images the windows are drawn from, (n, 8, 8, 1) uint8."""


@dataclass(frozen=True)
class Answers:
    """A model's answers on a pool of images: what a recorder writes."""

    classes: np.ndarray
    confidences: np.ndarray
    embeddings: np.ndarray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=GOAL_WINDOWS)
    parser.add_argument("--size", type=int, default=200, help="images per window")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import keras
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from pipeline.monitoring.reference import Reference, apply_projection, fit_projection

    digits = load_digits()
    images = np.round(digits.data * 255 / 16).astype(np.uint8).reshape(-1, 8, 8, 1)
    labels = digits.target.astype(np.int64)
    indices = np.arange(len(labels))
    train_index, rest = train_test_split(
        indices, train_size=0.65, stratify=labels, random_state=args.seed
    )
    val_index, test_index = train_test_split(
        rest, train_size=0.15 / 0.35, stratify=labels[rest], random_state=args.seed
    )
    print(f"digits: {len(train_index)} train, {len(val_index)} val, {len(test_index)} test images")

    def build(seen: np.ndarray) -> tuple[keras.Model, keras.Model, Reference, Callable]:
        """Train on the train images of the classes `seen`; return the model, its feature
        extractor, its reference (test images of those classes) and its answer function."""
        keras.utils.set_random_seed(args.seed)
        train = train_index[np.isin(labels[train_index], seen)]
        val = val_index[np.isin(labels[val_index], seen)]
        test = test_index[np.isin(labels[test_index], seen)]
        model = _build_model(len(seen))
        started = time.perf_counter()
        model.fit(
            images[train],
            labels[train],
            validation_data=(images[val], labels[val]),
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            verbose=0,
        )
        accuracy = model.evaluate(images[test], labels[test], verbose=0)[1]
        print(
            f"model on classes {seen.min()}-{seen.max()}: test accuracy {accuracy:.3f}, "
            f"trained in {time.perf_counter() - started:.1f} s"
        )
        extractor = keras.Model(model.inputs, model.layers[-1].input)
        projection = fit_projection(extractor.predict(images[train], verbose=0))

        def answer(pool: np.ndarray) -> Answers:
            probabilities = model.predict(pool, verbose=0)
            features = extractor.predict(pool, verbose=0)
            return Answers(
                classes=probabilities.argmax(axis=1),
                confidences=probabilities.max(axis=1).astype(np.float64),
                embeddings=apply_projection(features, projection),
            )

        tested = answer(images[test])
        reference = Reference(
            embeddings=tested.embeddings,
            predicted=tested.classes.astype(np.int64),
            confidences=tested.confidences,
            classes=tuple(str(name) for name in seen),
        )
        return model, extractor, reference, answer

    _, _, reference_all, answer_all = build(np.arange(10))
    _, _, reference_seen, answer_seen = build(np.arange(UNSEEN_CLASS))

    val = images[val_index]
    scenarios = [
        Scenario("same distribution (val)", False, "all", val),
        Scenario("darker (x 0.5)", True, "all", np.round(val * 0.5).astype(np.uint8)),
        Scenario("blurred (radius 1)", True, "all", _blur(val)),
        Scenario("inverted (255 - x)", True, "all", 255 - val),
        Scenario("unseen class (9s)", True, "seen", images[labels == UNSEEN_CLASS]),
    ]
    rows = []
    for scenario in scenarios:
        answers = (answer_all if scenario.model == "all" else answer_seen)(scenario.pool)
        reference = reference_all if scenario.model == "all" else reference_seen
        rows.append(_run_scenario(scenario, answers, reference, args))
    _print_table(rows, args)


def _build_model(classes: int):
    """A small functional CNN: uint8 8x8 images in, rescaled inside the model, a Dense
    penultimate layer of 64 units, softmax out."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(8, 8, 1), dtype="uint8")
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _blur(images: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    blurred = [
        np.asarray(Image.fromarray(image[..., 0]).filter(ImageFilter.GaussianBlur(radius=1)))
        for image in images
    ]
    return np.stack(blurred)[..., None]


def _run_scenario(scenario: Scenario, answers: Answers, reference, args) -> dict:
    """Draw the windows, run detect_drift on each, count flags and fired tests."""
    import pandas as pd

    from pipeline.monitoring.drift import detect_drift
    from pipeline.monitoring.records import EMBEDDING, PREDICTED_CLASS, PROBABILITY

    # The pool may be smaller than a window (digits has 180 nines): drawn with replacement then.
    replace = len(scenario.pool) < args.size
    flagged = 0
    fired: Counter[str] = Counter()
    seconds = []
    for window in range(args.windows):
        rng = np.random.default_rng([args.seed, window])
        chosen = rng.choice(len(scenario.pool), size=args.size, replace=replace)
        records = pd.DataFrame(
            {
                PREDICTED_CLASS: [reference.classes[i] for i in answers.classes[chosen]],
                PROBABILITY: answers.confidences[chosen],
                EMBEDDING: list(answers.embeddings[chosen]),
            }
        )
        started = time.perf_counter()
        verdict = detect_drift(records, reference, alpha=args.alpha, seed=args.seed + window)
        seconds.append(time.perf_counter() - started)
        flagged += verdict["drift"]
        fired.update(verdict["fired"])
    return {
        "scenario": scenario.name,
        "shifted": scenario.shifted,
        "pool": len(scenario.pool),
        "replace": replace,
        "flagged": flagged,
        "fired": fired,
        "seconds": float(np.mean(seconds)),
    }


def _print_table(rows: list[dict], args) -> None:
    # Goals are stated for 20 windows; other counts scale them.
    scale = args.windows / GOAL_WINDOWS
    most_alarms = int(np.floor(MAX_FALSE_ALARMS * scale))
    least_detections = int(np.ceil(MIN_DETECTIONS * scale))
    print()
    print(f"{args.windows} windows of {args.size} images, alpha {args.alpha:g}, seed {args.seed}")
    header = f"{'traffic':<26} {'flagged':>8}  {'goal':<16} {'met':<4} {'s/call':>7}  tests fired"
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["shifted"]:
            goal = f">= {least_detections} detections"
            met = row["flagged"] >= least_detections
        else:
            goal = f"<= {most_alarms} false alarm"
            met = row["flagged"] <= most_alarms
        tests = ", ".join(f"{name} {count}" for name, count in sorted(row["fired"].items()))
        name = row["scenario"] + (" *" if row["replace"] else "")
        print(
            f"{name:<26} {row['flagged']:>3} / {args.windows:<2}  {goal:<16} "
            f"{'yes' if met else 'NO':<4} {row['seconds']:>7.3f}  {tests or '-'}"
        )
    if any(row["replace"] for row in rows):
        print("* the pool is smaller than a window: images drawn with replacement")


if __name__ == "__main__":
    main()
