"""Scales: each maps a value to the unit interval and back.

Every strategy (random, quasi-random, grid, coarse-to-fine zoom) works in unit
space, so sampling uniformly there samples each parameter on its own scale, and
a new scale needs no change anywhere else.
"""

from __future__ import annotations

import math


class Scale:
    """Maps ``[low, high]`` onto ``[0, 1]``; ``from_unit(to_unit(v)) == v``."""

    name = ""

    def __init__(self, low: float, high: float):
        self.low = float(low)
        self.high = float(high)

    def to_unit(self, value: float) -> float:
        raise NotImplementedError

    def from_unit(self, u: float) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.low:g}, {self.high:g})"


class Linear(Scale):
    """Uniform on ``[low, high]``: hidden units, layers."""

    name = "linear"

    def to_unit(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> float:
        return self.low + u * (self.high - self.low)


class Log(Scale):
    """``10**U(log10 low, log10 high)``: equal trials per decade (learning rate, epsilon)."""

    name = "log"

    def __init__(self, low: float, high: float):
        super().__init__(low, high)
        self._a = math.log10(self.low)
        self._b = math.log10(self.high)

    def to_unit(self, value: float) -> float:
        return (math.log10(value) - self._a) / (self._b - self._a)

    def from_unit(self, u: float) -> float:
        return 10 ** (self._a + u * (self._b - self._a))


class ReverseLog(Scale):
    """``1 - 10**U(log10(1-high), log10(1-low))``: equal trials per decade of 1 - beta.

    The course's "tricky" scale for momentum-like averages: beta from 0.9 to
    0.9005 barely matters (both average ~10 values) while 0.999 to 0.9995
    doubles the window, so sample r uniformly and set beta = 1 - 10**r.
    ``u = 0`` is ``low`` and ``u = 1`` is ``high``, as on every scale.
    """

    name = "reverse_log"

    def __init__(self, low: float, high: float):
        super().__init__(low, high)
        self._a = math.log10(1.0 - self.low)  # the larger exponent
        self._b = math.log10(1.0 - self.high)

    def to_unit(self, value: float) -> float:
        return (math.log10(1.0 - value) - self._a) / (self._b - self._a)

    def from_unit(self, u: float) -> float:
        return 1.0 - 10 ** (self._a + u * (self._b - self._a))


SCALES: dict[str, type[Scale]] = {cls.name: cls for cls in (Linear, Log, ReverseLog)}
