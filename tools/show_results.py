"""Print the strategies side by side after `make repro`: one row per strategy, from the
compare stage's reports/comparison.csv, with the backbone weights each one used from
reports/metrics.json (random weights mean the transfer strategies transferred nothing).

Standard library only, so it costs nothing next to `dvc metrics show` (DVC's own row per
strategy, from reports/metrics/<strategy>.json), and adds the model sizes and speeds.

    python tools/show_results.py [reports/comparison.csv [reports/metrics.json]]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

DEFAULT_COMPARISON = Path("reports/comparison.csv")
DEFAULT_METRICS = Path("reports/metrics.json")


def cell(value: str) -> str:
    """Integers as they are, other numbers to 4 significant digits, text as it is."""
    if value.isdigit():
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def table_rows(comparison: Path, metrics: Path) -> list[list[str]]:
    """The header and one row per strategy, plus a `backbone_weights` column when known."""
    with comparison.open(newline="") as handle:
        rows = [[cell(value) for value in row] for row in csv.reader(handle)]
    if not metrics.is_file() or not rows:
        return rows
    per_strategy = json.loads(metrics.read_text())
    rows[0].append("backbone_weights")
    for row in rows[1:]:
        row.append(str(per_strategy.get(row[0], {}).get("backbone_weights", "")))
    return rows


def format_table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return "\n".join(
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main(argv: list[str]) -> int:
    comparison = Path(argv[0]) if argv else DEFAULT_COMPARISON
    metrics = Path(argv[1]) if len(argv) > 1 else DEFAULT_METRICS
    if not comparison.is_file():
        print(f"make: no {comparison}: the compare stage has not run", file=sys.stderr)
        return 1
    rows = table_rows(comparison, metrics)
    if rows:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
