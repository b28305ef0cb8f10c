"""What a study optimises: one of the trainer's metrics, and which way is better.

Every place that compares scores (the strategies, the event log, the summary, a
trial's best checkpoint, the re-tune gate) asks an ``Objective`` instead of
testing ``mode == "min"`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# What the trainer (models.train.fit) reports each epoch, and which way is better.
METRICS = {"val_loss": "min", "val_accuracy": "max", "train_loss": "min"}
MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    """A metric and its direction: ``Objective("val_loss", "min")``."""

    name: str = "val_loss"
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")

    @classmethod
    def of(cls, name: str) -> Objective:
        """The trainer's metric ``name`` with its own direction."""
        return cls(name, METRICS[name])

    @property
    def sign(self) -> float:
        """+1 for min, -1 for max: ``sign * value`` is smaller when better."""
        return 1.0 if self.mode == "min" else -1.0

    @property
    def worst(self) -> float:
        """A score every other beats (a failed or diverged trial's)."""
        return math.inf * self.sign

    @property
    def direction(self) -> str:
        """Optuna's word for the mode."""
        return "minimize" if self.mode == "min" else "maximize"

    def better(self, a: float, b: float | None) -> bool:
        """Whether ``a`` is strictly better than ``b`` (anything beats None)."""
        return b is None or (a < b if self.mode == "min" else a > b)

    def score(self, value: object) -> float | None:
        """A reported value as a score: NaN is the worst, None or a non-number None."""
        if value is None:
            return None
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return self.worst if math.isnan(value) else value

    def best(self, values: Iterable) -> float | None:
        """The best finite value of ``values``, or None when none is finite."""
        out = None
        for v in values:
            if isinstance(v, (int, float)) and math.isfinite(v) and self.better(v, out):
                out = v
        return out

    def rank(self, items: Iterable, key: Callable = lambda x: x) -> list:
        """``items`` best first by ``key(item)`` (a finite score); ties keep their order."""
        return sorted(items, key=lambda item: self.sign * key(item))

    def to_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode}
