"""Every export of the trained models, with its parity figures and the time it took.

Exports each strategy's model under models/ (after `make repro`) to every format and
quantization into a temporary folder, proving each on the test split with its own runtime, and
prints one row per export: top-1 agreement, the largest probability difference, both
accuracies, the size against model.keras, and the seconds taken. A refused export prints the
figure that refused it.

    python bench/bench_exports.py                      # scratch
    python bench/bench_exports.py --strategies scratch feature_extraction fine_tune
    python bench/bench_exports.py --root /tmp/folder-project   # another project, after repro
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import STRATEGY_NAMES, load_config  # noqa: E402
from pipeline.errors import ExportError  # noqa: E402
from pipeline.export.exporter import ExportSource, export_model  # noqa: E402
from pipeline.export.formats import export_name  # noqa: E402
from pipeline.store import CLASSES_FILE, MODEL_FILE, open_split  # noqa: E402

EXPORTS = (
    ("onnx", "none"),
    ("onnx", "fp16"),
    ("onnx", "int8"),
    ("tflite", "none"),
    ("tflite", "fp16"),
    ("tflite", "int8"),
    ("saved_model", "none"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", choices=STRATEGY_NAMES, default=["scratch"])
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the project (default: this one), after its repro"
    )
    args = parser.parse_args()
    config = load_config(args.root / "params.yaml")
    test = open_split(args.root / "data" / "prepared", "test")
    train = open_split(args.root / "data" / "prepared", "train")
    print(f"{config.data.dataset}: {len(test)} test images {tuple(test.image_shape)}")
    print(
        f"{'strategy':<20}{'export':<13}{'top-1':>8}{'max diff':>10}{'keras':>8}{'export':>8}"
        f"{'size':>7}{'seconds':>9}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for strategy in args.strategies:
            folder = args.root / "models" / strategy
            classes = json.loads((folder / CLASSES_FILE).read_text())
            source = ExportSource(folder / MODEL_FILE, classes, f"models/{strategy}")
            for format_name, quantize in EXPORTS:
                name = export_name(format_name, quantize)
                started = time.perf_counter()
                try:
                    parity = export_model(
                        source, format_name, quantize, test, train, Path(scratch) / strategy
                    ).parity
                except ExportError as error:
                    print(f"{strategy:<20}{name:<13}refused: {error}")
                    continue
                print(
                    f"{strategy:<20}{name:<13}{parity.top1_agreement:>8.4f}"
                    f"{parity.max_abs_diff:>10.2g}{parity.keras_accuracy:>8.4f}"
                    f"{parity.export_accuracy:>8.4f}{parity.size_ratio:>6.2f}x"
                    f"{time.perf_counter() - started:>9.1f}"
                )


if __name__ == "__main__":
    main()
