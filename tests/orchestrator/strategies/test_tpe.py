"""TPE through Optuna (orchestrator/strategies/_tpe.py): what Optuna is told of each trial.

Optuna takes finite values only, so a diverged trial (NaN or an infinity) reaches
it as a large finite worst (1e12 for min, -1e12 for max) and TPE goes on
suggesting. The study is read through the Ray searcher's ``_ot_study``: Ray's
OptunaSearch has no public accessor for it.
"""

from __future__ import annotations

import math

import optuna
import pytest
from ray.tune.search import Searcher

from orchestrator.strategies import TpeStrategy, make_strategy
from searchspaces import SearchSpace

METRIC = "val_loss"
SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-5, "high": 1.0},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9999},
    "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 64},
    "batch_size": {"choice": [32, 64, 128]},
}})
WORST = {"min": 1e12, "max": -1e12}


def tpe(mode: str = "min", trials: int = 16, seed: int = 0) -> TpeStrategy:
    strategy = make_strategy({"kind": "tpe", "trials": trials}, SPACE, METRIC, mode, seed)
    assert isinstance(strategy, TpeStrategy)
    return strategy


def study(strategy: TpeStrategy) -> optuna.Study:
    return strategy.inner._ot_study


def run_trial(strategy: TpeStrategy, trial_id: str, value, report: bool = True) -> dict:
    """Suggests one trial and ends it with ``value`` as its metric."""
    config = strategy.suggest(trial_id)
    assert isinstance(config, dict), config
    if report:
        strategy.on_trial_result(trial_id, {METRIC: value, "training_iteration": 1})
    strategy.on_trial_complete(trial_id, {METRIC: value, "training_iteration": 1})
    return config


def bowl(config: dict) -> float:
    return (math.log10(config["lr"]) + 2.5) ** 2 + ((config["hidden_units"] - 40) / 24) ** 2


def test_optuna_optimises_in_the_mode_of_the_strategy():
    assert study(tpe("min")).direction == optuna.study.StudyDirection.MINIMIZE
    assert study(tpe("max")).direction == optuna.study.StudyDirection.MAXIMIZE


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "diverged"],
                         ids=["nan", "inf", "-inf", "not-a-number"])
def test_a_diverged_trial_is_told_to_optuna_as_a_large_finite_worst(mode, value):
    strategy = tpe(mode)
    run_trial(strategy, "t0", value)
    (trial,) = study(strategy).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == WORST[mode]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_finite_value_is_told_as_it_is(mode):
    strategy = tpe(mode)
    run_trial(strategy, "t0", 0.375)
    run_trial(strategy, "t1", -2)
    assert [t.value for t in study(strategy).trials] == [0.375, -2.0]


def test_a_result_without_the_metric_is_told_the_trials_best_score():
    strategy = tpe("min")
    assert isinstance(strategy.suggest("t0"), dict)
    strategy.on_trial_result("t0", {METRIC: 0.5, "training_iteration": 1})
    strategy.on_trial_result("t0", {METRIC: 0.25, "training_iteration": 2})
    strategy.on_trial_complete("t0", {"training_iteration": 2})
    assert [t.value for t in study(strategy).trials] == [0.25]


def test_a_result_without_the_metric_from_a_silent_trial_is_the_worst():
    strategy = tpe("max")
    assert isinstance(strategy.suggest("t0"), dict)
    strategy.on_trial_complete("t0", {"training_iteration": 1})
    assert [t.value for t in study(strategy).trials] == [-1e12]


def test_a_failed_trial_without_a_result_is_a_failed_optuna_trial():
    strategy = tpe("min")
    assert isinstance(strategy.suggest("t0"), dict)
    strategy.on_trial_complete("t0", None, error=True)
    (trial,) = study(strategy).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.value is None
    assert strategy.trials["t0"].error


def diverged(i: int) -> bool:
    """Trials 0, 3, 6, 9, 12 and 15 diverge."""
    return i % 3 == 0


@pytest.mark.parametrize("mode", ["min", "max"])
def test_tpe_keeps_suggesting_after_diverged_trials(mode):
    """Past TPE's 10 random start-up trials, with every third trial diverged."""
    sign = 1.0 if mode == "min" else -1.0
    strategy = tpe(mode, trials=16)
    configs = []
    for i in range(16):
        config = strategy.suggest(f"t{i}")
        assert isinstance(config, dict), (i, config)
        value = [math.nan, math.inf][i % 2] if diverged(i) else sign * bowl(config)
        strategy.on_trial_result(f"t{i}", {METRIC: value, "training_iteration": 1})
        strategy.on_trial_complete(f"t{i}", {METRIC: value, "training_iteration": 1})
        configs.append(config)
    assert strategy.suggest("t16") == Searcher.FINISHED
    trials = study(strategy).trials
    assert len(trials) == 16
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(math.isfinite(t.value) for t in trials)
    assert [t.value for t in trials if diverged(t.number)] == [WORST[mode]] * 6
    assert all(abs(t.value) < 1e6 for t in trials if not diverged(t.number))
    # the model-based trials still lie in the space
    for config in configs[10:]:
        assert 1e-5 <= config["lr"] <= 1.0 and config["batch_size"] in (32, 64, 128)


def test_save_and_restore_keep_the_studys_trials(tmp_path):
    original = tpe("min", trials=8, seed=4)
    for i, value in enumerate([0.9, math.nan, 0.4, math.inf]):
        run_trial(original, f"t{i}", value)
    path = tmp_path / "searcher.pkl"
    original.save(str(path))

    restored = tpe("min", trials=8, seed=4)
    assert study(restored).trials == []
    restored.restore(str(path))
    before = study(original).trials
    after = study(restored).trials
    assert [t.value for t in after] == [0.9, 1e12, 0.4, 1e12]
    assert [t.params for t in after] == [t.params for t in before]
    assert restored.trials.keys() == {"t0", "t1", "t2", "t3"}
    assert [r.score for r in restored.trials.values()] == [0.9, math.inf, 0.4, math.inf]

    # the restored study goes on: the same next suggestion, told like any other
    assert restored.suggest("t4") == original.suggest("t4")
    restored.on_trial_complete("t4", {METRIC: math.nan})
    assert [t.value for t in study(restored).trials] == [0.9, 1e12, 0.4, 1e12, 1e12]
    assert len(study(original).trials) == 5  # the original's own t4, still running
