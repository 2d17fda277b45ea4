"""Small served classifiers for the serving tests and bench: a model of the project's own
architecture for a dataset, trained a little on random images, logged and registered with the
project's own code (pipeline.registry) into a SQLite tracking store of its own, as `champion`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.store import MODEL_FILE


@contextlib.contextmanager
def tracking_store(uri: str) -> Iterator[None]:
    """MLflow pointed at `uri` inside the block, and back to where it was afterwards."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def register_champion(
    root: Path,
    name: str,
    dataset: str,
    image_shape: tuple[int, int, int],
    classes: list[str],
    *,
    epochs: int = 1,
    seed: int = 0,
    monitoring: bool = False,
    onnx_export: bool = False,
) -> str:
    """Train, log and register a classifier of `dataset`'s scratch architecture under `name`,
    aliased `champion` (and `challenger`), in the store `root`/mlflow.db; return its URI. With
    `monitoring` the version ships an embedding projection and a monitoring reference (fitted
    on its random training images), so a server records embeddings for it; with `onnx_export`
    it carries its ONNX export (parity proven on those images), as promote.exports makes it,
    for `pipeline serve --backend onnx`."""
    import keras
    import mlflow

    from pipeline import registry
    from pipeline.models.builders import build_architecture, resolve_architecture
    from pipeline.tracking.runs import ensure_experiment

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    keras.utils.set_random_seed(seed)
    model = build_architecture(
        resolve_architecture("auto", dataset), image_shape, len(classes), None
    )
    model.compile(
        optimizer="adam",
        loss="binary_crossentropy" if len(classes) == 2 else "sparse_categorical_crossentropy",
    )
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(64, *image_shape), dtype=np.uint8)
    labels = rng.integers(0, len(classes), size=64)
    model.fit(images, labels, epochs=epochs, batch_size=32, verbose=0)
    model_dir = root / "model"
    model_dir.mkdir(exist_ok=True)
    model.save(model_dir / MODEL_FILE)
    from pipeline.store import ArraySplit

    split = ArraySplit(images, labels, classes)
    exports = None
    if onnx_export:
        from pipeline.export.exporter import ExportSource, export_model

        source = ExportSource(model_dir / MODEL_FILE, classes, f"serving {dataset}")
        exports = {"onnx": export_model(source, "onnx", "none", split, None, root).folder}
    with tracking_store(uri):
        experiment = ensure_experiment("serving", (root / "mlruns").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = registry.log_classifier(
                model_dir / MODEL_FILE,
                classes,
                images[:1],
                monitoring_splits=(split, split) if monitoring else None,
                exports=exports,
            )
        version = registry.register_challenger(name, info.model_uri, {"purpose": "serving"})
        registry.set_champion(name, version.version)
    return uri
