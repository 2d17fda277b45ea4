"""The training strategies, by name: the registry of `Strategy` entries.

Every entry implements the one interface in pipeline/training/interface.py. Adding a strategy
is its module (train function and `Strategy`), one line here and its params block
(`train.<name>` in pipeline/config.py).
"""

from __future__ import annotations

from pipeline.training.feature_extraction import FEATURE_EXTRACTION
from pipeline.training.fine_tune import FINE_TUNE
from pipeline.training.interface import Strategy
from pipeline.training.scratch import SCRATCH

STRATEGIES: dict[str, Strategy] = {
    strategy.name: strategy for strategy in (SCRATCH, FEATURE_EXTRACTION, FINE_TUNE)
}
