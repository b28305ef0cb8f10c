"""``caviar train`` (orchestrator/cli/spaces.py's cmd_train and its ``--set`` parsing): one
configuration trained here without Ray, on a sweep's tiny synthetic data or, for a search
space file alone, on the digits."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import assert_one_paragraph_error, run_main

TINY_DATA = {"source": "synthetic", "size": 300, "n_features": 6, "classes": 3}
EPOCH_LINE = re.compile(r"^epoch +(\d+)/(\d+)  train_loss \S+  val_loss \S+  val_accuracy \S+  "
                        r"lr \S+  [\d,]+ samples/s$")


@pytest.fixture
def sweep(write_sweep):
    """The conftest sweep (lr on a log scale in [0.001, 0.3], hidden_units an int in
    [16, 64]) on 300 synthetic rows."""
    return write_sweep(data=TINY_DATA, epochs=3, seed=0)


def train(capsys, *args) -> tuple[int, dict | None, str]:
    code, out, err = run_main(capsys, "train", *args, "--device", "cpu")
    lines = out.splitlines()
    assert len(lines) == (1 if code == 0 else 0), out
    return code, json.loads(lines[0]) if lines else None, err


def test_train_prints_an_epoch_line_each_and_the_result_as_json(capsys, sweep):
    code, result, err = train(capsys, sweep, "--set", "lr=0.05", "--epochs", "2", "--seed", "1")
    assert code == 0, err
    epochs = [EPOCH_LINE.match(line) for line in err.splitlines() if line.startswith("epoch")]
    assert all(epochs) and [(m[1], m[2]) for m in epochs] == [("1", "2"), ("2", "2")]
    assert "caviar: data synthetic: 180 train / 60 val / 60 test rows, 6 features, 3 classes" in (
        err)
    assert result["status"] == "completed" and result["epochs"] == 2 and result["seed"] == 1
    # the space's centre (hidden_units: 16 + 0.5 * 48), and the --set value
    assert result["config"] == {"lr": 0.05, "hidden_units": 40}
    assert "caviar: config " + json.dumps(result["config"]) in err
    assert 0 < result["val_loss"] < 5 and 0 < result["train_loss"] < 5
    assert 0 <= result["val_accuracy"] <= 1 and 0 <= result["test_accuracy"] <= 1
    assert result["seconds"] > 0
    assert "note:" not in err  # 0.05 lies inside the space


def test_the_same_seed_trains_to_the_same_result(capsys, sweep):
    args = (sweep, "--set", "lr=0.05", "--epochs", "2", "--seed", "1")
    first, second = train(capsys, *args)[1], train(capsys, *args)[1]
    assert first["val_loss"] == second["val_loss"]
    assert first["test_accuracy"] == second["test_accuracy"]
    other = train(capsys, sweep, "--set", "lr=0.05", "--epochs", "2", "--seed", "2")[1]
    assert other["val_loss"] != first["val_loss"]


def test_without_flags_train_uses_the_sweeps_epochs_and_seed(capsys, sweep):
    code, result, err = train(capsys, sweep)
    assert code == 0, err
    assert result["epochs"] == 3 and result["seed"] == 0
    assert result["config"]["hidden_units"] == 40
    assert result["config"]["lr"] == pytest.approx((1e-3 * 0.3) ** 0.5)  # the log centre
    assert len([line for line in err.splitlines() if line.startswith("epoch ")]) == 3


def test_set_accepts_a_parameter_outside_the_space_and_repeats(capsys, sweep):
    code, result, err = train(capsys, sweep, "--set", "momentum=0.5", "--set", "layers=1",
                              "--set", "activation=tanh", "--epochs", "1")
    assert code == 0, err
    assert result["config"] == {"lr": pytest.approx((1e-3 * 0.3) ** 0.5), "hidden_units": 40,
                                "momentum": 0.5, "layers": 1, "activation": "tanh"}
    assert "note:" not in err  # not in the space: nothing to lie outside of


def test_a_value_outside_the_space_prints_a_note_but_trains(capsys, sweep):
    code, result, err = train(capsys, sweep, "--set", "lr=0.9", "--epochs", "1")
    assert code == 0, err
    assert "caviar: note: --set lr=0.9 lies outside the search space" in err
    assert result["config"]["lr"] == 0.9 and result["status"] in ("completed", "diverged")


def test_an_int_for_a_float_parameter_becomes_a_float(capsys, sweep):
    code, result, err = train(capsys, sweep, "--set", "lr=1", "--epochs", "1")
    assert code == 0, err
    assert isinstance(result["config"]["lr"], float) and result["config"]["lr"] == 1.0


@pytest.mark.parametrize(("args", "fragments"), [
    (["--set", "lrr=0.1"], ["--set 'lrr=0.1': the model has no parameter 'lrr'",
                            "(did you mean 'lr'?)", "it accepts activation, batch_norm"]),
    (["--set", "lr"], ["--set 'lr': expected NAME=VALUE, e.g. --set lr=0.01"]),
    (["--set", "lr=-1"], ["--set 'lr=-1': lr must be a float in (0, inf), got -1.0"]),
    (["--set", "optimizer=adamw"], ["--set 'optimizer=adamw': optimizer must be one of 'sgd'",
                                    "got 'adamw'"]),
    (["--set", "batch_norm=maybe"], ["batch_norm must be a bool (true or false), got 'maybe'"]),
    (["--set", "batch_size=1"], ["{sweep}", "batch_size 1 cannot be used with batch_norm"]),
    (["--epochs", "0"], ["--epochs must be >= 1, got 0"]),
    (["--epochs", "-3"], ["--epochs must be >= 1, got -3"]),
], ids=["typo", "no-value", "negative-lr", "unknown-choice", "not-a-bool", "bn-batch-1",
        "epochs-0", "epochs-negative"])
def test_bad_command_line_input_exits_2_before_training(capsys, sweep, args, fragments):
    code, result, err = train(capsys, sweep, *args)
    assert code == 2 and result is None
    assert_one_paragraph_error(err, *(f.format(sweep=sweep) for f in fragments))
    assert "epoch " not in err and "caviar: data" not in err


def test_a_search_space_file_alone_trains_on_the_digits(capsys, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"parameters": {
        "lr": {"scale": "log", "low": 0.01, "high": 1.0, "default": 0.1},
        "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 32},
        "optimizer": {"fixed": "adam"}}}))
    code, result, err = train(capsys, space, "--epochs", "1")
    assert code == 0, err
    data = re.search(r"caviar: data digits: (\d+) train / (\d+) val / (\d+) test rows, "
                     r"64 features, 10 classes", err)
    assert data, err
    assert sum(int(n) for n in data.groups()) == 1797  # scikit-learn's digits
    assert result["config"] == {"lr": 0.1, "hidden_units": 24, "optimizer": "adam"}
    assert result["epochs"] == 1 and result["seed"] == 0 and result["status"] == "completed"
    assert result["test_accuracy"] > 0.5  # ten classes: chance is a tenth
