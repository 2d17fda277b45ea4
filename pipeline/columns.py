"""The columns of a prediction answer, besides one probability column per class, and the class
names they rule out.

The served model answers with a column per class, named by the class, beside these columns; a
class named `error` would collide with the error column. The names live here, in a module that
imports nothing, so that `check_params` can refuse such a class in milliseconds (before any
training) without loading the serving code, which pulls in MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable

PREDICTED_CLASS = "predicted_class"
PROBABILITY = "probability"
TOP_CLASSES = "top_classes"
TOP_PROBABILITIES = "top_probabilities"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
MODEL_ALIAS = "model_alias"
ERROR = "error"
LEADING_COLUMNS = (PREDICTED_CLASS, PROBABILITY, TOP_CLASSES, TOP_PROBABILITIES)
TRAILING_COLUMNS = (MODEL_NAME, MODEL_VERSION, MODEL_ALIAS, ERROR)
ANSWER_COLUMNS = (*LEADING_COLUMNS, *TRAILING_COLUMNS)
"""Every column of an answer that is not a class's probability: no class may have one of these
names."""


def class_name_problems(classes: Iterable[str]) -> list[str]:
    """Why these class names cannot be a model's classes, one line per problem (empty when
    they can): a name that is an answer column, an empty name, or two names that differ only
    in case (one folder on a case-insensitive file system, such as macOS's or Windows')."""
    problems = []
    seen: dict[str, str] = {}
    for name in classes:
        if not name.strip():
            problems.append(f"{name!r} is empty or blank: give the class a name")
        elif name in ANSWER_COLUMNS:
            problems.append(
                f"{name!r} is the name of a column of every answer ({', '.join(ANSWER_COLUMNS)}), "
                f"beside which each class has a column of its own name: rename it, e.g. to "
                f"'{name}_class'"
            )
        folded = name.casefold()
        if folded in seen:
            problems.append(
                f"{seen[folded]!r} and {name!r} differ only in case: merge them or rename one "
                "(a case-insensitive file system holds them as one folder)"
            )
        else:
            seen[folded] = name
    return problems
