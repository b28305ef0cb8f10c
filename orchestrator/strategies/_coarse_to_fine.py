"""Coarse to fine: sample the whole space, then zoom in on where the best trials were.

Round 0 samples the whole space. When every trial of a round has ended, the
top ``keep`` fraction of all finished trials defines a box in unit space (per
parameter: their min and max, widened by ``margin``, clipped to [0, 1]); choices
narrow to the values those trials used. The next round samples inside the box.

A warm start (``start``: a configuration, e.g. production's hyperparameters)
centres round 0 on it instead: a box of half-width ``width`` in unit space around
it, clipped to the space, every choice allowed, and the configuration itself as
round 0's first trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ray.tune.search import Searcher

from orchestrator.strategies._base import RoundRecord, Strategy, whole_space_round
from orchestrator.strategies._settings import number_in, one_of, setting, whole_number
from searchspaces import ChoiceParameter
from searchspaces.fields import fail, unknown
from searchspaces.sampling import quasi_random_unit, random_unit


def warm_start(source: str, key: str, start, space) -> dict:
    """A warm start's configuration: known tuned parameters; those missing take the
    space's centre. Values outside the space are kept here and clipped by the strategy."""
    if not isinstance(start, dict):
        raise fail(source, key, f"must be a mapping of parameter values, got {start!r}")
    tuned = {p.name: p for p in space.tuned}
    for name in start:
        if name not in tuned:
            raise unknown(source, key, name, tuple(tuned))
    out = {}
    for name, p in tuned.items():
        value = start.get(name, p.centre())
        try:
            p.to_unit(value)
        except (TypeError, ValueError) as e:
            raise fail(source, f"{key}.{name}", f"is not a value of this parameter ({e}), "
                       f"got {value!r}") from None
        out[name] = value
    return out


@dataclass(frozen=True)
class CoarseToFineSettings:
    kind: str = "coarse_to_fine"
    rounds: int = setting(3, whole_number())
    trials_per_round: int = setting(16, whole_number())
    keep: float = setting(0.25, number_in(0, 1, low_open=True))  # top share that sets the box
    margin: float = setting(0.1, number_in(0, 1))  # the box's widening, in unit space
    sampler: str = setting("random", one_of("random", "quasi_random"))
    start: dict | None = setting(None, warm_start)  # round 0 centred on this configuration
    width: float = setting(0.25, number_in(0, 1, low_open=True))  # round 0's half-width then


class _Box:
    """Per tuned parameter: an interval of unit space, or for a choice the allowed values."""

    def __init__(self, intervals: dict, choices: dict):
        self.intervals = intervals  # name -> [lo, hi]
        self.choices = choices  # name -> [values]

    @classmethod
    def whole(cls, space) -> _Box:
        r = whole_space_round(space)
        return cls(r.box, r.choices)

    def place(self, space, u: np.ndarray) -> list[float]:
        """Maps a point of the unit cube into this box."""
        out = []
        for p, x in zip(space.tuned, u):
            if p.name in self.choices:
                allowed = self.choices[p.name]
                value = allowed[min(int(x * len(allowed)), len(allowed) - 1)]
                out.append(p.to_unit(value))
            else:
                lo, hi = self.intervals[p.name]
                out.append(lo + float(x) * (hi - lo))
        return out


class CoarseToFineStrategy(Strategy):
    kind = "coarse_to_fine"
    Settings = CoarseToFineSettings

    @classmethod
    def budget_of(cls, settings, space) -> int:
        return settings.rounds * settings.trials_per_round

    @classmethod
    def from_settings(cls, settings, space, metric, mode, seed, state_file=None):
        s = settings
        return cls(space, metric, mode, s.rounds, s.trials_per_round, s.keep, s.margin,
                   s.sampler, seed=seed, state_file=state_file, start=s.start, width=s.width)

    def __init__(self, space, metric, mode, rounds: int, trials_per_round: int,
                 keep: float = 0.25, margin: float = 0.1, sampler: str = "random",
                 seed: int = 0, state_file=None, start: dict | None = None,
                 width: float = 0.25):
        super().__init__(space, metric, mode, rounds * trials_per_round, seed, state_file)
        self.n_rounds = rounds
        self.per_round = trials_per_round
        self.keep = keep
        self.margin = margin
        self.sampler = sampler
        self.round = 0
        self.box = _Box.whole(space)
        self.start = None
        if start is not None:  # clipped: the space's declared bounds hold
            self.start = [min(1.0, max(0.0, u)) for u in space.unit_from_config(start)]
            self.box = _Box({p.name: [max(0.0, u - width), min(1.0, u + width)]
                             for p, u in zip(space.tuned, self.start)
                             if not isinstance(p, ChoiceParameter)}, self.box.choices)
        self.rounds = [RoundRecord(0, dict(self.box.intervals), dict(self.box.choices))]
        self.edge_margin = margin

    def _draws(self, round_: int) -> np.ndarray:
        """The round's points in the unit cube, from (seed, round): the same after a resume."""
        d, n, seed = len(self.space.tuned), self.per_round, self.seed * 1000 + round_
        if self.sampler == "quasi_random":
            return quasi_random_unit(d, n, seed)
        return random_unit(d, n, seed)

    def _next(self, trial_id: str):
        started = self.rounds[self.round].trials  # rounds[i] is round i here
        if started < self.per_round:
            if self.round == 0 and not started and self.start is not None:
                return 0, list(self.start)  # the warm start itself comes first
            u = self._draws(self.round)[started]
            return self.round, self.box.place(self.space, u)
        if self.ended.get(self.round, 0) < started:
            return None  # wait for the round to end before zooming in
        if self.round + 1 >= self.n_rounds:
            return Searcher.FINISHED
        self._zoom()
        return self._next(trial_id)

    def _zoom(self) -> None:
        """Closes the round: the next box from the top ``keep`` fraction of finished trials."""
        finished = [r for r in self.trials.values() if r.done]
        ranked = self.ranked(finished)
        top = ranked[:max(1, math.ceil(self.keep * len(ranked)))]
        intervals, choices = {}, {}
        for i, p in enumerate(self.space.tuned):
            if isinstance(p, ChoiceParameter):
                used = {repr(r.config[p.name]) for r in top}
                choices[p.name] = [v for v in p.values if repr(v) in used]
            else:
                coords = [r.unit[i] for r in top]
                intervals[p.name] = [max(0.0, min(coords) - self.margin),
                                     min(1.0, max(coords) + self.margin)]
        self.round += 1
        self.box = _Box(intervals, choices)
        self.rounds.append(RoundRecord(self.round, intervals, choices))
        self._dirty = True

    def edges(self, margin: float | None = None) -> list[dict]:
        return super().edges(self.edge_margin if margin is None else margin)

    def _state(self) -> dict:
        return {**super()._state(), "round": self.round,
                "box": {"intervals": self.box.intervals, "choices": self.box.choices}}

    def _load_state(self, state: dict) -> None:
        super()._load_state(state)
        self.round, self.box = state["round"], _Box(**state["box"])
