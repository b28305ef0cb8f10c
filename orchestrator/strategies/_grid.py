"""Grid search: k points per tuned parameter, evenly spaced in unit space.

The course's warning, kept visible: with an unimportant parameter in the grid,
k*k trials try only k values of the one that matters.
"""

from __future__ import annotations

from orchestrator.strategies._base import RoundRecord, Strategy
from searchspaces.sampling import grid_unit


class GridStrategy(Strategy):
    kind = "grid"

    def __init__(self, space, metric, mode, points_per_parameter: int, seed: int = 0,
                 state_file=None):
        d = len(space.tuned)
        self.points = grid_unit(space, points_per_parameter ** d if d else 1)
        super().__init__(space, metric, mode, len(self.points), seed, state_file)
        self.rounds = [RoundRecord(0, {p.name: [0.0, 1.0] for p in space.tuned})]

    def _next(self, trial_id: str):
        return 0, self.points[len(self.trials)]
