"""The strategy registry and each kind's sweep-file keys (orchestrator/strategies/__init__.py and
_settings.py): KINDS, parse_strategy's defaults and rules, budget, to_dict, make_strategy."""

from __future__ import annotations

import dataclasses
import re

import pytest

from orchestrator.strategies import (
    DEFAULT_KIND,
    KINDS,
    CoarseToFineStrategy,
    GridStrategy,
    QuasiRandomStrategy,
    RandomStrategy,
    TpeStrategy,
    budget,
    make_strategy,
    parse_strategy,
    to_dict,
)
from orchestrator.strategies._settings import keys
from searchspaces import SearchSpace, SpecError

SOURCE = "sweep.yaml"
SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-5, "high": 1.0},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9999},
    "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 64},
    "batch_size": {"choice": [32, 64, 128]},
}})
TUNED = "lr, momentum, hidden_units, batch_size"


def parse(section: dict):
    return parse_strategy(section, SOURCE, SPACE)


def test_kinds_are_registered_in_order():
    assert list(KINDS) == ["random", "quasi_random", "grid", "tpe", "coarse_to_fine"]
    assert KINDS == {"random": RandomStrategy, "quasi_random": QuasiRandomStrategy,
                     "grid": GridStrategy, "tpe": TpeStrategy,
                     "coarse_to_fine": CoarseToFineStrategy}
    for kind, cls in KINDS.items():
        assert cls.kind == kind


def test_the_default_kind_is_coarse_to_fine():
    assert DEFAULT_KIND == "coarse_to_fine"
    assert parse({}) == parse({"kind": "coarse_to_fine"})


# --- defaults --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["random", "quasi_random", "tpe"])
def test_trial_budget_kinds_default_to_48_trials(kind):
    settings = parse({"kind": kind})
    assert dataclasses.asdict(settings) == {"kind": kind, "trials": 48}
    assert keys(type(settings)) == ("kind", "trials")


def test_grid_defaults_to_5_points_per_parameter():
    settings = parse({"kind": "grid"})
    assert dataclasses.asdict(settings) == {"kind": "grid", "points": 5}
    assert keys(type(settings)) == ("kind", "points")


def test_coarse_to_fine_defaults():
    settings = parse({"kind": "coarse_to_fine"})
    assert dataclasses.asdict(settings) == {
        "kind": "coarse_to_fine", "rounds": 3, "trials_per_round": 16, "keep": 0.25,
        "margin": 0.1, "sampler": "quasi_random", "start": None, "width": 0.25,
        "pick": "ratio", "candidates": 8, "bound_share": 0.5, "zoom_after": 0.75}
    assert keys(type(settings)) == ("kind", "rounds", "trials_per_round", "keep", "margin",
                                    "sampler", "start", "width", "pick", "candidates",
                                    "bound_share", "zoom_after")


def test_given_values_replace_the_defaults():
    settings = parse({"kind": "coarse_to_fine", "rounds": 2, "keep": 0.5,
                      "sampler": "quasi_random"})
    assert (settings.rounds, settings.trials_per_round, settings.keep, settings.sampler) == (
        2, 16, 0.5, "quasi_random")
    assert parse({"kind": "tpe", "trials": 7}).trials == 7


def test_checked_numbers_come_back_as_floats():
    settings = parse({"kind": "coarse_to_fine", "keep": 1, "margin": 0, "width": 1})
    assert (settings.keep, settings.margin, settings.width) == (1.0, 0.0, 1.0)
    assert all(isinstance(v, float) for v in (settings.keep, settings.margin, settings.width))


@pytest.mark.parametrize("kind", list(KINDS))
def test_settings_are_frozen(kind):
    settings = parse({"kind": kind})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.kind = "other"


def test_a_warm_start_fills_the_missing_parameters_with_the_space_centre():
    settings = parse({"kind": "coarse_to_fine", "start": {"lr": 0.01, "batch_size": 128}})
    centre = SPACE.centre()
    assert settings.start == {"lr": 0.01, "momentum": centre["momentum"],
                              "hidden_units": centre["hidden_units"], "batch_size": 128}


