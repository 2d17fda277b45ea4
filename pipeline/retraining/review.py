"""The review queue: when served traffic has drifted but no new labelled images exist,
retraining on the same data cannot help, so the cycle lists the served images that most need a
label instead (least confident, farthest from the reference) as a CSV and a page of thumbnails.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError
from pipeline.monitoring.records import (
    DIGEST,
    EMBEDDING,
    IMAGE_FILE,
    MODEL_VERSION,
    PREDICTED_CLASS,
    PROBABILITY,
    TIME,
)
from pipeline.store import atomic_write, spreadsheet_safe

logger = logging.getLogger(__name__)

DRIFT_DISTANCE = "drift_distance"
NEED_SCORE = "need_score"
QUEUE_COLUMNS: tuple[str, ...] = (
    DIGEST,
    TIME,
    MODEL_VERSION,
    PREDICTED_CLASS,
    PROBABILITY,
    DRIFT_DISTANCE,
    NEED_SCORE,
    IMAGE_FILE,
)
QUEUE_FILE = "queue.csv"
PAGE_FILE = "index.html"
NEIGHBOURS = 5
THUMBNAIL_PIXELS = 96
NOT_KEPT = "image not kept (serve with --keep-images)"
_REQUIRED_COLUMNS = (DIGEST, TIME, MODEL_VERSION, PREDICTED_CLASS, PROBABILITY)
# Distances are computed for this many reference cells at a time (records x references), so a
# large window against a large reference stays within a few tens of megabytes.
_DISTANCE_CELLS = 4_000_000

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
.instructions { background: #eef4fb; border: 1px solid #9bb8d8; border-radius: 6px;
  padding: 0.8em 1.2em; margin-bottom: 1.5em; }
.queue { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 180px; border: 1px solid #ddd; border-radius: 4px; padding: 8px; }
figure img { image-rendering: pixelated; display: block; margin: 0 auto 6px auto; }
.missing { height: 96px; display: flex; align-items: center; justify-content: center;
  text-align: center; color: #777; background: #f4f4f4; font-size: 0.85em; margin-bottom: 6px; }
figcaption { font-size: 0.8em; line-height: 1.4; word-break: break-all; }
code { font-size: 0.95em; }
"""


def select_for_review(
    records: pd.DataFrame, reference_embeddings: np.ndarray | None, *, size: int = 100
) -> pd.DataFrame:
    """The `size` served images that most need a label, one per digest (its latest record):
    the mean percentile rank of low confidence and of drift (mean distance to the NEIGHBOURS
    nearest reference embeddings; confidence alone without an embedding), highest first."""
    if size < 1:
        raise PipelineError(f"review queue size={size!r}: use a positive number of images")
    missing = [name for name in _REQUIRED_COLUMNS if name not in records.columns]
    if missing:
        raise PipelineError(
            f"the prediction records lack the columns {missing} (they have "
            f"{list(records.columns)}): pass a frame from pipeline.monitoring.records.read_window"
        )
    if records.empty:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in QUEUE_COLUMNS})

    # A stable sort keeps the later of two records of the same microsecond last.
    latest = (
        records.sort_values(TIME, kind="stable")
        .drop_duplicates(subset=DIGEST, keep="last")
        .reset_index(drop=True)
    )
    embeddings = latest[EMBEDDING] if EMBEDDING in latest.columns else None
    distances = _drift_distances(embeddings, reference_embeddings, len(latest))

    probability = latest[PROBABILITY].astype(float)
    # Percentile ranks make the two scores comparable whatever their units: the least
    # confident image and the farthest image each rank 1.0.
    confidence_rank = (-probability).rank(pct=True)
    drift = pd.Series(distances, index=latest.index)
    drift_rank = drift.rank(pct=True)
    need = pd.concat([confidence_rank, drift_rank], axis=1).mean(axis=1, skipna=True)

    queue = pd.DataFrame(
        {
            DIGEST: latest[DIGEST],
            TIME: latest[TIME],
            MODEL_VERSION: latest[MODEL_VERSION],
            PREDICTED_CLASS: latest[PREDICTED_CLASS],
            PROBABILITY: probability,
            DRIFT_DISTANCE: drift,
            NEED_SCORE: need,
            IMAGE_FILE: latest[IMAGE_FILE] if IMAGE_FILE in latest.columns else None,
        }
    )
    # Ties break towards the less confident image, then by digest, so the queue is the same
    # on every run over the same records.
    queue = queue.sort_values(
        [NEED_SCORE, PROBABILITY, DIGEST], ascending=[False, True, True], kind="stable"
    )
    return queue.head(size).reset_index(drop=True)


