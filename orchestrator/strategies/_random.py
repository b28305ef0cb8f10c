"""Random and quasi-random search: every trial independent, drawn from the whole space."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.strategies._base import Strategy
from orchestrator.strategies._records import whole_space_round
from orchestrator.strategies._settings import setting, whole_number
from searchspaces.sampling import quasi_random_unit, random_unit


@dataclass(frozen=True)
class TrialBudget:
    """The keys of random, quasi_random and tpe: how many trials."""

    kind: str
    trials: int = setting(48, whole_number())


class RandomStrategy(Strategy):
    """Points uniform in unit space (each parameter on its own scale), seeded.

    The points are drawn up front from the seed, so a resumed sweep suggests
    exactly the points a sweep that never stopped would have.
    """

    kind = "random"
    Settings = TrialBudget

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.points = self.sample_unit(self.space, self.budget, self.seed)
        self.rounds = [whole_space_round(self.space)]

    @classmethod
    def sample_unit(cls, space, n: int, seed: int):
        """The unit points of a sweep of ``n`` trials, drawn from the seed alone."""
        return random_unit(len(space.tuned), n, seed)

    def _next(self, trial_id: str):
        return 0, self.points[self.suggested]


class QuasiRandomStrategy(RandomStrategy):
    """A scrambled Halton sequence: random-like, but fills the space more evenly."""

    kind = "quasi_random"

    @classmethod
    def sample_unit(cls, space, n: int, seed: int):
        return quasi_random_unit(len(space.tuned), n, seed)
