"""Values as the report prints them: numbers with separators, p-values, a dash for a missing
value, tints, anchors and safe links. Every function takes what a DataFrame cell may hold
(NaN, None, numpy scalars, text) and never raises on it."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

DASH = "\u2014"
"""What a missing or non-numeric value prints as."""


def column_values(frame: pd.DataFrame, column: str) -> list:
    """A column's values with NaN as None; all None when the frame has no such column."""
    if column not in frame.columns:
        return [None] * len(frame)
    return [None if is_nan(value) else value for value in frame[column].tolist()]


def is_nan(value: Any) -> bool:
    """Whether `value` is a missing value (NaN, None, NaT); False for what pandas cannot tell."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def is_number(value: Any) -> bool:
    """A finite int or float (numpy's included), not a bool: what can be printed as a number."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def truthy(value: Any) -> bool:
    """A flag read back from a CSV: "true", "1", "yes" (any case) or a true value; NaN is false."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) and not is_nan(value)


def decimal(value: Any, places: int) -> str:
    """`value` with `places` decimals and thousands separators, or the dash."""
    return f"{float(value):,.{places}f}" if is_number(value) else DASH


def integer(value: Any) -> str:
    """`value` rounded to a whole number with thousands separators, or the dash."""
    return f"{round(float(value)):,}" if is_number(value) else DASH


def metric(value: Any) -> str:
    """A metric as a strategy's table shows it: integers whole, numbers to 4 places, else text."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return integer(value)
    return decimal(value, 4) if is_number(value) else str(value)


def bar(value: Any, largest: float) -> str | None:
    """The CSS width of `value`'s bar, as a share of `largest`; None where there is no number."""
    if not is_number(value) or largest <= 0:
        return None
    return percent(float(value) / largest)


def percent(fraction: float) -> str:
    """`fraction`, clipped to 0..1, as a CSS percentage."""
    return f"{max(0.0, min(1.0, fraction)) * 100:.1f}%"


def percent_text(fraction: float) -> str:
    """`fraction` as a reader's percentage: "28%", "0.4%", "<0.1%" (0 stays "0%")."""
    if not is_number(fraction):
        return DASH
    value = float(fraction) * 100
    if value == 0 or value >= 10:
        return f"{value:.0f}%"
    return f"{value:.1f}%" if value >= 0.1 else "<0.1%"


def tint(value: Any) -> str | None:
    """A light background from red (0.5 and below) through yellow (0.75) to green (1): the
    range where classifiers' per-class scores differ. Text stays dark on it."""
    if not is_number(value):
        return None
    hue = round(120 * max(0.0, min(1.0, (float(value) - 0.5) / 0.5)))
    return f"hsl({hue}, 70%, 90%)"


def format_p(value: Any) -> str:
    """A p-value to 3 decimals, "<0.001" below that, or the dash."""
    if not is_number(value):
        return DASH
    value = float(value)
    if value < 0.001:
        return "<0.001"
    return f"{value:.3f}"


def p_equation(value: Any) -> str:
    """ "p=0.016", or "p<0.001" for a p-value too small to print."""
    text = format_p(value)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def format_alpha(alpha: float) -> str:
    """The significance level as written in params.yaml (0.05, not 0.050)."""
    return f"{float(alpha):g}"


def format_time(value: datetime | str) -> str:
    """When the report was made, to the minute with its time zone; text as it is."""
    if isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M")
        zone = value.strftime("%Z")
        return f"{text} {zone}" if zone else text
    return str(value)


def anchor(text: str, used: set[str]) -> str:
    """An id made of [a-z0-9-] only, unique on the page."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    candidate, number = base, 2
    while candidate in used:
        candidate, number = f"{base}-{number}", number + 1
    used.add(candidate)
    return candidate


def safe_url(url: str | None) -> str | None:
    """Only http(s) links: a `javascript:` or `data:` address from data never becomes one."""
    if not url:
        return None
    return url if re.match(r"^https?://", url.strip(), re.IGNORECASE) else None
