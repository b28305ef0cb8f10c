"""What a study optimises (models/objective.py): a metric, its direction, and comparing scores."""

from __future__ import annotations

import math

import pytest

from models.objective import METRICS, MODES, Objective

LOSS = Objective("val_loss", "min")
ACCURACY = Objective("val_accuracy", "max")


@pytest.mark.parametrize(("name", "mode"), sorted(METRICS.items()))
def test_of_gives_each_trainer_metric_its_own_direction(name, mode):
    objective = Objective.of(name)
    assert objective == Objective(name, mode)
    assert (objective.name, objective.mode) == (name, mode)


def test_the_trainer_metrics_and_their_directions():
    assert METRICS == {"val_loss": "min", "val_accuracy": "max", "train_loss": "min"}
    assert MODES == ("min", "max")


def test_the_default_objective_is_the_validation_loss_minimised():
    assert Objective() == Objective("val_loss", "min")


@pytest.mark.parametrize("mode", ["minimize", "MIN", "", None, "best"])
def test_an_unknown_mode_is_refused(mode):
    with pytest.raises(ValueError, match=rf"mode must be 'min' or 'max', got {mode!r}"):
        Objective("val_loss", mode)


def test_an_objective_is_frozen():
    with pytest.raises(AttributeError):
        LOSS.mode = "max"


@pytest.mark.parametrize(
    ("objective", "sign", "worst", "direction"),
    [(LOSS, 1.0, math.inf, "minimize"), (ACCURACY, -1.0, -math.inf, "maximize")],
    ids=["min", "max"],
)
def test_sign_worst_and_direction_follow_the_mode(objective, sign, worst, direction):
    assert objective.sign == sign
    assert objective.worst == worst
    assert objective.direction == direction


def test_sign_times_a_value_is_smaller_when_better():
    assert LOSS.sign * 0.2 < LOSS.sign * 0.8  # loss 0.2 beats 0.8
    assert ACCURACY.sign * 0.8 < ACCURACY.sign * 0.2  # accuracy 0.8 beats 0.2


def test_better_is_strict_and_follows_the_mode():
    assert LOSS.better(0.1, 0.2)
    assert not LOSS.better(0.2, 0.1)
    assert not LOSS.better(0.2, 0.2)
    assert ACCURACY.better(0.9, 0.8)
    assert not ACCURACY.better(0.8, 0.9)
    assert not ACCURACY.better(0.8, 0.8)


@pytest.mark.parametrize("objective", [LOSS, ACCURACY], ids=["min", "max"])
@pytest.mark.parametrize("value", [0.0, -5.0, 1e9, math.inf, -math.inf])
def test_anything_beats_none(objective, value):
    assert objective.better(value, None)


@pytest.mark.parametrize("objective", [LOSS, ACCURACY], ids=["min", "max"])
@pytest.mark.parametrize("value", [-1e300, 0.0, 1e300])
def test_every_finite_score_beats_the_worst(objective, value):
    assert objective.better(value, objective.worst)
    assert not objective.better(objective.worst, value)


@pytest.mark.parametrize("value", [None, "abc", "", [0.5], {"val_loss": 0.5}, object()])
def test_score_of_none_or_a_non_number_is_none(value):
    assert LOSS.score(value) is None
    assert ACCURACY.score(value) is None


def test_score_of_nan_is_the_worst_of_its_mode():
    assert LOSS.score(math.nan) == math.inf
    assert ACCURACY.score(math.nan) == -math.inf
    assert LOSS.score(float("nan")) == LOSS.worst


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_score_keeps_infinities_as_they_are(value):
    assert LOSS.score(value) == value
    assert ACCURACY.score(value) == value


def test_score_of_a_number_is_that_number_as_a_float():
    assert LOSS.score(0.25) == 0.25
    score = ACCURACY.score(1)
    assert score == 1.0 and isinstance(score, float)


def test_best_is_the_lowest_finite_value_for_min():
    assert LOSS.best([0.5, None, math.nan, 0.3, math.inf, -math.inf, 0.4]) == 0.3


def test_best_is_the_highest_finite_value_for_max():
    assert ACCURACY.best([0.5, None, math.nan, 0.9, math.inf, -math.inf, 0.7]) == 0.9


@pytest.mark.parametrize("values", [[], [None], [math.nan, math.inf, -math.inf, None], ["0.1"]])
def test_best_is_none_when_no_value_is_finite(values):
    assert LOSS.best(values) is None
    assert ACCURACY.best(values) is None


def test_best_takes_any_iterable_once():
    assert LOSS.best(v for v in (3, 2, 5)) == 2


def test_rank_puts_the_best_first_for_min_and_max():
    assert LOSS.rank([0.3, 0.1, 0.2]) == [0.1, 0.2, 0.3]
    assert ACCURACY.rank([0.3, 0.1, 0.2]) == [0.3, 0.2, 0.1]


def test_rank_puts_the_worst_score_last():
    assert LOSS.rank([LOSS.worst, 0.5, 0.1]) == [0.1, 0.5, math.inf]
    assert ACCURACY.rank([ACCURACY.worst, 0.5, 0.9]) == [0.9, 0.5, -math.inf]


@pytest.mark.parametrize("objective", [LOSS, ACCURACY], ids=["min", "max"])
def test_rank_keeps_ties_in_their_order(objective):
    items = [("a", 0.5), ("b", 0.2), ("c", 0.5), ("d", 0.2), ("e", 0.5)]
    ranked = [name for name, _ in objective.rank(items, key=lambda item: item[1])]
    if objective.mode == "min":
        assert ranked == ["b", "d", "a", "c", "e"]
    else:
        assert ranked == ["a", "c", "e", "b", "d"]


def test_rank_returns_a_new_list_and_leaves_the_input_alone():
    items = [0.3, 0.1]
    assert LOSS.rank(items) == [0.1, 0.3]
    assert items == [0.3, 0.1]


@pytest.mark.parametrize("objective", [LOSS, ACCURACY, Objective.of("train_loss")])
def test_to_dict_round_trips(objective):
    d = objective.to_dict()
    assert d == {"name": objective.name, "mode": objective.mode}
    assert Objective(**d) == objective
