"""Search spaces: the YAML format, the scales, sampling and validation.

- ``space``: a search space, its parameters, checked at load (SearchSpace).
- ``scales``: linear, log and reverse_log, each mapping values to [0, 1] and back.
- ``sampling``: random, quasi-random and grid points in unit space.
- ``trial``: the bookkeeping keys a search adds to a trial's configuration.
- ``yamlio``: reading caviar's YAML files (1e-4 is a number).
- ``errors`` and ``fields``: caviar's base error (CaviarError, carrying its exit code),
  the one bad-input error for files (SpecError) and the checks every caviar file's fields
  go through, so each message names the file, the key and the rule.
"""

from searchspaces.errors import CaviarError, SpecError
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
    "SCALES", "STRATEGIES", "CaviarError", "ChoiceParameter", "FixedParameter", "FloatParameter",
    "IntParameter", "Linear", "Log", "Parameter", "ReverseLog", "Scale", "SearchSpace",
    "SpecError", "sample",
]
