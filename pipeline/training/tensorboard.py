"""TensorBoard logs of a strategy's training, as the course's mini-CIFAR notebook writes them:
scalars per epoch (train/ and validation/), and the training graph where the backend has one
(TensorFlow; JAX has none). `make tensorboard` serves `logs/`; the strategy's MLflow run keeps
a copy under `tensorboard/`.

Writing goes through TensorFlow's summary writer, so without TensorFlow installed nothing is
written (one log line says why); training is the same either way.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import keras

logger = logging.getLogger(__name__)


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback | None:
    """Keras' TensorBoard callback writing into `log_dir`, flushed after every epoch; None,
    with one log line, when TensorFlow (its writer) is not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        logger.info("no TensorBoard logs: writing them needs TensorFlow, which is not installed")
        return None
    # write_graph: Keras' conceptual graph (the model's layers), on every backend.
    return _TrainingBoard(log_dir=str(log_dir), write_graph=True, update_freq="epoch")


class _TrainingBoard(keras.callbacks.TensorBoard):
    """Keras' callback, plus the op graph of the model on TensorFlow (Keras 3's own graph
    writing looks for a tf.function its trainer no longer has), and flushed after every epoch:
    a run killed later keeps every finished epoch's scalars (the writer buffers two minutes)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._op_graph_written = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if not self._op_graph_written and keras.backend.backend() == "tensorflow":
            self._op_graph_written = True
            write_op_graph(self.model, self._train_writer)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # Keras writes every batch's logs as "batch_*" scalars even with update_freq="epoch",
        # when no writer is set to receive them: a millisecond a batch for nothing.
        super().on_train_batch_end(batch, logs if self.update_freq != "epoch" else None)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        for writer in self._writers.values():
            writer.flush()


def write_op_graph(model: keras.Model, writer) -> None:
    """TensorFlow only: trace the model's inference pass and write its graph (TensorBoard's
    Graphs tab, "op graph"); a model that cannot be traced is logged and skipped."""
    import tensorflow as tf

    specs = [tf.TensorSpec(tensor.shape, tensor.dtype) for tensor in model.inputs]
    try:
        traced = tf.function(
            lambda *inputs: model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)
        )
        graph = traced.get_concrete_function(*specs).graph
    except (TypeError, ValueError) as error:
        logger.info("no TensorBoard op graph for %s: %s", model.name, error)
        return
    with writer.as_default():
        tf.summary.graph(graph)
