"""Grid search: k points per tuned parameter, evenly spaced in unit space.

The course's warning, kept visible: with an unimportant parameter in the grid,
k*k trials try only k values of the one that matters.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.strategies._base import Strategy
from orchestrator.strategies._records import whole_space_round
from orchestrator.strategies._settings import setting, whole_number
from searchspaces.sampling import grid_points_per_parameter, grid_unit


@dataclass(frozen=True)
class GridSettings:
    kind: str = "grid"
    points: int = setting(5, whole_number())  # per tuned parameter


class GridStrategy(Strategy):
    kind = "grid"
    Settings = GridSettings

    def __init__(self, space, metric, mode, points_per_parameter: int, seed: int = 0,
                 state_file=None):
        self.points = grid_unit(space, points_per_parameter)
        super().__init__(space, metric, mode, len(self.points), seed, state_file)
        self.rounds = [whole_space_round(space)]

    @classmethod
    def budget_of(cls, settings, space) -> int:
        """k**d points, fewer where an int range or a choice has fewer than k values."""
        return len(grid_unit(space, settings.points))

    @classmethod
    def sample_unit(cls, space, n: int, seed: int):
        """The grid a budget of ``n`` trials allows: k = round(n ** (1/d)) points per
        tuned parameter; no seed needed."""
        return grid_unit(space, grid_points_per_parameter(n, len(space.tuned)))

    @classmethod
    def from_settings(cls, settings, space, metric, mode, seed, state_file=None):
        return cls(space, metric, mode, settings.points, seed, state_file)

    def _next(self, trial_id: str):
        return 0, self.points[self.suggested]
