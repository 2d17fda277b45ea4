"""Parity: does an export answer as the Keras model does, on every test image? (pure)

Float exports (fp32, fp16) must give the same top-1 class for every test image and no
probability further than FLOAT_TOLERANCE from the Keras model's. An int8 export moves
probabilities by design: its test accuracy may fall at most INT8_MAX_ACCURACY_DROP below the
Keras model's. The figures go to parity.json and the registered version's tags; an export that
misses one is refused with a message naming it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.errors import ExportError
from pipeline.export.formats import FLOAT_TOLERANCE, INT8_MAX_ACCURACY_DROP


@dataclass(frozen=True)
class Parity:
    """The figures of one export against the Keras model on the test split."""

    format: str
    quantize: str
    runtime: str
    runtime_version: str
    images: int
    top1_agreement: float
    """The fraction of test images whose top-1 class is the Keras model's."""
    disagreements: int
    max_abs_diff: float
    """The largest |export - Keras| over every test image and class probability."""
    keras_accuracy: float
    export_accuracy: float
    accuracy_drop_points: float
    """Keras accuracy minus the export's, in percentage points."""
    size_bytes: int
    keras_size_bytes: int
    size_ratio: float
    """The export's size over the Keras model file's."""
    tolerance: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def tags(self, prefix: str) -> dict[str, str]:
        """The figures a registered version is tagged with, under `prefix` (export.onnx)."""
        return {
            f"{prefix}.top1_agreement": f"{self.top1_agreement:.6f}",
            f"{prefix}.max_abs_diff": f"{self.max_abs_diff:.3g}",
            f"{prefix}.accuracy": f"{self.export_accuracy:.6f}",
            f"{prefix}.size_ratio": f"{self.size_ratio:.3f}",
            f"{prefix}.runtime": f"{self.runtime} {self.runtime_version}",
        }


def measure_parity(
    keras_probabilities: np.ndarray,
    export_probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    format_name: str,
    quantize: str,
    runtime: str,
    runtime_version: str,
    size_bytes: int,
    keras_size_bytes: int,
) -> Parity:
    """The parity figures, with `failures` naming each figure outside its tolerance."""
    keras_probabilities = np.asarray(keras_probabilities, dtype=np.float64)
    export_probabilities = np.asarray(export_probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if keras_probabilities.shape != export_probabilities.shape:
        raise ExportError(
            f"the export answered shape {export_probabilities.shape}, the Keras model "
            f"{keras_probabilities.shape}"
        )
    count = len(labels)
    keras_top = keras_probabilities.argmax(axis=1)
    export_top = export_probabilities.argmax(axis=1)
    finite = bool(np.isfinite(export_probabilities).all())
    keras_finite = bool(np.isfinite(keras_probabilities).all())
    difference = np.abs(export_probabilities - keras_probabilities)
    comparable = finite and keras_finite and difference.size
    max_abs_diff = float(difference.max()) if comparable else float("inf")
    disagreements = int((keras_top != export_top).sum())
    keras_accuracy = float((keras_top == labels).mean()) if count else 0.0
    export_accuracy = float((export_top == labels).mean()) if count else 0.0
    drop = 100.0 * (keras_accuracy - export_accuracy)
    label = format_name if quantize == "none" else f"{format_name} {quantize}"
    failures: list[str] = []
    if not finite:
        failures.append(f"{label}: the export answered NaN or infinite probabilities")
    if not keras_finite:
        failures.append(
            f"{label}: the Keras model itself answered NaN or infinite probabilities on the test "
            "split, so nothing can be proven equal to it: retrain it"
        )
    if quantize == "int8":
        tolerance = {"accuracy_drop_points": 100.0 * INT8_MAX_ACCURACY_DROP}
        if drop > tolerance["accuracy_drop_points"] + 1e-9:
            failures.append(
                f"{label}: accuracy_drop_points {drop:.2f} (test accuracy {export_accuracy:.4f} "
                f"against the Keras model's {keras_accuracy:.4f}) is over the tolerance of "
                f"{tolerance['accuracy_drop_points']:g} point"
            )
    else:
        tolerance = {"max_abs_diff": FLOAT_TOLERANCE[quantize], "disagreements": 0}
        if disagreements:
            failures.append(
                f"{label}: top1_agreement {1 - disagreements / count:.6f}: {disagreements} of "
                f"{count} test images get another class than from the Keras model (tolerance 0)"
            )
        if max_abs_diff > tolerance["max_abs_diff"]:
            failures.append(
                f"{label}: max_abs_diff {max_abs_diff:.3g} between its probabilities and the "
                f"Keras model's is over the tolerance of {tolerance['max_abs_diff']:g}"
            )
    return Parity(
        format=format_name,
        quantize=quantize,
        runtime=runtime,
        runtime_version=runtime_version,
        images=count,
        top1_agreement=1 - disagreements / count if count else 1.0,
        disagreements=disagreements,
        max_abs_diff=max_abs_diff,
        keras_accuracy=keras_accuracy,
        export_accuracy=export_accuracy,
        accuracy_drop_points=drop,
        size_bytes=int(size_bytes),
        keras_size_bytes=int(keras_size_bytes),
        size_ratio=size_bytes / keras_size_bytes if keras_size_bytes else float("nan"),
        tolerance=tolerance,
        failures=failures,
    )
