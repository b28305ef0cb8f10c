"""``caviar validate``, ``sample`` and ``train`` (cli/spaces.py) on search spaces and sweep files.

A handful of tests run the real command in a subprocess (exit code, stdout and
stderr as a user sees them); the many bad-input cases call ``orchestrator.cli.main``
in-process, which is the same code path without the start-up cost.
"""

from __future__ import annotations

import re

import pytest
from conftest import REPO, assert_one_paragraph_error, caviar, json_lines, run_main

from orchestrator.cli import main

SPACES = REPO / "searchspaces"
SHIPPED = [SPACES / "course.yaml", SPACES / "adam.yaml", SPACES / "lr_vs_eps.yaml"]


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
