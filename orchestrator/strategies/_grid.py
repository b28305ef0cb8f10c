"""Grid search: k points per tuned parameter, evenly spaced in unit space.

The course's warning, kept visible: with an unimportant parameter in the grid,
k*k trials try only k values of the one that matters.
"""

from __future__ import annotations

from orchestrator.strategies._base import Strategy, whole_space_round
from searchspaces.sampling import grid_unit


class GridStrategy(Strategy):
    kind = "grid"

    def __init__(self, space, metric, mode, points_per_parameter: int, seed: int = 0,
                 state_file=None):
        d = len(space.tuned)
        self.points = grid_unit(space, points_per_parameter ** d if d else 1)
        super().__init__(space, metric, mode, len(self.points), seed, state_file)
        self.rounds = [whole_space_round(space)]

    def _next(self, trial_id: str):
        return 0, self.points[len(self.trials)]
