"""The trial schedulers a sweep file names (orchestrator/sweep/schedulers.py).

make_scheduler builds Ray Tune's FIFO, ASHA or PBT scheduler from a parsed sweep;
clip brings the values PBT multiplied by 0.8 or 1.2 back inside the declared
space; population_space hands PBT's initial population (the strategy's first
points) to Tune as a grid over members, resolved here as Tune resolves it.
"""

from __future__ import annotations

import json

import pytest
from conftest import sweep_dict
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.tune.schedulers.pbt import _explore
from ray.tune.search import Searcher
from ray.tune.search.sample import Function
from ray.tune.search.variant_generator import generate_variants

from orchestrator.strategies import make_strategy
from orchestrator.sweep.schedulers import (
    MEMBER_KEY,
    clip,
    decision_epochs,
    make_scheduler,
    population_space,
)
from orchestrator.sweep.spec import parse_sweep

SPACE = {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
         "momentum": {"scale": "reverse_log", "low": 0.9, "high": 0.999},
         "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 64},
         "batch_size": {"choice": [32, 64, 128]},
         "activation": {"choice": ["relu", "tanh"]},
         "optimizer": {"fixed": "momentum"}}


def spec_of(**overrides):
    return parse_sweep(sweep_dict(**{"space": SPACE, **overrides}), "sweep.yaml")


def pbt_spec(**scheduler):
    return spec_of(scheduler={"kind": "pbt", **scheduler})


def test_no_scheduler_section_gives_fifo():
    s = make_scheduler(spec_of())
    assert type(s) is FIFOScheduler  # not one of its subclasses (ASHA is one)


def test_fifo_gives_fifo():
    assert type(make_scheduler(spec_of(scheduler={"kind": "fifo"}))) is FIFOScheduler


@pytest.mark.parametrize("section, epochs, grace, factor", [
    ({"kind": "asha"}, 4, 1, 3),  # the spec's defaults
    ({"kind": "asha", "grace_epochs": 2, "reduction_factor": 2}, 8, 2, 2),
    ({"kind": "asha", "grace_epochs": 3, "reduction_factor": 4}, 20, 3, 4),
])
def test_asha_gets_grace_period_reduction_factor_and_max_t_from_the_sweep(section, epochs,
                                                                         grace, factor):
    s = make_scheduler(spec_of(scheduler=section, epochs=epochs))
    assert isinstance(s, ASHAScheduler)
    assert s._max_t == epochs and s._reduction_factor == factor
    assert s._time_attr == "epoch"  # a report of short epochs carries several
    (bracket,) = s._brackets
    # the first rung is at the grace period, each next one reduction_factor times later
    milestones = sorted(r[0] for r in bracket._rungs)
    assert milestones[0] == grace
    assert milestones == [grace * factor ** k for k in range(len(milestones))]
    assert milestones[-1] <= epochs
    # every trial reports at each rung (the last epoch it reports anyway)
    assert decision_epochs(spec_of(scheduler=section, epochs=epochs)) == \
        [m for m in milestones if m < epochs]


@pytest.mark.parametrize("section", [None, {"kind": "fifo"},
                                     {"kind": "pbt", "hyperparameters": ["lr"]}])
def test_only_asha_has_epochs_a_trial_must_report(section):
    spec = spec_of(epochs=9, **({"scheduler": section} if section else {}))
    assert decision_epochs(spec) == []


def test_pbt_gets_its_interval_quantile_and_hyperparameters_from_the_sweep():
    s = make_scheduler(pbt_spec(perturbation_interval=3, quantile_fraction=0.5,
                                hyperparameters=["lr", "hidden_units"]))
    assert isinstance(s, PopulationBasedTraining)
    assert s._perturbation_interval == 3 and s._quantile_fraction == 0.5
    assert s._time_attr == "training_iteration" and s._synch is False
    assert sorted(s._hyperparam_mutations) == ["hidden_units", "lr"]
    assert s._custom_explore_fn is not None


def test_pbt_perturbs_lr_and_momentum_by_default():
    s = make_scheduler(pbt_spec())
    assert sorted(s._hyperparam_mutations) == ["lr", "momentum"]
    assert s._perturbation_interval == 2 and s._quantile_fraction == 0.25


def test_pbt_resamples_inside_the_declared_space():
    s = make_scheduler(pbt_spec(hyperparameters=["lr", "momentum", "hidden_units",
                                                 "batch_size"]))
    mutations = s._hyperparam_mutations
    # a choice is a list: Ray shifts along it (or draws from it), never multiplies it
    assert mutations["batch_size"] == [32, 64, 128]
    draws = {name: [mutations[name]() for _ in range(200)]
             for name in ("lr", "momentum", "hidden_units")}
    assert all(1e-3 <= v <= 0.3 for v in draws["lr"])
    assert all(0.9 <= v <= 0.999 for v in draws["momentum"])
    assert all(isinstance(v, int) and 16 <= v <= 64 for v in draws["hidden_units"])
    assert len(set(draws["lr"])) == 200  # fresh draws, not one value over and over
    # on a log scale: about as many draws below the geometric middle as above it
    assert 60 <= sum(v < (1e-3 * 0.3) ** 0.5 for v in draws["lr"]) <= 140


# -- clip -------------------------------------------------------------------------------

NAMES = ("lr", "momentum", "hidden_units")


