"""Search spaces: the YAML format, the scales, sampling and validation.

- ``space``: a search space, its parameters, checked at load (SearchSpace); each
  parameter maps its values to [0, 1] and back, and says whether it ``contains`` a value.
- ``scales``: linear, log and reverse_log, each mapping values to [0, 1] and back.
- ``sampling``: random, quasi-random and grid points in unit space.
- ``yamlio``: reading caviar's YAML files (1e-4 is a number).
- ``errors``: caviar's base error (CaviarError, carrying its exit code) and the one
  bad-input error for files (SpecError), whose message names the file, the key and the
  rule.
"""

from searchspaces.errors import CaviarError, SpecError
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
    "SCALES", "CaviarError", "ChoiceParameter", "FixedParameter", "FloatParameter",
    "IntParameter", "Linear", "Log", "Parameter", "ReverseLog", "Scale", "SearchSpace",
    "SpecError",
]
