"""The sweep file: every section checked at load, frozen, and its errors as a user sees them.

The bad-file cases go through ``caviar validate`` in-process (``run_main``): exit 2 and
one paragraph naming the file, the key and the rule. The rest call ``parse_sweep``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_one_paragraph_error, json_lines, run_main

SPACES = REPO / "searchspaces"

# --- sweep files -----------------------------------------------------------------------

GOOD_SWEEP = {
    "name": "tiny-c2f",
    "data": {"source": "digits"},
    "model": {"kind": "mlp", "batch_norm": True, "activation": "relu"},
    "space": "course",
    "strategy": {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 4, "keep": 0.25,
                 "margin": 0.1},
    "scheduler": {"kind": "asha", "grace_epochs": 1},
    "epochs": 3,
    "metric": {"name": "val_loss", "mode": "min"},
    "resources": {"cpu": 1, "gpu": 0, "concurrency": 2},
    "seed": 0,
}


def write_sweep(tmp_path: Path, sweep: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def changed(**changes) -> dict:
    """GOOD_SWEEP with top-level keys replaced (None deletes) or, for 'a.b', one nested key."""
    sweep = json.loads(json.dumps(GOOD_SWEEP))
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            sweep[section] = {**sweep.get(section, {}), sub: value}
        elif value is None:
            sweep.pop(section, None)
        else:
            sweep[section] = value
    return sweep


def test_validate_accepts_a_good_sweep(capsys, tmp_path):
    path = write_sweep(tmp_path, GOOD_SWEEP)
    code, out, err = run_main(capsys, "validate", path)
    assert code == 0, err
    assert (f"{path}: OK: sweep 'tiny-c2f': strategy coarse_to_fine, scheduler asha, 3 epochs, "
            "metric val_loss (min), data digits; search space with 7 parameters (6 tuned)") in out


@pytest.mark.parametrize(
    "space",
    [
        "course",
        "adam.yaml",
        "mine.yaml",  # next to the sweep file
        "ABSOLUTE",
        {"lr": {"scale": "log", "low": 1e-4, "high": 1.0}, "optimizer": {"fixed": "adam"}},
        {"parameters": {"lr": {"scale": "log", "low": 1e-4, "high": 1.0},
                        "optimizer": {"fixed": "adam"}}},
    ],
    ids=["builtin-name", "builtin-file", "beside-the-sweep", "absolute-path", "inline",
         "inline-with-parameters-key"],
)
def test_a_sweep_space_may_be_a_name_a_path_or_inline(capsys, tmp_path, space):
    mine = tmp_path / "mine.yaml"
    mine.write_text((SPACES / "lr_vs_eps.yaml").read_text())
    sweep = changed(space=str(mine) if space == "ABSOLUTE" else space)
    path = write_sweep(tmp_path, sweep)
    code, out, err = run_main(capsys, "validate", "-q", path)
    assert code == 0, err
    code, out, err = run_main(capsys, "sample", path, "--strategy", "grid", "--n", "4")
    assert code == 0, err
    assert json_lines(out)


@pytest.mark.parametrize("strategy", [
    {"kind": "random", "trials": 8}, {"kind": "quasi_random"}, {"kind": "tpe", "trials": 3},
    {"kind": "grid", "points": 3}, {"kind": "coarse_to_fine", "sampler": "quasi_random"},
])
def test_every_strategy_kind_validates(capsys, tmp_path, strategy):
    code, _, err = run_main(capsys, "validate", write_sweep(tmp_path, changed(strategy=strategy)))
    assert code == 0, err


@pytest.mark.parametrize("scheduler", [
    {"kind": "fifo"}, {"kind": "asha", "grace_epochs": 3, "reduction_factor": 2},
    {"kind": "pbt", "perturbation_interval": 1, "hyperparameters": ["lr", "momentum"]},
])
def test_every_scheduler_kind_validates(capsys, tmp_path, scheduler):
    # PBT evolves a random population: it goes with random or quasi_random only.
    strategy = {"kind": "random", "trials": 4} if scheduler["kind"] == "pbt" else None
    sweep = changed(scheduler=scheduler, **({"strategy": strategy} if strategy else {}))
    code, _, err = run_main(capsys, "validate", write_sweep(tmp_path, sweep))
    assert code == 0, err


def test_pbt_with_coarse_to_fine_is_refused(capsys, tmp_path):
    sweep = changed(scheduler={"kind": "pbt"}, strategy={"kind": "coarse_to_fine"})
    code, _, err = run_main(capsys, "validate", write_sweep(tmp_path, sweep))
    assert code == 2
    assert "key 'scheduler.kind'" in err and "use strategy random or quasi_random" in err


BAD_SWEEPS = [
    ("unknown-strategy", changed(strategy={"kind": "bayes"}),
     ["key 'strategy.kind'", "must be one of random, quasi_random, grid, tpe, coarse_to_fine",
      "got 'bayes'"]),
    ("unknown-scheduler", changed(scheduler={"kind": "hyperband"}),
     ["key 'scheduler.kind'", "must be one of fifo, asha, pbt", "got 'hyperband'"]),
    ("rounds-0", changed(strategy__rounds=0),
     ["key 'strategy.rounds'", "must be a whole number >= 1, got 0"]),
    ("rounds-float", changed(strategy__rounds=2.5), ["key 'strategy.rounds'", "got 2.5"]),
    ("keep-0", changed(strategy__keep=0), ["key 'strategy.keep'", "must be a number in (0, 1]",
                                           "got 0"]),
    ("keep-1.5", changed(strategy__keep=1.5), ["key 'strategy.keep'", "got 1.5"]),
    ("margin-negative", changed(strategy__margin=-0.1), ["key 'strategy.margin'", "got -0.1"]),
    ("sampler-grid", changed(strategy__sampler="grid"), ["key 'strategy.sampler'"]),
    ("strategy-key-of-another-kind", changed(strategy={"kind": "random", "points": 5}),
     ["key 'strategy.points'", "unknown key", "allowed keys are kind, trials"]),
    ("metric-val-f1", changed(metric={"name": "val_f1"}),
     ["key 'metric.name'", "val_loss, val_accuracy, train_loss", "got 'val_f1'"]),
    ("metric-wrong-mode", changed(metric={"name": "val_accuracy", "mode": "min"}),
     ["key 'metric.mode'", "val_accuracy is better when maximised"]),
    ("unknown-top-key", changed(epoch=5),
     ["key 'epoch'", "unknown key (did you mean 'epochs'?)"]),
    ("gpu-1.5", changed(resources__gpu=1.5),
     ["key 'resources.gpu'", "more than one must be whole, got 1.5"]),
    ("gpu-negative", changed(resources__gpu=-1), ["key 'resources.gpu'", "got -1"]),
    ("cpu-0", changed(resources__cpu=0), ["key 'resources.cpu'", "got 0"]),
    ("concurrency-0", changed(resources__concurrency=0), ["key 'resources.concurrency'"]),
    ("epochs-0", changed(epochs=0), ["key 'epochs'", "got 0"]),
    ("grace-above-epochs", changed(scheduler={"kind": "asha", "grace_epochs": 5}),
     ["key 'scheduler.grace_epochs'", "must be <= epochs (3), got 5"]),
    ("pbt-untuned", changed(scheduler={"kind": "pbt", "hyperparameters": ["optimizer"]},
                            strategy={"kind": "random"}),
     ["key 'scheduler.hyperparameters'", "'optimizer' is not a tuned parameter"]),
    ("seed-negative", changed(seed=-1), ["key 'seed'", "got -1"]),
    ("bad-name", changed(name="my sweep"), ["key 'name'", "got 'my sweep'"]),
    ("model-kind", changed(model={"kind": "cnn"}), ["key 'model.kind'", "got 'cnn'"]),
    ("model-unknown-key", changed(model={"dropout": 0.5}), ["key 'model.dropout'",
                                                             "unknown key"]),
    ("model-and-space", changed(model={"hidden_units": 64}),
     ["key 'model.hidden_units'", "is set in 'model' and in the search space"]),
    ("data-source", changed(data={"source": "mnist"}), ["data: key 'source'", "got 'mnist'"]),
    ("no-space", changed(space=None), ["missing key 'space'"]),
    ("space-not-found", changed(space="nowhere.yaml"),
     ["key 'space'", "no such file 'nowhere.yaml'", "built-in spaces are adam, course, "
      "lr_vs_eps"]),
    ("inline-space-unknown-parameter",
     changed(space={"lrr": {"scale": "log", "low": 1e-4, "high": 1.0}}),
     ["key 'space'", "parameter 'lrr'", "did you mean 'lr'?"]),
    ("inline-space-bad-bound",
     changed(space={"lr": {"scale": "log", "low": 0, "high": 1.0}}),
     ["key 'space'", "parameter 'lr'", "field 'low'", "needs low > 0"]),
    ("register-without-name", changed(register={"promote": True}), ["key 'register.name'"]),
    ("start-unknown-parameter", changed(strategy__start={"lrr": 0.1}),
     ["key 'strategy.start.lrr'", "did you mean 'lr'?"]),
    ("start-not-a-value", changed(strategy__start={"batch_size": 48}),
     ["key 'strategy.start.batch_size'", "is not a value of this parameter", "got 48"]),
    ("start-not-a-mapping", changed(strategy__start=[0.1]), ["key 'strategy.start'"]),
    ("width-0", changed(strategy__width=0), ["key 'strategy.width'", "got 0"]),
    ("seed-1e29", changed(seed=10**29), ["key 'seed'", "in [0, 2147483647]"]),
    ("name-mlflow.db", changed(name="mlflow.db"), ["key 'name'", "'mlflow.db' is taken"]),
    ("name-ray", changed(name="ray"), ["key 'name'", "its folder would take their place"]),
    ("register-name-quote", changed(register={"name": "it's"}),
     ["key 'register.name'", "1-100 letters", "got \"it's\""]),
    ("babysit-keep-0", changed(babysit={"keep": 0}), ["key 'babysit.keep'", "got 0"]),
    ("babysit-unknown", changed(babysit={"every": 2}), ["key 'babysit.every'"]),
    ("synthetic-too-big", changed(data={"source": "synthetic", "size": 10**9,
                                        "n_features": 20}),
     ["synthetic data of 1,000,000,000 rows x 20 features takes about 160.0 GB"]),
]


@pytest.mark.parametrize(("sweep", "fragments"), [c[1:] for c in BAD_SWEEPS],
                         ids=[c[0] for c in BAD_SWEEPS])
def test_validate_refuses_a_bad_sweep_with_exit_2(capsys, tmp_path, sweep, fragments):
    path = write_sweep(tmp_path, sweep)
    code, out, err = run_main(capsys, "validate", path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, str(path), *fragments)


def test_a_sweep_space_file_with_an_error_is_named_in_the_message(capsys, tmp_path):
    space = tmp_path / "mine.yaml"
    space.write_text("parameters:\n  momentum: {scale: reverse_log, low: -0.1, high: 0.9}\n")
    code, _, err = run_main(capsys, "validate", write_sweep(tmp_path, changed(space="mine.yaml")))
    assert code == 2
    assert_one_paragraph_error(err, "mine.yaml", "parameter 'momentum'", "field 'low'")


def test_a_tracking_uri_with_a_password_in_a_sweep_file_is_refused(capsys, tmp_path):
    path = write_sweep(tmp_path, {**GOOD_SWEEP,
                                  "tracking": {"uri": "http://ann:s3cret@mlflow:5000"}})
    code, _, err = run_main(capsys, "validate", path)
    assert code == 2
    assert_one_paragraph_error(err, str(path), "key 'tracking.uri'", "MLFLOW_TRACKING_PASSWORD")
    assert "s3cret" not in err


def test_storage_goes_round_the_sweep_file(tmp_path):
    from orchestrator.sweep.spec import parse_sweep

    spec = parse_sweep({**GOOD_SWEEP, "storage": "s3://bucket/caviar"}, "s.yaml", tmp_path)
    assert spec.storage == "s3://bucket/caviar"
    assert parse_sweep(spec.to_dict(), "again.yaml", tmp_path).storage == spec.storage
    assert "storage" not in parse_sweep(GOOD_SWEEP, "s.yaml", tmp_path).to_dict()