@pytest.mark.parametrize("name, value, expected", [
    ("lr", 0.3 * 1.2, 0.3),
    ("lr", 1e-3 * 0.8, 1e-3),
    ("momentum", 0.99 * 1.2, 0.999),  # 1.188 is not a momentum
    ("momentum", 0.999 * 1.2, 0.999),
    ("momentum", 0.9 * 0.8, 0.9),
    ("hidden_units", 77, 64),
    ("hidden_units", 13, 16),
    ("hidden_units", 76.8, 64),
])
def test_clip_brings_a_value_outside_the_range_back_to_its_edge(name, value, expected):
    space = spec_of().space
    config = {"lr": 0.01, "momentum": 0.95, "hidden_units": 32, name: value}
    out = clip(space, NAMES, config)
    assert out is config  # PBT's explore function returns the config it was given
    assert out[name] == pytest.approx(expected, rel=1e-12)
    assert space[name].scale.low <= out[name] <= space[name].scale.high
    if name == "hidden_units":
        assert isinstance(out[name], int)


@pytest.mark.parametrize("name, value", [
    ("lr", 0.01 * 1.2), ("lr", 0.25 * 0.8), ("momentum", 0.95), ("momentum", 0.92 * 1.05),
    ("hidden_units", 40),
])
def test_clip_leaves_a_value_inside_the_range_as_it_is(name, value):
    config = {"lr": 0.01, "momentum": 0.95, "hidden_units": 32, name: value}
    out = clip(spec_of().space, NAMES, dict(config))
    assert out == pytest.approx(config, rel=1e-9)


def test_clip_touches_only_the_perturbed_parameters():
    config = {"lr": 5.0, "momentum": 1.5, "hidden_units": 500, "optimizer": "momentum"}
    out = clip(spec_of().space, ["momentum"], dict(config))
    assert out == {**config, "momentum": pytest.approx(0.999)}


@pytest.mark.parametrize("factor, at", [(1.2, "high"), (0.8, "low")])
def test_pbts_explore_step_keeps_every_value_inside_the_space(factor, at):
    # Tune's own explore step (what PBT runs on a trial it exploits), never resampling,
    # from a config at the space's edge: the multiplied values are clipped back
    spec = pbt_spec(hyperparameters=list(NAMES))
    s = make_scheduler(spec)
    edge = {n: getattr(spec.space[n].scale, at) for n in NAMES}
    edge["hidden_units"] = int(edge["hidden_units"])
    config = {**edge, "optimizer": "momentum", "_round": 0, "_seed": 7}
    new, ops = _explore(config, s._hyperparam_mutations, 0.0, (factor,), s._custom_explore_fn)
    assert ops == {n: f"* {factor}" for n in NAMES}
    assert new == {**config, "lr": pytest.approx(edge["lr"]),
                   "momentum": pytest.approx(edge["momentum"])}
    assert isinstance(new["hidden_units"], int)


@pytest.mark.parametrize("name, value", [("batch_size", 64), ("activation", "tanh")])
def test_pbts_explore_step_keeps_a_perturbed_choice_among_its_values(name, value):
    # the sweep file may name a choice parameter for PBT to perturb (the spec accepts any
    # tuned parameter): the value after the explore step must still be one of the choices
    spec = pbt_spec(hyperparameters=["lr", name])
    s = make_scheduler(spec)
    config = {"lr": 0.01, "momentum": 0.95, "hidden_units": 32, "batch_size": 64,
              "activation": "relu", name: value}
    for factor in (0.8, 1.2):
        new, _ = _explore(config, s._hyperparam_mutations, 0.0, (factor,),
                          s._custom_explore_fn)
        assert new[name] in spec.space[name].values


# -- population_space -------------------------------------------------------------------


def test_population_space_is_a_grid_over_the_strategys_first_points(tmp_path):
    spec = pbt_spec()
    state = tmp_path / "strategy.json"
    strategy = make_strategy(spec.strategy, spec.space, "val_loss", "min", seed=3,
                             state_file=state)
    assert strategy.budget == 4
    space = population_space(strategy)
    assert space[MEMBER_KEY] == tune.grid_search([0, 1, 2, 3])
    assert sorted(space) == sorted([MEMBER_KEY, "lr", "momentum", "hidden_units", "batch_size",
                                    "activation", "optimizer", "_round", "_seed"])
    assert all(isinstance(space[k], Function) for k in space if k != MEMBER_KEY)
    # the strategy handed out its whole budget and wrote its state
    assert strategy.suggest("one_more") == Searcher.FINISHED
    written = json.loads(state.read_text())
    assert written["strategy"] == strategy.kind and "trials" not in written  # size: O(rounds)
    assert written["rounds"][0]["trials"] == 4
    # resolved as Tune resolves a param_space: one trial per member, with that member's config
    same = make_strategy(spec.strategy, spec.space, "val_loss", "min", seed=3)
    expected = [same.suggest(f"x{i}") for i in range(4)]
    assert len({json.dumps(c, sort_keys=True) for c in expected}) == 4  # four distinct points
    resolved = [variant["config"] for _, variant in generate_variants({"config": space})]
    assert sorted(c[MEMBER_KEY] for c in resolved) == [0, 1, 2, 3]
    for config in resolved:
        member = config.pop(MEMBER_KEY)
        assert config == expected[member]
        assert config == {**strategy.trials[f"member_{member}"].config,
                          "_round": 0, "_seed": config["_seed"]}


def test_population_space_follows_the_strategys_seed():
    spec = pbt_spec()
    spaces = [population_space(make_strategy(spec.strategy, spec.space, "val_loss", "min",
                                             seed=seed)) for seed in (0, 0, 1)]
    configs = [[v["config"] for _, v in generate_variants({"config": sp})] for sp in spaces]
    assert configs[0] == configs[1]
    assert [c["lr"] for c in configs[0]] != [c["lr"] for c in configs[2]]
