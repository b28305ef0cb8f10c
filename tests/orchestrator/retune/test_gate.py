"""The gate (orchestrator/retune/gate.py): the statistics it decides on, its decision
(promoted, refreshed or kept) on hand-made results for a loss and an accuracy sweep, the
seed it deploys, and ``gate()`` retraining each configuration inline when Ray is not running.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import sweep_dict
from scipy import stats as scipy_stats

from models.data import load
from models.objective import Objective
from models.train import holdout_scores, net_from_checkpoint
from orchestrator.cluster.hardware import hardware_fingerprint
from orchestrator.retune.gate import best_seed, decide, gate, holdout_key, stats, welch_p
from orchestrator.retune.spec import RetuneSpec, parse_retune

LOSS = Objective("val_loss", "min")
ACCURACY = Objective("val_accuracy", "max")
TINY_DATA = {"source": "synthetic", "size": 300, "n_features": 6, "classes": 3}


def retune_spec(tmp_path: Path, metric: str = "val_loss", seeds: int = 3,
                margin: float = 0.005, **sweep) -> RetuneSpec:
    """A real re-tune mapping over a tiny sweep (1 epoch, synthetic data)."""
    raw = sweep_dict(data=TINY_DATA, epochs=1, metric={"name": metric}, **sweep)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    return parse_retune({"model": "m", "sweep": "sweep.yaml", "seeds": seeds,
                         "margin": margin}, str(tmp_path / "retune.yaml"), tmp_path)


def runs(key: str, *values: float) -> list[dict]:
    return [{key: v} for v in values]


def loss_results(production: list[float], challenger: list[float] | None = None) -> dict:
    out = {"production": runs("holdout_loss", *production)}
    if challenger is not None:
        out["challenger"] = runs("holdout_loss", *challenger)
    return out


# --- stats and welch_p ---------------------------------------------------------------------


def test_stats_gives_the_mean_the_sample_std_and_the_values():
    out = stats(runs("v", 1.0, 2.0, 3.0), "v")
    assert out == {"mean": 2.0, "std": 1.0, "values": [1.0, 2.0, 3.0]}  # ddof=1: sqrt(2/2)


def test_stats_of_one_value_has_no_spread():
    assert stats(runs("v", 0.4), "v") == {"mean": 0.4, "std": 0.0, "values": [0.4]}


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_non_finite_value_makes_the_mean_infinite(bad):
    out = stats(runs("v", 1.0, bad, 3.0), "v")
    assert out["mean"] == math.inf
    assert out["std"] == pytest.approx(math.sqrt(2.0))  # the spread of the finite ones
    assert out["values"][0] == 1.0 and out["values"][2] == 3.0


def test_welch_p_is_the_one_sided_welch_t_test():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 7.0]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)  # Welch-Satterthwaite
    assert welch_p(a, b, LOSS) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9)
    assert welch_p(b, a, ACCURACY) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-9)


@pytest.mark.parametrize("objective, better, worse", [
    (LOSS, [0.30, 0.31, 0.32], [0.50, 0.52, 0.51]),
    (ACCURACY, [0.90, 0.92, 0.91], [0.80, 0.81, 0.79]),
], ids=["loss", "accuracy"])
def test_clearly_better_samples_have_a_small_p_and_the_reverse_a_large_one(
        objective, better, worse):
    assert welch_p(better, worse, objective) < 0.05
    assert welch_p(worse, better, objective) > 0.95


@pytest.mark.parametrize("objective", [LOSS, ACCURACY], ids=["loss", "accuracy"])
def test_equal_samples_have_a_large_p(objective):
    same = [0.40, 0.42, 0.41]
    assert welch_p(same, list(same), objective) == pytest.approx(0.5)  # t = 0


@pytest.mark.parametrize("objective, a, b, p", [
    (LOSS, 0.25, 0.5, 0.0), (LOSS, 0.5, 0.25, 1.0), (LOSS, 0.5, 0.5, 1.0),
    (ACCURACY, 0.75, 0.5, 0.0), (ACCURACY, 0.5, 0.75, 1.0), (ACCURACY, 0.75, 0.75, 1.0),
], ids=["loss-better", "loss-worse", "loss-equal", "acc-better", "acc-worse", "acc-equal"])
def test_without_any_spread_the_means_decide(objective, a, b, p):
    assert welch_p([a] * 3, [b] * 3, objective) == p


def test_constant_samples_have_no_spread_even_when_their_float_mean_is_inexact():
    """Three seeds scoring the same holdout accuracy (0.8: 48 of 60 rows) have no spread,
    though numpy's mean of [0.8, 0.8, 0.8] is 0.8000000000000002 and its std 1.1e-16:
    the means decide, so equal samples are not better (p 1.0, not a t-test on noise)."""
    assert welch_p([0.8] * 3, [0.8] * 3, ACCURACY) == 1.0
    assert welch_p([0.1] * 3, [0.1] * 3, LOSS) == 1.0


# --- decide: a loss sweep ------------------------------------------------------------------


@pytest.mark.parametrize("metric, key", [("val_loss", "holdout_loss"),
                                         ("train_loss", "holdout_loss"),
                                         ("val_accuracy", "holdout_accuracy")])
def test_the_gate_compares_accuracy_for_an_accuracy_sweep_else_loss(metric, key):
    assert holdout_key(metric) == key


def test_a_challenger_better_by_the_margin_and_significant_is_promoted(tmp_path):
    spec = retune_spec(tmp_path)
    out = decide(spec, loss_results([0.50, 0.52, 0.51], [0.30, 0.32, 0.31]),
                 {"loss": 0.60, "accuracy": 0.7}, same=False)
    assert out["decision"] == "promoted"
    assert out["metric"] == "holdout_loss" and out["margin"] == 0.005
    assert out["p_value"] < 0.05
    assert out["production"]["mean"] == pytest.approx(0.51)
    assert out["challenger"]["mean"] == pytest.approx(0.31)
    assert out["deployed"] == 0.60


def test_a_better_but_noisy_challenger_is_not_promoted(tmp_path):
    spec = retune_spec(tmp_path)
    # the challenger's mean is 0.11 better, but one seed of three is far worse: p > 0.05
    out = decide(spec, loss_results([0.50, 0.52, 0.51], [0.10, 0.90, 0.20]),
                 {"loss": 0.60, "accuracy": 0.7}, same=False)
    assert out["p_value"] > 0.05
    assert out["decision"] == "refreshed"  # production retrained beats the deployed 0.60


def test_a_challenger_better_by_less_than_the_margin_is_not_promoted_nor_tested(tmp_path):
    spec = retune_spec(tmp_path, margin=0.05)
    out = decide(spec, loss_results([0.50, 0.52, 0.51], [0.47, 0.48, 0.47]),
                 {"loss": 0.51, "accuracy": 0.7}, same=False)
    assert out["decision"] == "kept"
    assert out["p_value"] is None


def test_with_fewer_than_three_seeds_the_t_test_is_skipped(tmp_path):
    spec = retune_spec(tmp_path, seeds=2)
    out = decide(spec, loss_results([0.50, 0.52], [0.10, 0.80]),
                 {"loss": 0.40, "accuracy": 0.7}, same=False)
    assert out["decision"] == "promoted"  # the mean 0.45 is better; no test could say no
    assert out["p_value"] is None


def test_a_diverged_challenger_is_never_promoted(tmp_path):
    spec = retune_spec(tmp_path)
    out = decide(spec, loss_results([0.50, 0.52, 0.51], [0.10, math.inf, 0.10]),
                 {"loss": 0.51, "accuracy": 0.7}, same=False)
    assert out["challenger"]["mean"] == math.inf
    assert out["decision"] == "kept"


def test_the_same_configuration_cannot_be_promoted(tmp_path):
    spec = retune_spec(tmp_path)
    # even were a far better "challenger" among the results, it is production's own config
    out = decide(spec, loss_results([0.50, 0.52, 0.51], [0.10, 0.11, 0.12]),
                 {"loss": 0.60, "accuracy": 0.7}, same=True)
    assert out["decision"] == "refreshed"
    assert "challenger" not in out and out["p_value"] is None


def test_production_retrained_that_beats_the_deployed_weights_is_refreshed(tmp_path):
    spec = retune_spec(tmp_path)
    out = decide(spec, loss_results([0.50, 0.52, 0.51], [0.60, 0.61, 0.62]),
                 {"loss": 0.60, "accuracy": 0.99}, same=False)
    assert out["decision"] == "refreshed" and out["p_value"] is None


@pytest.mark.parametrize("deployed_loss", [0.51, 0.512, 0.40], ids=["equal", "within-margin",
                                                                    "deployed-better"])
def test_with_nothing_better_production_is_kept(tmp_path, deployed_loss):
    spec = retune_spec(tmp_path)
    out = decide(spec, loss_results([0.50, 0.52, 0.51], [0.60, 0.61, 0.62]),
                 {"loss": deployed_loss, "accuracy": 0.1}, same=False)
    assert out["decision"] == "kept"
    assert out["deployed"] == deployed_loss


# --- decide: an accuracy sweep -------------------------------------------------------------


def accuracy_results(production: list[float], challenger: list[float]) -> dict:
    """Holdout accuracies, with holdout losses that say the opposite (they must be ignored)."""
    return {"production": [{"holdout_accuracy": a, "holdout_loss": 0.1} for a in production],
            "challenger": [{"holdout_accuracy": a, "holdout_loss": 9.0} for a in challenger]}


def test_an_accuracy_sweep_promotes_the_higher_holdout_accuracy(tmp_path):
    spec = retune_spec(tmp_path, metric="val_accuracy")
    out = decide(spec, accuracy_results([0.80, 0.81, 0.79], [0.90, 0.92, 0.91]),
                 {"loss": 0.05, "accuracy": 0.70}, same=False)
    assert out["decision"] == "promoted"
    assert out["metric"] == "holdout_accuracy" and out["deployed"] == 0.70
    assert out["challenger"]["mean"] == pytest.approx(0.91) and out["p_value"] < 0.05


def test_an_accuracy_sweep_refreshes_when_production_beats_the_deployed_accuracy(tmp_path):
    spec = retune_spec(tmp_path, metric="val_accuracy")
    out = decide(spec, accuracy_results([0.90, 0.91, 0.92], [0.80, 0.81, 0.79]),
                 {"loss": 0.05, "accuracy": 0.80}, same=False)
    assert out["decision"] == "refreshed" and out["production"]["mean"] == pytest.approx(0.91)


def test_an_accuracy_sweep_keeps_a_deployed_model_that_scores_higher(tmp_path):
    spec = retune_spec(tmp_path, metric="val_accuracy")
    out = decide(spec, accuracy_results([0.80, 0.81, 0.79], [0.70, 0.71, 0.72]),
                 {"loss": 9.0, "accuracy": 0.85}, same=False)
    assert out["decision"] == "kept" and out["deployed"] == 0.85


# --- best_seed -----------------------------------------------------------------------------


def test_best_seed_chooses_on_validation_and_skips_runs_without_a_state_or_a_val():
    results = [
        {"seed": 1, "val": 0.50, "state": {"w": 1}, "holdout_loss": 0.1},
        {"seed": 2, "val": 0.10, "state": None, "holdout_loss": 0.2},  # no state: skipped
        {"seed": 3, "val": math.nan, "state": {"w": 3}, "holdout_loss": 0.3},  # no val
        {"seed": 4, "val": 0.40, "state": {"w": 4}, "holdout_loss": 0.9},
    ]
    assert best_seed(results, LOSS)["seed"] == 4  # not the best holdout: that is not chosen on
    assert best_seed(results, ACCURACY)["seed"] == 1


# --- gate(): retraining inline -------------------------------------------------------------


@pytest.mark.usefixtures("ray_shutdown")
def test_gate_without_ray_retrains_each_configuration_seeds_times_inline(tmp_path):
    import ray

    if ray.is_initialized():  # left by another module: this test is about running without
        ray.shutdown()
    assert not ray.is_initialized()
    spec = retune_spec(tmp_path, seeds=2, seed=3, model={"batch_norm": False})
    data = load(spec.data, spec.data_base)
    configs = {"production": {"lr": 0.05, "hidden_units": 16},
               "challenger": {"lr": 0.1, "hidden_units": 24}}
    stream = io.StringIO()

    results = gate(spec, data, configs, stream)

    assert not ray.is_initialized()  # inline: no Ray was started for it
    assert ("gate: 2 configuration(s) x 2 seeds on today's data (1 epochs each)"
            in stream.getvalue())
    assert sorted(results) == ["challenger", "production"]
    expected_seeds = [3 * 1000 + 7919, 3 * 1000 + 2 * 7919]  # from the sweep's seed
    for name, config in configs.items():
        assert [r["seed"] for r in results[name]] == expected_seeds
        for r in results[name]:
            assert r["status"] == "completed"
            assert 0.0 <= r["holdout_accuracy"] <= 1.0
            assert math.isfinite(r["holdout_loss"]) and r["holdout_loss"] > 0
            state = r["state"]
            assert state["epoch"] == 1 and state["seed"] == r["seed"]
            assert state["hparams"]["lr"] == config["lr"]
            assert state["model_config"]["hidden_units"] == config["hidden_units"]
            assert state["model_config"]["batch_norm"] is False  # the sweep's fixed setting
            assert r["val"] == state["history"][-1]["val_loss"]  # the sweep's metric
            assert r["hardware"] == hardware_fingerprint()
    # the reported holdout scores are those of the state it returns
    first = results["production"][0]
    loss, accuracy = holdout_scores(net_from_checkpoint(first["state"]), data)
    assert (loss, accuracy) == pytest.approx((first["holdout_loss"], first["holdout_accuracy"]))
    # two seeds: two different nets
    w0, w1 = (next(iter(r["state"]["model"].values())) for r in results["production"])
    assert w0.shape == w1.shape and not torch.equal(w0, w1)
