"""Whether a value lies inside the space (``Parameter.contains``): inside a range (whole
numbers for an int), one of the choices, the fixed value; never an error for a value of
another type."""

from __future__ import annotations

import math

import pytest

from searchspaces import SearchSpace

SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
    "momentum": {"scale": "reverse_log", "low": 0.9, "high": 0.999},
    "layers": {"scale": "linear", "type": "int", "low": 2, "high": 4},
    "batch_size": {"choice": [32, 64, 128]},
    "activation": {"choice": ["relu", "tanh"]},
    "optimizer": {"fixed": "adam"},
}})

INSIDE = [("lr", 1e-4), ("lr", 1.0), ("lr", 0.01), ("lr", 1), ("momentum", 0.9),
          ("momentum", 0.999), ("layers", 2), ("layers", 4), ("layers", 3.0),
          ("batch_size", 64), ("activation", "tanh"), ("optimizer", "adam")]
OUTSIDE = [("lr", 9e-5), ("lr", 1.5), ("lr", math.nan), ("lr", math.inf), ("lr", "0.01"),
           ("lr", True), ("lr", None), ("momentum", 0.9999), ("layers", 1), ("layers", 5),
           ("layers", 2.5), ("layers", math.inf), ("batch_size", 48), ("batch_size", "64"),
           ("activation", "gelu"), ("activation", [1]), ("optimizer", "sgd")]


@pytest.mark.parametrize(("name", "value"), INSIDE, ids=repr)
def test_a_value_inside_the_space_is_contained(name, value):
    assert SPACE[name].contains(value) is True


@pytest.mark.parametrize(("name", "value"), OUTSIDE, ids=repr)
def test_a_value_outside_the_space_or_of_another_type_is_not(name, value):
    assert SPACE[name].contains(value) is False


def test_every_value_the_space_gives_is_contained():
    for u in (0.0, 0.25, 0.5, 0.999, 1.0):
        config = SPACE.config_from_unit([u] * len(SPACE.tuned))
        assert all(SPACE[name].contains(v) for name, v in config.items()), config
