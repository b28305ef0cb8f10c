"""TPE (Bayesian) search through Ray Tune's Optuna searcher, in unit space.

Optuna sees one uniform [0, 1] coordinate per tuned parameter; caviar maps the
point onto the parameters' own scales, so reverse_log (which Optuna lacks)
works like every other scale.
"""

from __future__ import annotations

import math

import numpy as np
from ray import tune

from orchestrator.strategies._base import Strategy, whole_space_round
from orchestrator.strategies._random import TrialBudget


def _coord(i: int) -> str:
    return f"u{i}"


def _rngs(sampler) -> list:
    """The TPE sampler's random states: its own, and its start-up random sampler's."""
    return [sampler._rng.rng, sampler._random_sampler._rng.rng]


def _rng_state(rng) -> list:
    name, keys, pos, has_gauss, gauss = rng.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss)]


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
        """The Optuna study as plain values: each trial's point, value and state, which
        caviar trial is still running as which, and the sampler's random states, so the
        restored study suggests what the original would have (OptunaSearch's own save
        pickles the study)."""
        study = self.inner._ot_study
        trials = [{"number": t.number, "params": t.params, "value": t.value,
                   "state": t.state.name} for t in study.get_trials(deepcopy=False)]
        running = {tid: t.number for tid, t in self.inner._ot_trials.items()
                   if trials[t.number]["state"] == "RUNNING"}
        return {**super()._state(), "study": trials, "running": running,
                "rng": [_rng_state(r) for r in _rngs(study.sampler)]}

    def _load_state(self, state: dict) -> None:
        from optuna.distributions import FloatDistribution
        from optuna.trial import TrialState, create_trial

        super()._load_state(state)
        study = self.inner._ot_study
        unit = {_coord(i): FloatDistribution(0.0, 1.0) for i in range(len(self.space.tuned))}
        asked = {}
        for t in state["study"]:  # in number order, so each gets its number back
            if t["state"] == "RUNNING":
                study.enqueue_trial(t["params"])
                asked[t["number"]] = study.ask(fixed_distributions=unit)
            else:
                study.add_trial(create_trial(params=t["params"], distributions=unit,
                                             value=t["value"], state=TrialState[t["state"]]))
        self.inner._ot_trials = {tid: asked[n] for tid, n in state["running"].items()}
        for rng, saved in zip(_rngs(study.sampler), state["rng"]):
            rng.set_state((saved[0], np.array(saved[1], dtype=np.uint32), *saved[2:]))
