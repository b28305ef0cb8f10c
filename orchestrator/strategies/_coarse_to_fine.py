"""Coarse to fine: sample the whole space, then zoom in on where the best trials were.

Round 0 samples the whole space (quasi-random by default). When ``zoom_after`` of
a round's trials have ended (the rest go on running: no worker waits for a
straggler, and they count when they end), the top ``keep`` fraction of all
finished trials defines a box in unit space (per parameter: their min and max,
widened by ``margin``, clipped to [0, 1]); choices narrow to the values those
trials used. The next round samples inside the box:

- ``pick: ratio`` (default): each point is the best of ``candidates`` draws in the
  box by TPE's criterion, the ratio of the density of the top ``keep`` trials to
  that of the others (running trials count as others, so parallel workers spread
  out); ``uniform``: the first draw.
- where the box reaches a bound of the space on a numeric parameter, ``bound_share``
  of the draws put that parameter on the bound: the best points of many problems sit
  on a bound (no weight decay, no dropout, the smallest batch), where uniform draws
  in a box never land.

A warm start (``start``: a configuration, e.g. production's hyperparameters)
centres round 0 on it instead: a box of half-width ``width`` in unit space around
it, clipped to the space, every choice allowed, and the configuration itself as
round 0's first trial.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np
from ray.tune.search import Searcher

from orchestrator.fields import fail, unknown
from orchestrator.strategies._base import Strategy
from orchestrator.strategies._density import best_by_ratio
from orchestrator.strategies._records import RoundRecord, whole_space_round
from orchestrator.strategies._settings import number_in, one_of, setting, whole_number
from searchspaces import ChoiceParameter
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
    sampler: str = setting("quasi_random", one_of("random", "quasi_random"))
    start: dict | None = setting(None, warm_start)  # round 0 centred on this configuration
    width: float = setting(0.25, number_in(0, 1, low_open=True))  # round 0's half-width then
    pick: str = setting("ratio", one_of("ratio", "uniform"))  # how later rounds pick points
    candidates: int = setting(8, whole_number())  # draws per point with pick: ratio
    bound_share: float = setting(0.5, number_in(0, 1))  # draws put on a bound the box reaches
    zoom_after: float = setting(0.75, number_in(0, 1, low_open=True))  # round share ended


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
                   s.sampler, seed=seed, state_file=state_file, start=s.start, width=s.width,
                   pick=s.pick, candidates=s.candidates, bound_share=s.bound_share,
                   zoom_after=s.zoom_after)

    def __init__(self, space, metric, mode, rounds: int, trials_per_round: int,
                 keep: float = 0.25, margin: float = 0.1, sampler: str = "quasi_random",
                 seed: int = 0, state_file=None, start: dict | None = None,
                 width: float = 0.25, pick: str = "ratio", candidates: int = 8,
                 bound_share: float = 0.5, zoom_after: float = 0.75):
        super().__init__(space, metric, mode, rounds * trials_per_round, seed, state_file)
        self.n_rounds = rounds
        self.per_round = trials_per_round
        self.keep = keep
        self.margin = margin
        self.sampler = sampler
        self.pick, self.candidates = pick, candidates
        self.box_basis, self.box_settled = 0, True
        self.bound_share, self.zoom_after = bound_share, zoom_after
        self.round = 0
        self.box = _Box.whole(space)
        self.start = None
        if start is not None:  # clipped: the space's declared bounds hold
            self.start = [min(1.0, max(0.0, u)) for u in space.unit_from_config(start)]
            self.box = _Box({p.name: [max(0.0, u - width), min(1.0, u + width)]
                             for p, u in zip(space.tuned, self.start)
                             if not isinstance(p, ChoiceParameter)}, self.box.choices)
        self.rounds = [RoundRecord(0, dict(self.box.intervals), dict(self.box.choices))]

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
            self._refresh_box()
            return self.round, self._point(started)
        needed = math.ceil(self.zoom_after * started)
        if self.ended.get(self.round, 0) < needed:
            self.settle_restored()  # a restored run may have ended some unannounced
            if self.ended.get(self.round, 0) < needed:
                return None  # wait for enough of the round to end before zooming in
        if self.round + 1 >= self.n_rounds:
            return Searcher.FINISHED
        self._zoom()
        return self._next(trial_id)

    def _point(self, i: int) -> list[float]:
        """The round's ``i``-th point: its draw placed in the box (round 0), else the
        best of ``candidates`` such draws (pick: ratio), some put on the box's bounds."""
        first = self.box.place(self.space, self._draws(self.round)[i])
        if self.round == 0:
            return first
        rng = np.random.default_rng([self.seed, self.round, i])  # the same after a resume
        if self.pick == "uniform":
            return self._on_bounds(first, rng)
        good, others = self._model_trials()
        d = len(self.space.tuned)
        extra = [self.box.place(self.space, rng.random(d)) for _ in range(self.candidates - 1)]
        draws = np.array([self._on_bounds(u, rng) for u in [first] + extra])
        return list(draws[best_by_ratio(draws, good, others)])

    def _model_trials(self, most_good: int = 64, most_others: int = 256):
        """The unit points of the top ``keep`` ended trials (at most ``most_good``, the
        best) and of the others, running ones included (at most ``most_others``, spread
        over the ranking): what a suggestion costs does not grow with the trials."""
        n_good = max(1, math.ceil(self.keep * len(self._order)))
        good = [tid for _, tid in self._order[:min(n_good, most_good)]]
        rest = self._order[n_good:]
        rest = [tid for _, tid in rest[::max(1, len(rest) // most_others)]]
        others = rest + sorted(self.open)[:most_others]
        d = len(self.space.tuned)
        return (np.array([self.trials[t].unit for t in good]).reshape(-1, d),
                np.array([self.trials[t].unit for t in others]).reshape(-1, d))

    def _index(self) -> None:
        self._order: list[tuple[float, str]] = []  # ended trials, best first
        super()._index()

    def _count_end(self, trial_id: str, rec) -> None:
        super()._count_end(trial_id, rec)
        bisect.insort(self._order, (self.objective.sign * self.score_of(rec), trial_id))

    def _on_bounds(self, u: list[float], rng) -> list[float]:
        """Puts each numeric coordinate on a bound of the space its box reaches, with
        chance ``bound_share``."""
        out = list(u)
        for i, p in enumerate(self.space.tuned):
            if p.name in self.box.choices or not self.bound_share:
                continue
            lo, hi = self.box.intervals[p.name]
            if lo <= 0.0 and rng.random() < self.bound_share:
                out[i] = 0.0
            elif hi >= 1.0 and rng.random() < self.bound_share:
                out[i] = 1.0
        return out

    def _zoom(self) -> None:
        """Closes the round: the next box from the top ``keep`` fraction of finished trials."""
        self.round += 1
        self.box = self._top_box()
        self.rounds.append(RoundRecord(self.round, dict(self.box.intervals),
                                       dict(self.box.choices)))
        self._dirty = True

    def _top_box(self) -> _Box:
        """The box of the top ``keep`` fraction of finished trials, widened by ``margin``;
        settled once no trial of an earlier round runs."""
        self.box_basis = len(self._order)
        self.box_settled = all(self.trials[t].round >= self.round for t in self.open)
        top = [self.trials[t] for _, t in self._order[:max(1, math.ceil(
            self.keep * len(self._order)))]]
        intervals, choices = {}, {}
        for i, p in enumerate(self.space.tuned):
            if isinstance(p, ChoiceParameter):
                used = {repr(r.config[p.name]) for r in top}
                choices[p.name] = [v for v in p.values if repr(v) in used]
            else:
                coords = [r.unit[i] for r in top]
                intervals[p.name] = [max(0.0, min(coords) - self.margin),
                                     min(1.0, max(coords) + self.margin)]
        return _Box(intervals, choices)

    def _refresh_box(self) -> None:
        """A box made while trials of the rounds before still ran is made again as
        trials end, until they all have (asynchronous rounds: the box follows the
        results as they arrive)."""
        if self.round == 0 or self.box_settled or len(self._order) == self.box_basis:
            return
        self.box = self._top_box()
        record = self.rounds[-1]  # the union of the boxes the round drew from: its
        for name, (lo, hi) in self.box.intervals.items():  # trials all lie inside it
            was = record.box.get(name, [lo, hi])
            record.box[name] = [min(lo, was[0]), max(hi, was[1])]
        for name, allowed in self.box.choices.items():
            was = record.choices.get(name, [])
            p = self.space[name]
            record.choices[name] = [v for v in p.values if v in allowed or v in was]
        self._dirty = True

    def _state(self) -> dict:
        return {**super()._state(), "round": self.round,
                "box": {"intervals": self.box.intervals, "choices": self.box.choices},
                "box_basis": self.box_basis, "box_settled": self.box_settled}

    def _load_state(self, state: dict) -> None:
        super()._load_state(state)
        self.round, self.box = state["round"], _Box(**state["box"])
        self.box_basis = state.get("box_basis", len(self._order))
        self.box_settled = state.get("box_settled", True)