def write_review_queue(
    folder: Path,
    queue: pd.DataFrame,
    predictions_dir: Path,
    title: str,
    *,
    image_folder: str | None = None,
) -> dict[str, Any]:
    """Write `<folder>/queue.csv` and `<folder>/index.html` (self-contained thumbnails of the
    kept images, read from `predictions_dir`) for `queue` (select_for_review's frame).
    `image_folder` names the dataset folder the page tells a person to label into."""
    folder = Path(folder)
    predictions_dir = Path(predictions_dir)
    missing = [name for name in QUEUE_COLUMNS if name not in queue.columns]
    if missing:
        raise PipelineError(
            f"the review queue lacks the columns {missing}: build it with select_for_review"
        )
    csv_path = folder / QUEUE_FILE
    # Bytes, encoded here: class names need not be ASCII, whatever the locale's encoding.
    with atomic_write(csv_path, "wb") as stream:
        # Every cell spreadsheet-safe: a file or class named `=HYPERLINK(...)` stays text.
        cells = queue.loc[:, list(QUEUE_COLUMNS)].map(spreadsheet_safe)
        cells.to_csv(stream, index=False, encoding="utf-8")

    cards = []
    with_files = 0
    for row in queue.itertuples(index=False):
        record = row._asdict()
        thumbnail, note = _thumbnail(predictions_dir, record[IMAGE_FILE])
        with_files += thumbnail is not None
        cards.append(_card_html(record, thumbnail, note))
    html_path = folder / PAGE_FILE
    with atomic_write(html_path, "wb") as stream:
        stream.write(_page_html(title, cards, predictions_dir, image_folder).encode("utf-8"))
    logger.info(
        "review queue: %d images (%d with their files) in %s", len(queue), with_files, folder
    )
    return {
        "csv": str(csv_path),
        "html": str(html_path),
        "images": len(queue),
        "with_files": with_files,
    }


