"""What a strategy remembers: a record per trial and per round, in unit space, the maps
between them and the values of the space, and how its trials rank."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from models.objective import Objective
from searchspaces import ChoiceParameter, SearchSpace


@dataclass
class TrialRecord:
    """What a strategy remembers of one trial."""

    round: int
    unit: list[float]
    config: dict
    score: float | None = None  # best metric over its epochs, None until it reports
    done: bool = False
    error: bool = False
    known: bool = False  # evaluated elsewhere (add_evaluated_point): outside the budget


@dataclass
class RoundRecord:
    """One round: the box its points were drawn from (per tuned parameter, in unit space)."""

    round: int
    box: dict = field(default_factory=dict)  # name -> [lo, hi] in unit space
    choices: dict = field(default_factory=dict)  # choice name -> allowed values
    trials: int = 0


def whole_space_round(space: SearchSpace) -> RoundRecord:
    """Round 0 of a strategy that samples the whole space: every interval, every choice."""
    intervals, choices = {}, {}
    for p in space.tuned:
        if isinstance(p, ChoiceParameter):
            choices[p.name] = list(p.values)
        else:
            intervals[p.name] = [0.0, 1.0]
    return RoundRecord(0, intervals, choices)


def known_unit(space: SearchSpace, parameters: dict) -> list[float]:
    """The unit point of a configuration evaluated elsewhere (``add_evaluated_point``).

    Raises:
        ValueError: a tuned parameter missing, an unknown one, or a value outside the space.
    """
    extra = sorted(set(parameters) - set(space.names))
    missing = [p.name for p in space.tuned if p.name not in parameters]
    if extra or missing:
        raise ValueError(f"add_evaluated_point: parameters must name each tuned "
                         f"parameter of the space; unknown: {extra}, missing: {missing}")
    bad = [f"{p.name}={parameters[p.name]!r}" for p in space.tuned
           if not p.contains(parameters[p.name])]
    if bad:
        raise ValueError(f"add_evaluated_point: {', '.join(bad)} not in the space")
    return [p.to_unit(parameters[p.name]) for p in space.tuned]


def rounds_in_values(space: SearchSpace, rounds: list[RoundRecord]) -> list[dict]:
    """Each round with its box in the parameters' values: [low, high] of an interval, the
    allowed values of a choice."""
    out = []
    for r in rounds:
        box = {}
        for p in space.tuned:
            if p.name in r.choices:
                box[p.name] = list(r.choices[p.name])
            elif p.name in r.box:
                lo, hi = r.box[p.name]
                box[p.name] = [p.from_unit(lo), p.from_unit(hi)]
        out.append({"round": r.round, "trials": r.trials, "box": box})
    return out


class Ranking:
    """Trials ranked by the strategy's metric and mode (``self.metric``, ``self.mode``:
    a Searcher's)."""

    @property
    def objective(self) -> Objective:
        """The metric and its direction (Tune may set them late: set_search_properties).
        Made once per (metric, mode): score_of asks it for every trial of every ranking."""
        key = (self.metric, self.mode)
        if getattr(self, "_objective_key", None) != key:
            self._objective, self._objective_key = Objective(*key), key
        return self._objective

    def score_of(self, rec: TrialRecord) -> float:
        """A trial's score for ranking: failed, diverged or silent trials rank last."""
        s = rec.score
        return self.objective.worst if rec.error or s is None or not math.isfinite(s) else s

    def ranked(self, records) -> list[TrialRecord]:
        """Best first; failed, diverged or silent trials last."""
        return self.objective.rank(records, key=self.score_of)

    def _better(self, old: float | None, new) -> float | None:
        """The better of a trial's score so far and a newly reported value."""
        new = self.objective.score(new)
        if new is None:
            return old
        return new if self.objective.better(new, old) else old
