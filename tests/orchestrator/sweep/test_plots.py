"""The sweep's plots, drawn from trial rows (no Ray, no MLflow: plots.py needs neither)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.objective import Objective
from orchestrator.sweep import plots
from orchestrator.sweep.plots import _unit_axis, importance, make_plots
from searchspaces import SearchSpace
from searchspaces.sampling import random_unit

SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-4, "high": 1.0, "priority": 1},
    "momentum": {"scale": "reverse_log", "low": 0.9, "high": 0.999, "priority": 2},
    "hidden_units": {"scale": "linear", "type": "int", "low": 2, "high": 4, "priority": 3},
    "batch_size": {"choice": [32, 64, 128], "priority": 2},
}})


def rows_where_only_lr_matters(n: int = 40, seed: int = 0) -> list[dict]:
    """Trials whose val_loss depends on lr alone (best at 1e-2), plus a little noise."""
    rng = np.random.default_rng(seed)
    rows = []
    unit = random_unit(len(SPACE.tuned), n, seed)  # what the random strategy draws
    for i, config in enumerate(SPACE.config_from_unit(u) for u in unit):
        loss = (math.log10(config["lr"]) + 2) ** 2 + 0.05 + 0.01 * rng.random()
        history = {e: {"val_loss": loss * (1 + 1 / e), "val_accuracy": 0.5} for e in (1, 2, 3)}
        rows.append({"trial_id": f"t{i}", "round": i * 2 // n, "status": "completed",
                     "config": config, "seed": i, "epochs": 3, "history": history,
                     "best": {**history[3], "epoch": 3}})
    return rows


LOSS = Objective("val_loss", "min")
ROUNDS = [{"round": 0, "box": {"lr": [1e-4, 1.0], "momentum": [0.9, 0.999]}},
          {"round": 1, "box": {"lr": [1e-3, 0.1], "momentum": [0.95, 0.99]}}]


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_every_plot_is_a_non_empty_png(tmp_path):
    made, shares = make_plots(SPACE, rows_where_only_lr_matters(), ROUNDS, LOSS,
                              tmp_path / "plots")
    assert sorted(p.name for p in made) == ["axes.png", "boxes.png", "importance.png",
                                            "learning_curves.png"]
    assert all(is_png(p) for p in made)
    assert not [p for p in (tmp_path / "plots").iterdir() if ".tmp" in p.name]  # no leftovers
    assert set(shares) == {"lr", "momentum", "hidden_units", "batch_size"}


def test_importance_finds_the_one_parameter_that_matters():
    shares = importance(SPACE, rows_where_only_lr_matters(), LOSS)
    assert shares["lr"]["importance"] > 0.8
    assert max(shares[n]["importance"] for n in ("momentum", "hidden_units", "batch_size")) \
        < 0.1
    assert shares["lr"]["priority"] == 1 and shares["batch_size"]["priority"] == 2


def test_too_few_trials_give_no_importance_and_no_boxes_for_one_round(tmp_path):
    rows = rows_where_only_lr_matters(3)
    made, shares = make_plots(SPACE, rows, ROUNDS[:1], LOSS, tmp_path)
    assert shares == {}
    assert sorted(p.name for p in made) == ["axes.png", "learning_curves.png"]


def test_diverged_and_failed_trials_do_not_break_the_plots(tmp_path):
    rows = rows_where_only_lr_matters(12)
    rows[0]["history"] = {1: {"val_loss": float("inf")}, 2: {"val_loss": None}}
    rows[0]["best"] = None
    rows[1]["history"], rows[1]["best"] = {}, None  # failed before its first epoch
    made, shares = make_plots(SPACE, rows, ROUNDS, LOSS, tmp_path)
    assert len(made) == 4 and all(is_png(p) for p in made)
    assert shares["lr"]["importance"] > 0.5


@pytest.mark.parametrize("name, at_half, ends", [
    ("lr", "0.01", ("0.0001", "1")),  # log: a decade per quarter
    ("momentum", "0.99", ("0.9", "0.999")),  # 1-β log axis: 0.9, 0.99, 0.999 evenly spaced
])
def test_axes_are_unit_space_labelled_with_values(name, at_half, ends):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    _unit_axis(ax.xaxis, SPACE[name])
    labels = {t.get_text(): pos for t, pos in zip(ax.xaxis.get_ticklabels(),
                                                  ax.xaxis.get_ticklocs())}
    plt.close(fig)
    assert labels[at_half] == pytest.approx(0.5)
    assert labels[ends[0]] == pytest.approx(0.0) and labels[ends[1]] == pytest.approx(1.0)


def test_an_int_axis_labels_each_value_once():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    _unit_axis(ax.xaxis, SPACE["hidden_units"])
    texts = [t.get_text() for t in ax.xaxis.get_ticklabels()]
    plt.close(fig)
    assert texts == ["2", "3", "4"]


def test_a_large_sweep_measures_importance_on_a_seeded_sample(monkeypatch):
    """Over 3,000 trials fANOVA sees MAX_IMPORTANCE_TRIALS of them (its cost grows faster
    than the trials), the same ones each time, and still finds what matters."""
    import optuna

    seen = []
    real = optuna.study.Study.add_trials
    monkeypatch.setattr(optuna.study.Study, "add_trials",
                        lambda self, trials: (seen.append(len(trials)), real(self, trials)))
    rows = rows_where_only_lr_matters(3000)
    shares = importance(SPACE, rows, LOSS)
    assert seen == [plots.MAX_IMPORTANCE_TRIALS]
    assert shares["lr"]["importance"] > 0.8
    assert plots.sample(rows, 500) == plots.sample(rows, 500) != plots.sample(rows, 500, 1)
    assert plots.sample(rows[:10], 500) == rows[:10]