def _drift_distances(
    embeddings: pd.Series | None, reference: np.ndarray | None, count: int
) -> np.ndarray:
    """Each record's mean distance to its nearest reference embeddings; NaN for a record
    without a usable embedding, or for all of them without a reference."""
    distances = np.full(count, np.nan)
    if embeddings is None or reference is None:
        return distances
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 2 or len(reference) == 0:
        raise PipelineError(
            f"the reference embeddings have shape {reference.shape}: expected (n, k) with "
            "n >= 1; load them from the model version's monitoring reference"
        )
    width = reference.shape[1]
    rows, vectors, mismatched = [], [], 0
    for index, value in enumerate(embeddings):
        if value is None or (np.isscalar(value) and pd.isna(value)):
            continue
        vector = np.asarray(value, dtype=np.float64)
        if vector.shape != (width,) or not np.all(np.isfinite(vector)):
            mismatched += 1
            continue
        rows.append(index)
        vectors.append(vector)
    if mismatched:
        # Records of another model version (another embedding width) cannot be placed in this
        # reference's space: ranked by confidence alone rather than by a meaningless distance.
        logger.warning(
            "review queue: %d records have embeddings that are not %d finite numbers (another "
            "model version?); they are ranked by confidence alone",
            mismatched,
            width,
        )
    if not vectors:
        return distances
    points = np.stack(vectors)
    neighbours = min(NEIGHBOURS, len(reference))
    reference_norms = np.einsum("ij,ij->i", reference, reference)
    chunk = max(1, _DISTANCE_CELLS // len(reference))
    nearest = np.empty(len(points))
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        squared = (
            np.einsum("ij,ij->i", block, block)[:, None]
            + reference_norms[None, :]
            - 2.0 * block @ reference.T
        )
        # Rounding can make a zero distance slightly negative.
        squared = np.maximum(squared, 0.0)
        closest = np.partition(squared, neighbours - 1, axis=1)[:, :neighbours]
        nearest[start : start + len(block)] = np.sqrt(closest).mean(axis=1)
    distances[rows] = nearest
    return distances


def _thumbnail(predictions_dir: Path, image_file: Any) -> tuple[str | None, str]:
    """A PNG data URI of a kept image, about THUMBNAIL_PIXELS wide, or None and the reason."""
    if image_file is None or (isinstance(image_file, float) and math.isnan(image_file)):
        return None, NOT_KEPT
    root = predictions_dir.resolve()
    path = (predictions_dir / str(image_file)).resolve()
    # A record names a file under the predictions folder; anything else is not shown.
    if not path.is_relative_to(root):
        return None, f"image file outside {predictions_dir}: {image_file}"
    try:
        with Image.open(path) as opened:
            picture = opened.copy()
    except FileNotFoundError:
        return None, f"image file not found: {image_file}"
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return None, f"image file unreadable: {image_file} ({exc})"
    longest = max(picture.size)
    if longest < THUMBNAIL_PIXELS:
        # Whole-number nearest-neighbour scaling keeps an 8x8 digit's pixels crisp squares.
        factor = max(1, THUMBNAIL_PIXELS // longest)
        picture = picture.resize(
            (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
        )
    else:
        picture.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""


def _card_html(record: dict[str, Any], thumbnail: str | None, note: str) -> str:
    digest = record[DIGEST]
    if thumbnail is None:
        picture = f'<div class="missing">{_escape(note)}</div>'
    else:
        picture = f'<img src="{thumbnail}" alt="{_escape(digest)}">'
    image_file = record[IMAGE_FILE]
    file_line = "" if thumbnail is None else f"file: <code>{_escape(image_file)}</code><br>"
    return (
        f"<figure>{picture}<figcaption>"
        f'digest: <code title="{_escape(digest)}">{_escape(str(digest)[:12])}</code><br>'
        f"predicted: <b>{_escape(record[PREDICTED_CLASS])}</b><br>"
        f"confidence: {_percent(record[PROBABILITY])}<br>"
        f"drift distance: {_number(record[DRIFT_DISTANCE])}<br>"
        f"need score: {_number(record[NEED_SCORE])}<br>"
        f"{file_line}"
        f"</figcaption></figure>"
    )


def _page_html(
    title: str, cards: list[str], predictions_dir: Path, image_folder: str | None
) -> str:
    target = image_folder if image_folder else "<image_folder>"
    instructions = (
        '<div class="instructions"><p>These served images most need a label: the model was '
        "least sure of them, or they lie farthest from what it was tested on. Retraining on the "
        "same data cannot help with them.</p>"
        "<p>Label them by putting their files into the dataset folder's class sub-folders, "
        f"<code>{_escape(target)}/&lt;class name&gt;/</code>; the next "
        "<code>pipeline retrain</code> will find the new labelled images. The kept files are "
        f"under <code>{_escape(predictions_dir)}</code>, at the path shown under each image, "
        f"and all of them are listed in <code>{QUEUE_FILE}</code>.</p></div>"
    )
    body = (
        '<div class="queue">\n' + "\n".join(cards) + "\n</div>"
        if cards
        else "<p>No served images to review.</p>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_escape(title)}</h1>\n{instructions}\n{body}\n</body>\n</html>\n"
    )


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.3g}"


def _percent(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * float(value):.1f}%"


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)
