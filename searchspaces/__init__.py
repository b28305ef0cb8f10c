"""Search spaces: the YAML format, the scales, sampling and validation."""

from searchspaces.errors import SpecError
from searchspaces.sampling import STRATEGIES, sample
from searchspaces.scales import SCALES, Linear, Log, ReverseLog, Scale
from searchspaces.space import (
    ChoiceParameter,
    FixedParameter,
    FloatParameter,
    IntParameter,
    Parameter,
    SearchSpace,
)

__all__ = [
    "SCALES", "STRATEGIES", "ChoiceParameter", "FixedParameter", "FloatParameter",
    "IntParameter", "Linear", "Log", "Parameter", "ReverseLog", "Scale", "SearchSpace",
    "SpecError", "sample",
]