# --- budget ----------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "expected"), [
    ({"kind": "random"}, 48),
    ({"kind": "random", "trials": 10}, 10),
    ({"kind": "quasi_random", "trials": 7}, 7),
    ({"kind": "tpe", "trials": 12}, 12),
    # 4 tuned parameters; the choice has 3 values, so it gives min(k, 3) points
    ({"kind": "grid", "points": 1}, 1),
    ({"kind": "grid", "points": 2}, 2 * 2 * 2 * 2),
    ({"kind": "grid", "points": 3}, 3 * 3 * 3 * 3),
    ({"kind": "grid"}, 5 * 5 * 5 * 3),
    ({"kind": "coarse_to_fine"}, 3 * 16),
    ({"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 5}, 10),
])
def test_budget_of_each_kind(section, expected):
    assert budget(parse(section), SPACE) == expected


def test_a_grid_over_a_short_int_range_has_fewer_points():
    space = SearchSpace.from_dict({"parameters": {
        "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
        "layers": {"scale": "linear", "type": "int", "low": 1, "high": 2},
    }})
    settings = parse_strategy({"kind": "grid", "points": 4}, SOURCE, space)
    assert budget(settings, space) == 4 * 2


# --- to_dict ---------------------------------------------------------------------------

@pytest.mark.parametrize("section", [
    {"kind": "random", "trials": 9},
    {"kind": "quasi_random"},
    {"kind": "tpe", "trials": 20},
    {"kind": "grid", "points": 3},
    {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 4, "keep": 0.5, "margin": 0.05,
     "sampler": "quasi_random"},
    {"kind": "coarse_to_fine", "start": {"lr": 0.01, "batch_size": 64}, "width": 0.1},
], ids=["random", "quasi_random", "tpe", "grid", "coarse_to_fine", "coarse_to_fine-start"])
def test_to_dict_round_trips_through_parse_strategy(section):
    settings = parse(section)
    d = to_dict(settings)
    assert d["kind"] == section["kind"]
    assert {k: d[k] for k in section if k != "start"} == {
        k: v for k, v in section.items() if k != "start"}
    assert parse(d) == settings


def test_to_dict_leaves_out_an_unset_start():
    d = to_dict(parse({"kind": "coarse_to_fine"}))
    assert d == {"kind": "coarse_to_fine", "rounds": 3, "trials_per_round": 16, "keep": 0.25,
                 "margin": 0.1, "sampler": "quasi_random", "width": 0.25, "pick": "ratio",
                 "candidates": 8, "bound_share": 0.5, "zoom_after": 0.75}


# --- make_strategy ---------------------------------------------------------------------

