"""TPE (Bayesian) search through Ray Tune's Optuna searcher, in unit space.

Optuna sees one uniform [0, 1] coordinate per tuned parameter; caviar maps the
point onto the parameters' own scales, so reverse_log (which Optuna lacks)
works like every other scale.
"""

from __future__ import annotations

import math

from ray import tune

from orchestrator.strategies._base import Strategy, whole_space_round
from orchestrator.strategies._random import TrialBudget


def _coord(i: int) -> str:
    return f"u{i}"


class TpeStrategy(Strategy):
    kind = "tpe"
    Settings = TrialBudget

    def __init__(self, space, metric, mode, budget: int, seed: int = 0, state_file=None):
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        super().__init__(space, metric, mode, budget, seed, state_file)
        unit_space = {_coord(i): tune.uniform(0.0, 1.0) for i in range(len(space.tuned))}
        self.inner = OptunaSearch(unit_space, metric=metric, mode=mode,
                                  sampler=TPESampler(seed=seed))
        self.rounds = [whole_space_round(space)]

    def _next(self, trial_id: str):
        point = self.inner.suggest(trial_id)
        if point is None or point == self.FINISHED:
            return point
        return 0, [point[_coord(i)] for i in range(len(self.space.tuned))]

    def on_trial_complete(self, trial_id, result=None, error=False) -> None:
        # Optuna must hear of every trial it suggested; a diverged one as the worst value.
        inner_result = None
        if result is not None:
            rec = self.trials.get(trial_id)
            value = result.get(self.metric)
            if rec is not None:
                value = self.score_of(rec) if value is None else value
            inner_result = {**result, self.metric: self._finite(value)}
        self.inner.on_trial_complete(trial_id, inner_result, error)
        super().on_trial_complete(trial_id, result, error)

    def _finite(self, value) -> float:
        """Optuna takes finite values only: inf, NaN and non-numbers become a large worst."""
        v = self.objective.score(value)
        return v if v is not None and math.isfinite(v) else 1e12 * self.objective.sign

    def _state(self) -> dict:
        # OptunaSearch has no get_state; its own save() pickles its __dict__ (the study).
        return {**super()._state(), "inner": self.inner.__dict__.copy()}

    def _load_state(self, state: dict) -> None:
        super()._load_state(state)
        self.inner.__dict__.update(state["inner"])
