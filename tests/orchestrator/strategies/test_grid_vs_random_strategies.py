"""The course's grid-versus-random example, through the strategies a sweep uses.

searchspaces/lr_vs_eps.yaml: the learning rate matters, Adam's epsilon barely
does. A 5 x 5 grid spends 25 trials on only 5 learning rates; 25 random (or
quasi-random) trials try 25.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ray.tune.search import Searcher

import searchspaces
from models.config import RULES
from orchestrator.strategies import ROUND_KEY, SAMPLED, SEED_KEY, make_strategy, sample
from orchestrator.trial_protocol import hyperparameters
from searchspaces import SearchSpace

SPACE_FILE = Path(searchspaces.__file__).resolve().parent / "lr_vs_eps.yaml"
METRIC = "val_loss"


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_file(SPACE_FILE, RULES)


def run(strategy) -> list[dict]:
    """Every configuration the strategy suggests, each trial ended before the next."""
    configs = []
    for i in range(1000):
        trial_id = f"trial_{i:03d}"
        config = strategy.suggest(trial_id)
        if config == Searcher.FINISHED:
            return configs
        assert isinstance(config, dict), config
        loss = (math.log10(config["lr"]) + 2.5) ** 2  # only lr matters
        strategy.on_trial_result(trial_id, {METRIC: loss, "training_iteration": 1})
        strategy.on_trial_complete(trial_id, {METRIC: loss})
        configs.append(config)
    raise AssertionError("never finished")


def test_the_space_is_lr_and_eps_with_adam_fixed(space):
    assert [p.name for p in space.tuned] == ["lr", "eps"]
    assert space.fixed == {"optimizer": "adam"}


def test_a_5_by_5_grid_tries_only_5_learning_rates(space):
    configs = run(make_strategy({"kind": "grid", "points": 5}, space, METRIC, "min", 0))
    assert len(configs) == 25
    lrs = sorted({c["lr"] for c in configs})
    assert len(lrs) == 5
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-9)
    assert len({c["eps"] for c in configs}) == 5
    assert len({(c["lr"], c["eps"]) for c in configs}) == 25  # every pair once
    assert all(c["optimizer"] == "adam" and c[ROUND_KEY] == 0 for c in configs)


@pytest.mark.parametrize("kind", ["random", "quasi_random"])
def test_25_random_trials_try_25_learning_rates(space, kind):
    configs = run(make_strategy({"kind": kind, "trials": 25}, space, METRIC, "min", 0))
    assert len(configs) == 25
    assert len({c["lr"] for c in configs}) == 25
    assert len({c["eps"] for c in configs}) == 25
    assert all(1e-4 <= c["lr"] <= 1.0 and 1e-10 <= c["eps"] <= 1e-6 for c in configs)
    assert all(c["optimizer"] == "adam" for c in configs)
    assert len({c[SEED_KEY] for c in configs}) == 25


@pytest.mark.parametrize("kind", ["random", "quasi_random"])
def test_random_finds_a_better_lr_than_the_grid(space, kind):
    """The point of the example: with the same 25 trials, the grid's best lr is a decade step
    away from 10**-2.5, while random search lands closer."""
    def best_distance(configs):
        return min(abs(math.log10(c["lr"]) + 2.5) for c in configs)

    grid = run(make_strategy({"kind": "grid", "points": 5}, space, METRIC, "min", 0))
    rand = run(make_strategy({"kind": kind, "trials": 25}, space, METRIC, "min", 0))
    assert best_distance(grid) == pytest.approx(0.5)
    assert best_distance(rand) < best_distance(grid)


def test_quasi_random_covers_each_lr_decade_evenly(space):
    """Halton: 25 points over the 4 decades of lr, 6 or 7 in each (random may leave gaps)."""
    configs = run(make_strategy({"kind": "quasi_random", "trials": 25}, space, METRIC, "min", 0))
    counts = [sum(10.0 ** k <= c["lr"] < 10.0 ** (k + 1) for c in configs) for k in range(-4, 0)]
    assert sum(counts) == 25
    assert sorted(counts) == [6, 6, 6, 7], counts


@pytest.mark.parametrize(("section", "n"), [
    ({"kind": "random", "trials": 25}, 25), ({"kind": "quasi_random", "trials": 25}, 25),
    ({"kind": "grid", "points": 5}, 25), ({"kind": "grid", "points": 3}, 10)])
def test_caviar_sample_prints_what_a_sweep_with_the_strategy_tries(space, section, n):
    """``caviar sample`` draws through the registry's strategies: the configurations of a
    sweep of ``n`` trials (grid: k = round(n ** (1/d)) points per parameter)."""
    tried = run(make_strategy(section, space, METRIC, "min", 4))
    assert sample(space, section["kind"], n, 4) == [hyperparameters(c) for c in tried]
    assert SAMPLED == ("random", "quasi_random", "grid")
