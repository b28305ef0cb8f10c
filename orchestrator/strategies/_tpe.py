"""TPE (Bayesian) search through Ray Tune's Optuna searcher, on Optuna's own
distributions.

Each tuned parameter is what an Optuna user would declare: floats and integers on
linear or log scales (integers as integers: TPE's discrete kernels give the bounds
their full share), choices as categorical. Optuna lacks reverse_log: a parameter
on it is ``1 - value`` on a log scale (momentum's 1-β). Parallel trials go through
Optuna's constant liar, so workers do not all sample the same spot.
"""

from __future__ import annotations

import math

import numpy as np

from orchestrator.strategies._base import Strategy
from orchestrator.strategies._random import TrialBudget
from orchestrator.strategies._records import whole_space_round
from searchspaces import ChoiceParameter, FloatParameter, IntParameter

_PRIMITIVE = (type(None), bool, int, float, str)


class _Coordinate:
    """One tuned parameter as Optuna sees it: its distribution, and the maps from a
    caviar value to Optuna's and back."""

    def __init__(self, p):
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        self.p, self.flip = p, False
        scale = getattr(p, "scale", None)
        if isinstance(p, ChoiceParameter) and all(isinstance(v, _PRIMITIVE) for v in p.values):
            self.dist = CategoricalDistribution(p.values)
        elif isinstance(p, IntParameter) and scale.name in ("linear", "log"):
            self.dist = IntDistribution(int(scale.low), int(scale.high), log=scale.name == "log")
        elif isinstance(p, FloatParameter) and scale.name in ("linear", "log"):
            self.dist = FloatDistribution(scale.low, scale.high, log=scale.name == "log")
        elif isinstance(p, FloatParameter) and scale.name == "reverse_log":
            self.flip = True  # 1 - value on a log scale
            self.dist = FloatDistribution(1.0 - scale.high, 1.0 - scale.low, log=True)
        else:  # anything else: its unit coordinate
            self.dist, self.p = FloatDistribution(0.0, 1.0), None

    def to_optuna(self, value, unit: float):
        if self.p is None:
            return unit
        return 1.0 - value if self.flip else value

    def to_unit(self, x) -> float:
        if self.p is None:
            return float(x)
        return self.p.to_unit(1.0 - x if self.flip else x)


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
        super().__init__(space, metric, mode, budget, seed, state_file)
        self.coords = {p.name: _Coordinate(p) for p in space.tuned}
        self.inner = self._make_inner()
        self.rounds = [whole_space_round(space)]

    def _make_inner(self):
        """Optuna's TPE over the tuned parameters, for this strategy's metric and mode."""
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(self._distributions(), metric=self._metric, mode=self._mode or "min",
                            sampler=TPESampler(seed=self.seed, constant_liar=True))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """The Tuner's metric and mode reach Optuna too: before any trial, the study is
        made again for them (its direction is fixed when made)."""
        before = (self._metric, self._mode)
        accepted = super().set_search_properties(metric, mode, config, **spec)
        if (self._metric, self._mode) != before:
            if self.trials:
                raise ValueError("a tpe strategy's metric and mode cannot change once it "
                                 f"has trials ({before} -> {(self._metric, self._mode)})")
            self.inner = self._make_inner()
        return accepted

    def _distributions(self) -> dict:
        return {name: c.dist for name, c in self.coords.items()}

    def _params(self, config: dict, unit) -> dict:
        """A configuration as Optuna's parameters."""
        return {name: c.to_optuna(config[name], u)
                for (name, c), u in zip(self.coords.items(), unit)}

    def _next(self, trial_id: str):
        point = self.inner.suggest(trial_id)
        if point is None or point == self.FINISHED:
            return point
        return 0, [c.to_unit(point[name]) for name, c in self.coords.items()]

    def _on_known(self, trial_id, rec, pruned: bool) -> None:
        self.inner.add_evaluated_point(self._params(rec.config, rec.unit),
                                       self._finite(rec.score), error=rec.error, pruned=pruned)

    def on_trial_complete(self, trial_id, result=None, error=False) -> None:
        rec = self.trials.get(trial_id)
        if rec is None:
            return  # not one of ours (e.g. a restarted errored trial under a new id)
        # Optuna must hear of every trial it suggested; a diverged one as the worst value.
        value = None if result is None else self._finite(
            self.score_of(rec) if result.get(self.metric) is None else result[self.metric])
        if trial_id in self.inner._ot_trials:
            self.inner.on_trial_complete(
                trial_id, None if result is None else {**result, self.metric: value}, error)
        elif value is not None:  # Tune resumed it after a restore (resume_errored): the
            # restored study holds it as ended, so its outcome comes as a trial of its own
            self.inner.add_evaluated_point(self._params(rec.config, rec.unit), value,
                                           error=error)
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
        from optuna.trial import TrialState, create_trial

        super()._load_state(state)
        study = self.inner._ot_study
        dists = self._distributions()
        asked = {}
        for t in state["study"]:  # in number order, so each gets its number back
            params = self._saved_params(t["params"])
            if t["state"] == "RUNNING":
                study.enqueue_trial(params)
                asked[t["number"]] = study.ask(fixed_distributions=dists)
            else:
                study.add_trial(create_trial(params=params, distributions=dists,
                                             value=t["value"], state=TrialState[t["state"]]))
        self.inner._ot_trials = {tid: asked[n] for tid, n in state["running"].items()}
        for rng, saved in zip(_rngs(study.sampler), state["rng"]):
            rng.set_state((saved[0], np.array(saved[1], dtype=np.uint32), *saved[2:]))

    def _saved_params(self, params: dict) -> dict:
        """A saved trial's parameters; an earlier caviar saved unit coordinates u0, u1..."""
        if set(params) == set(self.coords):
            return params
        unit = [params[f"u{i}"] for i in range(len(self.coords))]
        return self._params(self.space.config_from_unit(unit), unit)
