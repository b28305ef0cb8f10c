"""Sampling: each scale's distribution, ints inclusive, grid vs random, round trips, shipped
spaces."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

import searchspaces
from models.config import RULES, split_config
from orchestrator.strategies import sample
from searchspaces import SearchSpace
from searchspaces.sampling import grid_points_per_parameter

SPACES = Path(searchspaces.__file__).resolve().parent
SHIPPED = ["course.yaml", "adam.yaml", "lr_vs_eps.yaml"]
N = 12_000
SEED = 20240607


def one(name: str, spec: dict) -> SearchSpace:
    return SearchSpace.from_dict({"parameters": {name: spec}})


def decade_counts(values, lowest: int, highest: int) -> list[int]:
    """How many values fall in each decade [10**k, 10**(k+1)), k = lowest..highest.

    The top bound itself (10**(highest+1)) is counted in the top decade.
    """
    ks = np.clip(np.floor(np.log10(np.asarray(values, dtype=float))), lowest, highest)
    counts = Counter(ks.astype(int).tolist())
    return [counts.get(k, 0) for k in range(lowest, highest + 1)]


# --- each scale's distribution (chi-square, through the whole sample() path) ----------

@pytest.mark.parametrize("strategy", ["random", "quasi_random"])
def test_log_scale_puts_equal_mass_in_each_decade(strategy):
    space = one("lr", {"scale": "log", "low": 1e-4, "high": 1.0})
    lrs = [c["lr"] for c in sample(space, strategy, N, SEED)]
    assert min(lrs) >= 1e-4 and max(lrs) <= 1.0
    counts = decade_counts(lrs, -4, -1)
    assert sum(counts) == N
    assert chisquare(counts).pvalue > 1e-3, counts


def test_reverse_log_scale_puts_equal_mass_in_each_decade_of_one_minus_beta():
    space = one("momentum", {"scale": "reverse_log", "low": 0.9, "high": 0.999})
    betas = [c["momentum"] for c in sample(space, "random", N, SEED)]
    assert min(betas) >= 0.9 and max(betas) <= 0.999
    counts = decade_counts([1.0 - b for b in betas], -3, -2)  # 1-beta in [1e-3, 1e-1]
    assert chisquare(counts).pvalue > 1e-3, counts
    # Half the trials have beta above 0.99: a linear scale would put only ~9% there.
    assert sum(b > 0.99 for b in betas) / N == pytest.approx(0.5, abs=0.02)


def test_linear_scale_does_not_put_equal_mass_in_each_decade():
    # The control: the same test on a linear scale must fail, so the tests above can.
    space = one("lr", {"scale": "linear", "low": 1e-4, "high": 1.0})
    counts = decade_counts([c["lr"] for c in sample(space, "random", N, SEED)], -4, -1)
    assert chisquare(counts).pvalue < 1e-100, counts
    assert counts[-1] > 0.85 * N  # ~90% of a linear sample lies in [0.1, 1]


def test_linear_scale_is_uniform():
    space = one("x", {"scale": "linear", "low": -1.0, "high": 3.0})
    xs = np.array([c["x"] for c in sample(space, "random", N, SEED)])
    counts = np.histogram(xs, bins=8, range=(-1.0, 3.0))[0]
    assert chisquare(counts).pvalue > 1e-3, counts


def test_every_tuned_dimension_of_a_space_is_on_its_own_scale():
    space = SearchSpace.from_file(SPACES / "lr_vs_eps.yaml", RULES)
    configs = sample(space, "random", N, SEED)
    assert chisquare(decade_counts([c["lr"] for c in configs], -4, -1)).pvalue > 1e-3
    assert chisquare(decade_counts([c["eps"] for c in configs], -10, -7)).pvalue > 1e-3
    assert {c["optimizer"] for c in configs} == {"adam"}


# --- ints are inclusive of both bounds --------------------------------------------------

def test_linear_int_is_inclusive_with_equal_counts():
    space = one("layers", {"scale": "linear", "type": "int", "low": 2, "high": 4})
    layers = [c["layers"] for c in sample(space, "random", 9_000, SEED)]
    counts = Counter(layers)
    assert set(counts) == {2, 3, 4}
    assert all(type(v) is int for v in layers)
    assert chisquare([counts[2], counts[3], counts[4]]).pvalue > 1e-3, counts


def test_log_int_is_inclusive_and_log_uniform():
    # Each integer k owns [k - 0.5, k + 0.5] of a log scale over [0.5, 8.5].
    space = one("n", {"scale": "log", "type": "int", "low": 1, "high": 8})
    ns = [c["n"] for c in sample(space, "random", N, SEED)]
    counts = Counter(ns)
    assert set(counts) == set(range(1, 9))
    width = math.log(8.5) - math.log(0.5)
    expected = [N * (math.log(k + 0.5) - math.log(k - 0.5)) / width for k in range(1, 9)]
    observed = [counts[k] for k in range(1, 9)]
    assert chisquare(observed, expected).pvalue > 1e-3, observed


def test_choice_is_uniform():
    space = one("batch_size", {"choice": [32, 64, 128, 256, 512]})
    counts = Counter(c["batch_size"] for c in sample(space, "random", 10_000, SEED))
    assert set(counts) == {32, 64, 128, 256, 512}
    assert chisquare(list(counts.values())).pvalue > 1e-3, counts


# --- the course's grid-versus-random example -------------------------------------------

@pytest.fixture(scope="module")
def lr_vs_eps() -> SearchSpace:
    return SearchSpace.from_file(SPACES / "lr_vs_eps.yaml", RULES)


def test_grid_of_25_tries_only_5_learning_rates(lr_vs_eps):
    configs = sample(lr_vs_eps, "grid", 25, seed=0)
    assert len(configs) == 25
    assert len({(c["lr"], c["eps"]) for c in configs}) == 25
    lrs = sorted({c["lr"] for c in configs})
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-9)
    assert sorted({c["eps"] for c in configs}) == pytest.approx(
        [1e-10, 1e-9, 1e-8, 1e-7, 1e-6], rel=1e-9)
    assert all(c["optimizer"] == "adam" for c in configs)


def test_random_25_tries_25_learning_rates(lr_vs_eps):
    configs = sample(lr_vs_eps, "random", 25, seed=0)
    assert len(configs) == 25
    assert len({c["lr"] for c in configs}) == 25
    assert len({c["eps"] for c in configs}) == 25
    assert all(1e-4 <= c["lr"] <= 1.0 and 1e-10 <= c["eps"] <= 1e-6 for c in configs)
    assert all(c["optimizer"] == "adam" for c in configs)


def test_quasi_random_25_tries_25_learning_rates_and_is_reproducible(lr_vs_eps):
    configs = sample(lr_vs_eps, "quasi_random", 25, seed=7)
    assert len(configs) == 25
    assert len({c["lr"] for c in configs}) == 25
    assert len({c["eps"] for c in configs}) == 25
    assert sample(lr_vs_eps, "quasi_random", 25, seed=7) == configs
    assert sample(lr_vs_eps, "quasi_random", 25, seed=8) != configs


def test_quasi_random_covers_the_decades_more_evenly_than_random(lr_vs_eps):
    # 25 Halton points over 4 decades: 6 or 7 per decade, never the clumps of random.
    counts = decade_counts([c["lr"] for c in sample(lr_vs_eps, "quasi_random", 25, 7)], -4, -1)
    assert max(counts) - min(counts) <= 2, counts


def test_random_is_reproducible_for_a_seed_and_differs_for_another(lr_vs_eps):
    a = sample(lr_vs_eps, "random", 25, seed=3)
    assert sample(lr_vs_eps, "random", 25, seed=3) == a
    b = sample(lr_vs_eps, "random", 25, seed=4)
    assert b != a
    assert not {c["lr"] for c in a} & {c["lr"] for c in b}


def test_grid_ignores_the_seed(lr_vs_eps):
    assert sample(lr_vs_eps, "grid", 25, seed=1) == sample(lr_vs_eps, "grid", 25, seed=2)


@pytest.mark.parametrize("kind", ["tpe", "coarse_to_fine", "annealing"])
def test_a_strategy_that_cannot_sample_ahead_of_results_is_refused(lr_vs_eps, kind):
    with pytest.raises(ValueError, match=f"strategy '{kind}' cannot sample ahead of results"):
        sample(lr_vs_eps, kind, 5, 0)


# --- grid: k = round(N ** (1/d)) points per tuned parameter ----------------------------

@pytest.mark.parametrize(
    ("n", "d", "k"),
    [(25, 2, 5), (27, 3, 3), (10, 1, 10), (100, 2, 10), (125, 3, 5), (64, 3, 4),
     (1000, 3, 10), (12, 2, 3), (6, 2, 2), (1, 3, 1), (2, 4, 1), (7, 0, 1)],
)
def test_grid_points_per_parameter(n, d, k):
    assert grid_points_per_parameter(n, d) == k


@pytest.mark.parametrize(("n", "k"), [(8, 2), (27, 3), (64, 4)])
def test_grid_has_k_to_the_d_points(n, k):
    space = SearchSpace.from_dict({"parameters": {
        "a": {"scale": "linear", "low": 0.0, "high": 1.0},
        "b": {"scale": "log", "low": 1e-3, "high": 1.0},
        "c": {"scale": "reverse_log", "low": 0.9, "high": 0.999},
    }})
    configs = sample(space, "grid", n, 0)
    assert len(configs) == k**3
    assert sorted({c["a"] for c in configs}) == pytest.approx(list(np.linspace(0, 1, k)))


def test_grid_over_an_int_range_narrower_than_k_dedupes():
    space = SearchSpace.from_dict({"parameters": {
        "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
        "layers": {"scale": "linear", "type": "int", "low": 2, "high": 4},
    }})
    configs = sample(space, "grid", 25, 0)  # k = 5, but layers has only 3 values
    assert sorted(Counter(c["layers"] for c in configs).items()) == [(2, 5), (3, 5), (4, 5)]
    assert len(configs) == 15
    assert len({(c["lr"], c["layers"]) for c in configs}) == 15


def test_grid_over_a_choice_shorter_than_k_dedupes():
    space = SearchSpace.from_dict({"parameters": {
        "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
        "batch_size": {"choice": [32, 64]},
    }})
    configs = sample(space, "grid", 25, 0)
    assert len(configs) == 10
    assert {c["batch_size"] for c in configs} == {32, 64}


def test_grid_with_one_point_per_parameter_takes_the_centre():
    space = one("lr", {"scale": "log", "low": 1e-4, "high": 1.0})
    space2 = SearchSpace.from_dict({"parameters": {
        "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
        "eps": {"scale": "log", "low": 1e-10, "high": 1e-6},
    }})
    assert [c["lr"] for c in sample(space, "grid", 1, 0)] == pytest.approx([1e-2])
    assert sample(space2, "grid", 2, 0) == [pytest.approx({"lr": 1e-2, "eps": 1e-8})]


@pytest.mark.parametrize("strategy", ["random", "quasi_random", "grid"])
def test_a_space_with_only_fixed_parameters_samples_the_fixed_values(strategy):
    space = SearchSpace.from_dict({"parameters": {"optimizer": {"fixed": "adam"}}})
    configs = sample(space, strategy, 3, 0)
    assert configs and all(c == {"optimizer": "adam"} for c in configs)


# --- round trips to and from a plain dict ----------------------------------------------

# What a user writes, and what to_dict() gives back: side by side.
EXAMPLES = [
    (
        {"parameters": {"lr": {"scale": "log", "low": 1e-4, "high": 1, "priority": 1}}},
        {"parameters": {"lr": {"scale": "log", "low": 1e-4, "high": 1.0, "priority": 1}}},
    ),
    (
        {"parameters": {"x": {"low": 0, "high": 2}}},  # scale defaults to linear, type to float
        {"parameters": {"x": {"scale": "linear", "low": 0.0, "high": 2.0}}},
    ),
    (
        {"parameters": {
            "momentum": {"scale": "reverse_log", "low": 0.9, "high": 0.999, "default": 0.9},
            "layers": {"scale": "linear", "type": "int", "low": 2.0, "high": 4, "default": 3},
            "width": {"scale": "log", "type": "int", "low": 16, "high": 1024, "priority": 2},
            "batch_size": {"choice": [32, 64, 128], "priority": 2, "default": 64},
            "optimizer": {"fixed": "momentum"},
            "beta2": {"fixed": 0.999, "priority": 4},
        }},
        {"parameters": {
            "momentum": {"scale": "reverse_log", "low": 0.9, "high": 0.999, "default": 0.9},
            "layers": {"scale": "linear", "type": "int", "low": 2, "high": 4, "default": 3},
            "width": {"scale": "log", "type": "int", "low": 16, "high": 1024, "priority": 2},
            "batch_size": {"choice": [32, 64, 128], "priority": 2, "default": 64},
            "optimizer": {"fixed": "momentum"},
            "beta2": {"fixed": 0.999, "priority": 4},
        }},
    ),
    (
        {"description": "kept: it says what the space is for", "parameters": {
            "activation": {"choice": ["relu", "tanh"]}, "batch_norm": {"fixed": True}}},
        {"parameters": {"activation": {"choice": ["relu", "tanh"]}, "batch_norm": {"fixed": True}},
         "description": "kept: it says what the space is for"},
    ),
]


@pytest.mark.parametrize(("written", "serialised"), EXAMPLES)
def test_examples_serialise_as_shown_and_round_trip(written, serialised):
    space = SearchSpace.from_dict(written)
    d = space.to_dict()
    assert d == serialised
    assert SearchSpace.from_dict(d).to_dict() == d
    again = SearchSpace.from_dict(d)
    assert again.names == space.names
    assert [type(p) for p in again.parameters] == [type(p) for p in space.parameters]


def test_serialised_types_are_plain():
    d = SearchSpace.from_dict(EXAMPLES[2][0]).to_dict()["parameters"]
    assert type(d["layers"]["low"]) is int and type(d["layers"]["high"]) is int
    assert type(d["layers"]["default"]) is int
    assert type(d["momentum"]["low"]) is float
    assert d["batch_size"]["choice"] == [32, 64, 128]
    assert isinstance(d["batch_size"]["choice"], list)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_round_trip(name):
    space = SearchSpace.from_file(SPACES / name, RULES)
    d = space.to_dict()
    again = SearchSpace.from_dict(d, rules=RULES)
    assert again.to_dict() == d
    assert again.names == space.names
    # And sampling the round-tripped space gives the same configs.
    assert sample(again, "random", 20, 1) == sample(space, "random", 20, 1)


# --- the shipped spaces -----------------------------------------------------------------

def priorities(space: SearchSpace) -> dict:
    return {p.name: p.priority for p in space.parameters}


def test_course_space_has_the_course_priorities():
    space = SearchSpace.from_file(SPACES / "course.yaml", RULES)
    assert priorities(space) == {
        "lr": 1, "momentum": 2, "hidden_units": 2, "batch_size": 2,
        "layers": 3, "lr_decay": 3, "optimizer": None,
    }
    assert space.fixed == {"optimizer": "momentum"}
    assert space["lr"].scale.name == "log"
    assert space["momentum"].scale.name == "reverse_log"
    assert space["hidden_units"].to_dict()["type"] == "int"
    assert space["layers"].to_dict() == {
        "scale": "linear", "type": "int", "low": 2, "high": 4, "priority": 3, "default": 2}


def test_adam_space_fixes_beta1_beta2_eps_at_the_course_defaults():
    space = SearchSpace.from_file(SPACES / "adam.yaml", RULES)
    assert space["lr"].priority == 1
    assert space.fixed == {"optimizer": "adam", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    for name in ("beta1", "beta2", "eps"):
        assert space[name].priority == 4
        assert not space[name].is_tuned
    assert [p.name for p in space.tuned] == ["lr", "hidden_units", "batch_size"]


def test_lr_vs_eps_space(lr_vs_eps):
    assert priorities(lr_vs_eps) == {"lr": 1, "eps": 4, "optimizer": None}
    assert [p.name for p in lr_vs_eps.tuned] == ["lr", "eps"]


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("strategy", ["random", "quasi_random", "grid"])
def test_the_model_accepts_every_config_sampled_from_a_shipped_space(name, strategy):
    space = SearchSpace.from_file(SPACES / name, RULES)
    configs = sample(space, strategy, 50, 0)
    assert configs
    for config in configs:
        model_config, hparams = split_config(config)  # raises on a value the model refuses
        assert hparams.lr > 0 and model_config.layers >= 1
