"""``caviar validate`` and ``caviar sample`` on search spaces and sweep files.

A handful of tests run the real command in a subprocess (exit code, stdout and
stderr as a user sees them); the many bad-input cases call ``orchestrator.cli.main``
in-process, which is the same code path without the start-up cost.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[3]
SPACES = REPO / "searchspaces"
SHIPPED = [SPACES / "course.yaml", SPACES / "adam.yaml", SPACES / "lr_vs_eps.yaml"]


def caviar(*args: object, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Runs ``caviar ARGS`` as a user would, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "CAVIAR_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def assert_one_paragraph_error(stderr: str, *fragments: str) -> None:
    text = stderr.strip()
    assert text.startswith("caviar: error: "), stderr
    assert "Traceback" not in stderr
    assert "\n\n" not in text and len(text.splitlines()) == 1, stderr
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# --- the real command, in a subprocess ------------------------------------------------

def test_help_exits_0():
    for args in (["--help"], ["sample", "--help"]):
        result = caviar(*args)
        assert result.returncode == 0, result.stderr
        assert "usage: caviar" in result.stdout
    assert "--strategy" in result.stdout and "grid" in result.stdout


def test_validate_accepts_the_shipped_spaces():
    result = caviar("validate", *SHIPPED)
    assert result.returncode == 0, result.stderr
    ok = [line for line in result.stdout.splitlines() if ": OK: " in line]
    assert len(ok) == 3
    assert "course.yaml: OK: search space with 7 parameters (6 tuned)" in result.stdout
    assert "lr: float on log scale [0.0001, 1], priority 1" in result.stdout


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("broken.yaml", "parameters: {lr: {scale: log, low: 1.0e-4, high: 1}\n",
         ["broken.yaml", "not valid YAML"]),
        ("log0.yaml", "parameters:\n  lr: {scale: log, low: 0, high: 1}\n",
         ["log0.yaml", "parameter 'lr'", "field 'low'", "scale 'log' needs low > 0"]),
        ("sweep.yaml", "space: course\nstrategy: {kind: coarse_to_fine, rounds: 0}\n",
         ["sweep.yaml", "key 'strategy.rounds'", "must be a whole number >= 1, got 0"]),
    ],
)
def test_validate_refuses_a_bad_file_with_exit_2_and_one_paragraph(tmp_path, name, text,
                                                                   fragments):
    path = tmp_path / name
    path.write_text(text)
    result = caviar("validate", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_paragraph_error(result.stderr, *fragments)


def test_sample_grid_prints_25_json_lines_with_the_fixed_optimizer():
    result = caviar("sample", SPACES / "lr_vs_eps.yaml", "--strategy", "grid", "--n", "25")
    assert result.returncode == 0, result.stderr
    configs = json_lines(result.stdout)
    assert len(configs) == 25
    assert all(c["optimizer"] == "adam" and set(c) == {"lr", "eps", "optimizer"}
               for c in configs)
    assert len({c["lr"] for c in configs}) == 5
    assert "grid of 5 point(s) per tuned parameter over 2 parameter(s): 25 configurations" in (
        result.stderr)


def test_sample_random_with_a_seed_is_reproducible():
    args = ("sample", SPACES / "course.yaml", "--strategy", "random", "--seed", "3", "--n", "8")
    first, second = caviar(*args), caviar(*args)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
    configs = json_lines(first.stdout)
    assert len(configs) == 8 and all(c["optimizer"] == "momentum" for c in configs)
    assert "drew seed" not in first.stderr


def test_sample_without_a_seed_prints_the_drawn_seed_which_repeats_the_sample():
    result = caviar("sample", SPACES / "lr_vs_eps.yaml", "--n", "5")
    assert result.returncode == 0, result.stderr
    match = re.search(r"no --seed given; drew seed (\d+) \(pass --seed \1 to repeat\)",
                      result.stderr)
    assert match, result.stderr
    again = caviar("sample", SPACES / "lr_vs_eps.yaml", "--n", "5", "--seed", match[1])
    assert again.stdout == result.stdout


# --- the same entry point, in-process --------------------------------------------------

def run_main(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["validate", "sample", "train"])
def test_every_subcommand_has_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: caviar {command}" in capsys.readouterr().out


def test_sample_quasi_random_is_reproducible(capsys):
    args = ("sample", SPACES / "lr_vs_eps.yaml", "--strategy", "quasi_random", "--n", "25",
            "--seed", "5")
    code, out, _ = run_main(capsys, *args)
    assert code == 0
    configs = json_lines(out)
    assert len(configs) == 25 and len({c["lr"] for c in configs}) == 25
    assert run_main(capsys, *args)[1] == out


def test_sample_random_with_another_seed_differs(capsys):
    base = ("sample", SPACES / "course.yaml", "--n", "5", "--seed")
    assert run_main(capsys, *base, 3)[1] != run_main(capsys, *base, 4)[1]


def test_sample_n_below_1_is_bad_input(capsys):
    code, out, err = run_main(capsys, "sample", SPACES / "course.yaml", "--n", "0")
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "--n must be >= 1, got 0")


def test_sample_unknown_strategy_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", str(SPACES / "course.yaml"), "--strategy", "bayes"])
    assert info.value.code == 2
    assert "invalid choice: 'bayes'" in capsys.readouterr().err


BAD_SPACE_FILES = [
    ("not-yaml", "parameters: [lr, {scale: log\n", ["not valid YAML"]),
    ("a-list", "- lr\n- eps\n", ["must hold a YAML mapping at its top level, got a list"]),
    ("empty", "", ["is empty"]),
    ("typo", "parameters:\n  lr: {scle: log, low: 1.0e-4, high: 1}\n",
     ["parameter 'lr'", "field 'scle'", "did you mean 'scale'?"]),
    ("unknown-to-model", "parameters:\n  lrr: {scale: log, low: 1.0e-4, high: 1}\n",
     ["parameter 'lrr'", "did you mean 'lr'?"]),
    ("fixed-refused", "parameters:\n  optimizer: {fixed: momentm}\n",
     ["parameter 'optimizer'", "field 'fixed'", "'momentm'"]),
    ("nan-bound", "parameters:\n  lr: {scale: log, low: .nan, high: 1}\n",
     ["parameter 'lr'", "field 'low'", "must be finite"]),
    ("reverse-log-1", "parameters:\n  momentum: {scale: reverse_log, low: 0.9, high: 1}\n",
     ["parameter 'momentum'", "field 'high'"]),
    ("priority-5", "parameters:\n  lr: {scale: log, low: 1.0e-4, high: 1, priority: 5}\n",
     ["parameter 'lr'", "field 'priority'", "got 5"]),
]


@pytest.mark.parametrize(("name", "text", "fragments"), BAD_SPACE_FILES,
                         ids=[c[0] for c in BAD_SPACE_FILES])
@pytest.mark.parametrize("command", ["validate", "sample"])
def test_bad_space_files_exit_2_naming_the_file(capsys, tmp_path, command, name, text,
                                                fragments):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    code, out, err = run_main(capsys, command, path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, str(path), *fragments)


@pytest.mark.parametrize(("command", "fragments"), [
    ("sample", ["this is a re-tune job file", "caviar validate and caviar retune take it"]),
    ("train", ["this is a re-tune job file"]),
    ("validate", ["key 'sweep'", "must be the path of the sweep file"]),  # checked as one
])
def test_a_retune_file_is_told_apart(capsys, tmp_path, command, fragments):
    path = tmp_path / "retune.yaml"
    path.write_text("model: digits-classifier\ntriggers: [age]\n")
    code, out, err = run_main(capsys, command, path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, str(path), *fragments)


def test_a_missing_file_exits_2(capsys, tmp_path):
    code, _, err = run_main(capsys, "validate", tmp_path / "nope.yaml")
    assert code == 2
    assert_one_paragraph_error(err, f"{tmp_path / 'nope.yaml'}: no such file")


def test_validate_stops_at_the_first_bad_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: {}\n")
    code, out, err = run_main(capsys, "validate", "-q", SHIPPED[0], bad, SHIPPED[1])
    assert code == 2
    assert out.splitlines() == [f"{SHIPPED[0]}: OK: search space with 7 parameters (6 tuned)"]
    assert_one_paragraph_error(err, str(bad), "key 'parameters'")


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
