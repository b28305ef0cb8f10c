"""Search strategies, one module each, all Ray Tune Searchers working in unit space."""

from __future__ import annotations

from orchestrator.strategies._base import (
    ROUND_KEY,
    SEED_KEY,
    RoundRecord,
    Strategy,
    TrialRecord,
)
from orchestrator.strategies._coarse_to_fine import CoarseToFineStrategy
from orchestrator.strategies._grid import GridStrategy
from orchestrator.strategies._random import QuasiRandomStrategy, RandomStrategy
from orchestrator.strategies._tpe import TpeStrategy

__all__ = [
    "ROUND_KEY", "SEED_KEY", "CoarseToFineStrategy", "GridStrategy", "QuasiRandomStrategy",
    "RandomStrategy", "RoundRecord", "Strategy", "TpeStrategy", "TrialRecord", "make_strategy",
]


def make_strategy(strategy: dict, space, metric: str, mode: str, seed: int,
                  state_file=None) -> Strategy:
    """The Strategy a sweep file's ``strategy:`` section names (already checked)."""
    kind = strategy["kind"]
    common = {"seed": seed, "state_file": state_file}
    if kind == "coarse_to_fine":
        return CoarseToFineStrategy(space, metric, mode, strategy["rounds"],
                                    strategy["trials_per_round"], strategy["keep"],
                                    strategy["margin"], strategy["sampler"], **common,
                                    start=strategy.get("start"),
                                    width=strategy.get("width", 0.25))
    if kind == "grid":
        return GridStrategy(space, metric, mode, strategy["points"], **common)
    if kind == "random":
        return RandomStrategy(space, metric, mode, strategy["trials"], **common)
    if kind == "quasi_random":
        return QuasiRandomStrategy(space, metric, mode, strategy["trials"], **common)
    if kind == "tpe":
        return TpeStrategy(space, metric, mode, strategy["trials"], **common)
    raise ValueError(f"unknown strategy {kind!r}")