@pytest.mark.parametrize(("section", "cls", "expected_budget"), [
    ({"kind": "random", "trials": 6}, RandomStrategy, 6),
    ({"kind": "quasi_random", "trials": 5}, QuasiRandomStrategy, 5),
    ({"kind": "tpe", "trials": 4}, TpeStrategy, 4),
    ({"kind": "grid", "points": 2}, GridStrategy, 16),
    ({"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 3}, CoarseToFineStrategy, 6),
    ({}, CoarseToFineStrategy, 48),
], ids=["random", "quasi_random", "tpe", "grid", "coarse_to_fine", "default"])
@pytest.mark.parametrize("given", ["mapping", "settings"])
def test_make_strategy_builds_the_kinds_class_with_its_budget(section, cls, expected_budget,
                                                              given):
    settings = dict(section) if given == "mapping" else parse(section)
    strategy = make_strategy(settings, SPACE, "val_accuracy", "max", seed=3)
    assert type(strategy) is cls
    assert strategy.budget == expected_budget == budget(parse(section), SPACE)
    assert (strategy.metric, strategy.mode, strategy.seed) == ("val_accuracy", "max", 3)
    assert strategy.space is SPACE


def test_make_strategy_hands_coarse_to_fine_all_its_settings():
    strategy = make_strategy({"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 3,
                              "keep": 0.5, "margin": 0.05, "sampler": "quasi_random",
                              "start": {"lr": 0.01}, "width": 0.1},
                             SPACE, "val_loss", "min", seed=0)
    assert (strategy.n_rounds, strategy.per_round, strategy.keep, strategy.margin,
            strategy.sampler) == (2, 3, 0.5, 0.05, "quasi_random")
    assert strategy.start is not None
    lr_box = strategy.rounds[0].box["lr"]
    assert lr_box == pytest.approx([SPACE["lr"].to_unit(0.01) - 0.1,
                                    SPACE["lr"].to_unit(0.01) + 0.1])


def test_make_strategy_from_a_bad_mapping_names_no_file():
    with pytest.raises(SpecError, match=re.escape(
            "<strategy>: key 'strategy.rounds': must be a whole number >= 1, got 0")):
        make_strategy({"kind": "coarse_to_fine", "rounds": 0}, SPACE, "val_loss", "min", 0)


# --- bad sections ----------------------------------------------------------------------

BAD_SECTIONS = [
    ("unknown-kind", {"kind": "bayes"}, "strategy.kind",
     "must be one of random, quasi_random, grid, tpe, coarse_to_fine, got 'bayes'"),
    ("null-kind", {"kind": None}, "strategy.kind",
     "must be one of random, quasi_random, grid, tpe, coarse_to_fine, got None"),
    ("key-of-another-kind", {"kind": "random", "points": 5}, "strategy.points",
     "unknown key; allowed keys are kind, trials"),
    ("grid-with-trials", {"kind": "grid", "trials": 10}, "strategy.trials",
     "unknown key; allowed keys are kind, points"),
    ("misspelt-key", {"kind": "coarse_to_fine", "round": 2}, "strategy.round",
     "unknown key (did you mean 'rounds'?); allowed keys are kind, rounds, trials_per_round, "
     "keep, margin, sampler, start, width"),
    ("trials-0", {"kind": "random", "trials": 0}, "strategy.trials",
     "must be a whole number >= 1, got 0"),
    ("trials-true", {"kind": "tpe", "trials": True}, "strategy.trials",
     "must be a whole number >= 1, got True"),
    ("points-2.5", {"kind": "grid", "points": 2.5}, "strategy.points",
     "must be a whole number >= 1, got 2.5"),
    ("rounds-0", {"kind": "coarse_to_fine", "rounds": 0}, "strategy.rounds",
     "must be a whole number >= 1, got 0"),
    ("rounds-null", {"kind": "coarse_to_fine", "rounds": None}, "strategy.rounds",
     "must be a whole number >= 1, got None"),
    ("trials-per-round-0", {"trials_per_round": 0}, "strategy.trials_per_round",
     "must be a whole number >= 1, got 0"),
    ("keep-0", {"kind": "coarse_to_fine", "keep": 0}, "strategy.keep",
     "must be a number in (0, 1], got 0"),
    ("keep-1.5", {"kind": "coarse_to_fine", "keep": 1.5}, "strategy.keep",
     "must be a number in (0, 1], got 1.5"),
    ("margin-negative", {"kind": "coarse_to_fine", "margin": -0.1}, "strategy.margin",
     "must be a number in [0, 1], got -0.1"),
    ("width-0", {"kind": "coarse_to_fine", "width": 0}, "strategy.width",
     "must be a number in (0, 1], got 0"),
    ("sampler-grid", {"kind": "coarse_to_fine", "sampler": "grid"}, "strategy.sampler",
     "must be 'random' or 'quasi_random', got 'grid'"),
    ("start-not-a-mapping", {"kind": "coarse_to_fine", "start": [0.1]}, "strategy.start",
     "must be a mapping of parameter values, got [0.1]"),
    ("start-unknown-parameter", {"kind": "coarse_to_fine", "start": {"lrr": 0.1}},
     "strategy.start.lrr", f"unknown key (did you mean 'lr'?); allowed keys are {TUNED}"),
    ("start-not-a-choice", {"kind": "coarse_to_fine", "start": {"batch_size": 48}},
     "strategy.start.batch_size", "is not a value of this parameter ("),
]


@pytest.mark.parametrize(("section", "key", "message"), [c[1:] for c in BAD_SECTIONS],
                         ids=[c[0] for c in BAD_SECTIONS])
def test_a_bad_section_is_refused_naming_the_key(section, key, message):
    with pytest.raises(SpecError, match="^" + re.escape(f"{SOURCE}: key '{key}': {message}")):
        parse(section)


def test_a_start_value_outside_a_choice_names_the_value():
    with pytest.raises(SpecError, match=r"is not a value of this parameter \(.*\), got 48$"):
        parse({"kind": "coarse_to_fine", "start": {"batch_size": 48}})
