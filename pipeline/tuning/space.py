"""tune.space in Optuna's terms, and a trial's params in DVC's.

Pure: no Optuna storage, no DVC. A range is a FloatDistribution (an IntDistribution when its
bounds are integers), a list a CategoricalDistribution. A trial's params go to `dvc exp run -S
key=value`, which DVC parses with Hydra's override grammar and writes back with ruamel (YAML
1.2): each value is written so that it comes back with its type (a number stays a number, a
string that looks like one stays a string).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from pipeline.config import TuneRange
from pipeline.errors import ConfigError

Choice = int | float | str | bool


def distributions(space: Mapping[str, TuneRange | list[Choice]]) -> dict[str, BaseDistribution]:
    """Each params key of tune.space and the distribution Optuna draws it from."""
    return {key: distribution(key, value) for key, value in space.items()}


def distribution(key: str, value: TuneRange | list[Choice]) -> BaseDistribution:
    if isinstance(value, TuneRange):
        if value.integer:
            return IntDistribution(
                int(value.low), int(value.high), log=value.log, step=int(value.step or 1)
            )
        return FloatDistribution(
            float(value.low), float(value.high), log=value.log,
            step=None if value.step is None else float(value.step),
        )  # fmt: skip
    choices = list(value)
    if len({(type(choice), choice) for choice in choices}) != len(choices):
        raise ConfigError(f"tune.space.{key}: the choices {choices} repeat one; list each once")
    return CategoricalDistribution(choices)


# Hydra's override grammar: an unquoted value that is a word of letters, digits and _-./ is a
# string; anything else (spaces, quotes, brackets, a word YAML reads as null or a bool) is
# quoted, so it comes back as the same string.
_PLAIN_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-./]*$")
_HYDRA_KEYWORDS = {"null", "true", "false", "nan", "inf"}


def format_value(value: Choice) -> str:
    """`value` as the right-hand side of `-S key=value`, read back with its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{value}: a trial's value must be a finite number")
        return repr(value)  # the shortest text that reads back as the same float
    text = str(value)
    if _PLAIN_WORD.match(text) and text.lower() not in _HYDRA_KEYWORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_arguments(params: Mapping[str, Choice]) -> list[str]:
    """`-S key=value` for each param, in a stable order."""
    arguments: list[str] = []
    for key in sorted(params):
        arguments += ["-S", f"{key}={format_value(params[key])}"]
    return arguments


def params_key(params: Mapping[str, Any]) -> tuple:
    """A hashable form of a trial's params, for spotting a set already tried (1 and 1.0, True
    and 1 are told apart, as the params file would tell them apart)."""
    return tuple(sorted((key, type(value).__name__, value) for key, value in params.items()))


def already_tried(params: Mapping[str, Any], others: Iterable[Mapping[str, Any]]) -> bool:
    """Whether another trial has (or had) exactly these params."""
    mine = params_key(params)
    return any(params_key(other) == mine for other in others)
