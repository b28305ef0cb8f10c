"""What a sweep leaves behind, built from its event log (orchestrator/sweep/report.py).

trial_rows and ranked for a min and a max objective, build_summary on a sweep
folder written by hand (trials.jsonl through TrialLog, strategy.json beside it),
write_outputs' summary.json and trials.csv, and the top-trials table and report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from types import SimpleNamespace

import pytest
from conftest import sweep_dict

from models.objective import Objective
from orchestrator.sweep import report
from orchestrator.sweep.records import LOG_FILE, STATE_FILE, TrialLog
from orchestrator.sweep.report import (
    build_summary,
    print_top,
    ranked,
    top_table,
    trial_rows,
    write_outputs,
)
from orchestrator.sweep.spec import parse_sweep
from searchspaces import SearchSpace

MIN = Objective("val_loss", "min")
MAX = Objective("val_accuracy", "max")
SPACE = {"lr": {"scale": "log", "low": 1e-2, "high": 0.3},
         "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 64},
         "optimizer": {"fixed": "sgd"}}
EDGE = "best lr is on the lower edge (0.01 of [0.01, 0.3]): widen the space"  # t1's


def make_spec(**overrides):
    raw = sweep_dict(space=SPACE, strategy={"kind": "random", "trials": 5}, epochs=3,
                     scheduler={"kind": "asha", "grace_epochs": 1, "reduction_factor": 2})
    raw.update(overrides)
    return parse_sweep(raw, "sweep.yaml")


def m(loss, acc, train=None) -> dict:
    return {"val_loss": loss, "val_accuracy": acc, "train_loss": train}


def write_trial(log: TrialLog, tid: str, round_: int, seed: int, lr: float, hidden: int,
                history: list[dict], status: str | None) -> None:
    config = {"lr": lr, "hidden_units": hidden, "optimizer": "sgd", "_round": round_,
              "_seed": seed}
    log.append({"event": "start", "trial_id": tid, "round": round_, "config": config})
    for epoch, metrics in enumerate(history, 1):
        log.append({"event": "result", "trial_id": tid, "epoch": epoch, "metrics": metrics})
    if status is not None:
        log.append({"event": "end", "trial_id": tid, "status": status})


def write_sweep_log(sweep_dir, diverged: int = 2) -> None:
    """Five trials of a 3-epoch sweep. By val_loss: t1 is best at epoch 2 (0.5), then t5
    (0.55, still running), t2 (0.7); t3 and t4 diverged (a null and an infinite loss).
    By val_accuracy: t2 is best (0.9), then t1 (0.82 at epoch 3). ``diverged=1`` makes
    t4 complete instead."""
    log = TrialLog(sweep_dir / LOG_FILE)
    write_trial(log, "t1", 0, 100, 0.01, 32,
                [m(0.9, 0.6, 1.0), m(0.5, 0.8, 0.45), m(0.6, 0.82, 0.4)], "completed")
    write_trial(log, "t2", 0, 101, 0.3, 64, [m(0.7, 0.9, 0.65)], "early_stopped")
    write_trial(log, "t3", 1, 102, 0.2, 40, [m(None, None, None)], "diverged")
    if diverged == 2:
        write_trial(log, "t4", 1, 103, 0.25, 20, [m(math.inf, 0.1)], "diverged")
    else:
        write_trial(log, "t4", 1, 103, 0.25, 20, [m(2.0, 0.1), m(1.9, 0.2), m(1.8, 0.3)],
                    "completed")
    write_trial(log, "t5", 1, 104, 0.05, 48, [m(0.55, 0.7)], None)  # never ended
    log.close()


def write_state(sweep_dir) -> None:
    state = {"strategy": "random",
             # counts as of the file's last write: the summary's come from the event log
             "rounds": [{"round": 0, "trials": 1, "box": {"lr": [0.01, 0.3]}},
                        {"round": 1, "trials": 0, "box": {"lr": [0.02, 0.3]}}]}
    (sweep_dir / STATE_FILE).write_text(json.dumps(state))


@pytest.fixture
def sweep_dir(tmp_path):
    d = tmp_path / "work" / "t"
    write_sweep_log(d)
    write_state(d)
    return d


# -- trial_rows and ranked --------------------------------------------------------------


def history_log(tmp_path, histories: dict[str, list[dict]]) -> TrialLog:
    log = TrialLog(tmp_path / LOG_FILE)
    for i, (tid, history) in enumerate(histories.items()):
        write_trial(log, tid, 0, i, 0.01, 32, history, "completed")
    log.close()
    return TrialLog(tmp_path / LOG_FILE)  # as build_summary reads it: from the file


def test_trial_rows_hold_each_trials_config_seed_status_and_epochs(sweep_dir):
    rows = {r["trial_id"]: r for r in trial_rows(TrialLog(sweep_dir / LOG_FILE), MIN)}
    assert list(rows) == ["t1", "t2", "t3", "t4", "t5"]
    t1 = rows["t1"]
    assert t1["config"] == {"lr": 0.01, "hidden_units": 32, "optimizer": "sgd"}  # no _keys
    assert (t1["round"], t1["seed"], t1["status"], t1["epochs"]) == (0, 100, "completed", 3)
    assert sorted(t1["history"]) == [1, 2, 3]
    assert [rows[t]["status"] for t in rows] == [
        "completed", "early_stopped", "diverged", "diverged", "running"]
    assert [rows[t]["epochs"] for t in rows] == [3, 1, 1, 1, 1]


def test_trial_rows_mark_the_trials_tune_says_failed(sweep_dir):
    rows = trial_rows(TrialLog(sweep_dir / LOG_FILE), MIN, {"t5": "boom", "zz": "unknown"})
    assert [r["status"] for r in rows] == [
        "completed", "early_stopped", "diverged", "diverged", "failed"]


def test_trial_rows_pick_the_best_epoch_for_a_min_objective(tmp_path):
    log = history_log(tmp_path, {
        "a": [m(0.9, 0.5), m(None, 0.6), m(0.4, 0.7), m(-math.inf, 0.8), m(math.nan, 0.9)],
        "b": [m(math.inf, 0.1), m(None, 0.2)],
    })
    a, b = trial_rows(log, MIN)
    assert a["best"] == {**m(0.4, 0.7), "epoch": 3}
    assert b["best"] is None  # no finite value


def test_trial_rows_pick_the_best_epoch_for_a_max_objective(tmp_path):
    log = history_log(tmp_path, {
        "a": [m(0.9, 0.5), m(0.3, None), m(0.4, 0.7), m(0.2, math.inf), m(0.1, math.nan)],
        "b": [m(1.0, None)],
    })
    a, b = trial_rows(log, MAX)
    assert a["best"] == {**m(0.4, 0.7), "epoch": 3}
    assert b["best"] is None


def test_the_first_of_equal_best_epochs_is_taken_in_epoch_order(tmp_path):
    # eleven epochs: epoch 10 comes after epoch 2 (numbers, not strings)
    history = [m(1.0, 0.1)] * 11
    history[1] = history[9] = m(0.5, 0.9)
    (row,) = trial_rows(history_log(tmp_path, {"a": history}), MIN)
    assert row["best"]["epoch"] == 2 and row["epochs"] == 11
    (row,) = trial_rows(history_log(tmp_path / "max", {"a": history}), MAX)
    assert row["best"]["epoch"] == 2


def test_ranked_puts_the_best_first_for_a_min_objective(sweep_dir):
    rows = trial_rows(TrialLog(sweep_dir / LOG_FILE), MIN)
    # t3 (null) and t4 (infinite) never scored
    assert [r["trial_id"] for r in ranked(rows, MIN)] == ["t1", "t5", "t2"]


def test_ranked_puts_the_best_first_for_a_max_objective(sweep_dir):
    rows = trial_rows(TrialLog(sweep_dir / LOG_FILE), MAX)
    assert [r["trial_id"] for r in ranked(rows, MAX)] == ["t2", "t1", "t5", "t4"]


def test_ranked_leaves_out_the_trials_that_never_scored(tmp_path):
    rows = trial_rows(history_log(tmp_path, {"a": [m(None, None)], "b": [m(0.3, 0.3)]}), MIN)
    assert [r["trial_id"] for r in ranked(rows, MIN)] == ["b"]
    assert ranked([], MIN) == []


# -- build_summary ----------------------------------------------------------------------


def test_build_summary_gives_design_md_summary(sweep_dir):
    spec = make_spec()
    summary, rows = build_summary(spec, sweep_dir, [], time.time() - 12.5, budget=spec.budget)
    assert set(summary) == {"name", "strategy", "scheduler", "metric", "wall_seconds",
                            "complete", "trials", "best", "rounds", "warnings", "mlflow"}
    assert (summary["name"], summary["strategy"], summary["scheduler"]) == ("t", "random", "asha")
    assert summary["metric"] == {"name": "val_loss", "mode": "min"}
    assert 12.5 <= summary["wall_seconds"] < 20
    assert summary["trials"] == {"total": 5, "completed": 1, "early_stopped": 1, "diverged": 2,
                                 "failed": 0}
    assert summary["complete"] is False  # t5 never ended
    assert summary["best"] == {
        "trial_id": "t1", "config": {"lr": 0.01, "hidden_units": 32, "optimizer": "sgd"},
        "seed": 100, "round": 0, "epoch": 2,
        "metrics": {"val_loss": 0.5, "val_accuracy": 0.8, "train_loss": 0.45},
        "mlflow_run_id": None}
    assert summary["rounds"] == [{"round": 0, "trials": 2, "box": {"lr": [0.01, 0.3]}},
                                 {"round": 1, "trials": 3, "box": {"lr": [0.02, 0.3]}}]
    assert summary["warnings"][0] == EDGE
    assert len(summary["warnings"]) == 2
    assert summary["warnings"][1].startswith("2 of 5 trials diverged")
    assert "narrow it" in summary["warnings"][1]
    assert summary["mlflow"] == {"tracking_uri": None, "experiment_id": None,
                                 "parent_run_id": None}
    assert [r["trial_id"] for r in rows] == ["t1", "t2", "t3", "t4", "t5"]
    json.dumps(summary)  # JSON as it stands: no inf, no NaN, no objects
    assert "Infinity" not in json.dumps(summary) and "NaN" not in json.dumps(summary)


def test_build_summary_for_a_max_metric_picks_the_highest(sweep_dir):
    spec = make_spec(metric={"name": "val_accuracy"})
    summary, _ = build_summary(spec, sweep_dir, None, time.time())
    assert summary["metric"] == {"name": "val_accuracy", "mode": "max"}
    best = summary["best"]
    assert (best["trial_id"], best["epoch"], best["seed"], best["round"]) == ("t2", 1, 101, 0)
    assert best["metrics"] == {"val_loss": 0.7, "val_accuracy": 0.9, "train_loss": 0.65}


def test_a_trial_tune_reports_failed_counts_as_failed_and_completes_the_sweep(sweep_dir):
    spec = make_spec()
    results = [SimpleNamespace(metrics={"trial_id": "t5"}, error=RuntimeError("boom")),
               SimpleNamespace(metrics={"trial_id": "t1"}, error=None),
               SimpleNamespace(metrics=None, error=RuntimeError("no id"))]
    summary, rows = build_summary(spec, sweep_dir, results, time.time(), budget=5)
    assert summary["trials"]["failed"] == 1 and summary["trials"]["completed"] == 1
    assert rows[-1]["status"] == "failed"
    assert summary["complete"] is True
    # fewer ended trials than the budget: not complete
    summary, _ = build_summary(spec, sweep_dir, results, time.time(), budget=6)
    assert summary["complete"] is False


@pytest.mark.parametrize("diverged, warned", [(2, True), (1, False)])
def test_the_diverged_warning_needs_more_than_a_fifth_of_the_trials(tmp_path, diverged,
                                                                    warned):
    write_sweep_log(tmp_path, diverged=diverged)  # 2 of 5 is 40%, 1 of 5 exactly 20%
    summary, _ = build_summary(make_spec(), tmp_path, [], time.time())
    assert summary["trials"]["diverged"] == diverged
    assert any("diverged" in w for w in summary["warnings"]) is warned


def test_a_sweep_without_strategy_json_has_no_rounds_and_still_its_edge_warning(tmp_path):
    write_sweep_log(tmp_path, diverged=1)
    summary, _ = build_summary(make_spec(), tmp_path, [], time.time())
    assert summary["rounds"] == [] and summary["warnings"] == [EDGE]
    assert summary["best"]["trial_id"] == "t1"


def test_the_edge_warning_follows_the_best_trial_of_the_metric(sweep_dir):
    """By val_accuracy t2 is best, its lr 0.3 on the upper edge; t1's 0.01 says nothing."""
    summary, _ = build_summary(make_spec(metric={"name": "val_accuracy"}), sweep_dir, [],
                               time.time())
    assert summary["warnings"][0] == (
        "best lr is on the upper edge (0.3 of [0.01, 0.3]): widen the space")
    assert not any("lower edge" in w for w in summary["warnings"])


def test_a_sweep_whose_every_trial_diverged_has_no_best_nor_edge_warning(tmp_path):
    """A diverged trial's lr at the edge says nothing about where the optimum is."""
    log = TrialLog(tmp_path / LOG_FILE)
    write_trial(log, "t1", 0, 100, 0.01, 16, [m(math.nan, None)], "diverged")
    log.close()
    summary, _ = build_summary(make_spec(), tmp_path, [], time.time())
    assert summary["best"] is None
    assert not any("edge" in w for w in summary["warnings"])


EDGE_SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
    "layers": {"scale": "linear", "type": "int", "low": 2, "high": 4},
    "batch_size": {"choice": [32, 64]}}})


@pytest.mark.parametrize(("config", "margin", "found"), [
    ({"lr": 1e-4, "layers": 3, "batch_size": 32}, 0.05, [("lr", "lower")]),
    ({"lr": 1.5e-4, "layers": 3, "batch_size": 32}, 0.05, [("lr", "lower")]),  # u 0.044
    ({"lr": 2e-4, "layers": 3, "batch_size": 32}, 0.05, []),  # u 0.075
    ({"lr": 2e-4, "layers": 3, "batch_size": 32}, 0.1, [("lr", "lower")]),
    ({"lr": 0.7, "layers": 4, "batch_size": 64}, 0.05, [("lr", "upper"), ("layers", "upper")]),
    ({"lr": 0.01, "layers": 2, "batch_size": 32}, 0.05, [("layers", "lower")]),
    ({"lr": 0.01, "layers": 3, "batch_size": 64}, 0.05, []),  # a choice has no edge
], ids=["on-bound", "near", "not-near", "wider-margin", "two", "int", "middle"])
def test_edges_name_the_parameters_of_a_config_near_a_bound(config, margin, found):
    edges = report.edges(EDGE_SPACE, config, margin)
    assert [(e["parameter"], e["edge"]) for e in edges] == found
    for e in edges:
        assert e["value"] == config[e["parameter"]]
        assert e["message"].startswith(f"best {e['parameter']} is on the {e['edge']} edge")
        assert e["message"].endswith("widen the space")


def test_a_sweep_without_results_has_no_best(tmp_path):
    summary, rows = build_summary(make_spec(), tmp_path, [], time.time(), budget=5)
    assert rows == [] and summary["best"] is None
    assert summary["trials"] == {"total": 0, "completed": 0, "early_stopped": 0,
                                 "diverged": 0, "failed": 0}
    assert summary["complete"] is False


# -- write_outputs ----------------------------------------------------------------------


def test_write_outputs_writes_summary_json_and_trials_csv(sweep_dir, tmp_path):
    spec = make_spec()
    summary, rows = build_summary(spec, sweep_dir, [], time.time(), budget=5)
    out = tmp_path / "out" / "t"  # made when missing
    write_outputs(spec, out, summary, rows)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "trials.csv"]
    assert list(out.glob("*.tmp")) == []
    assert json.loads((out / "summary.json").read_text()) == summary
    with (out / "trials.csv").open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["trial_id", "round", "status", "lr", "hidden_units", "optimizer",
                        "best_val_loss", "best_epoch", "epochs", "seed"]
    assert table[1:] == [
        ["t1", "0", "completed", "0.01", "32", "sgd", "0.5", "2", "3", "100"],
        ["t2", "0", "early_stopped", "0.3", "64", "sgd", "0.7", "1", "1", "101"],
        ["t3", "1", "diverged", "0.2", "40", "sgd", "", "", "1", "102"],
        ["t4", "1", "diverged", "0.25", "20", "sgd", "", "", "1", "103"],
        ["t5", "1", "running", "0.05", "48", "sgd", "0.55", "1", "1", "104"],
    ]


def test_write_outputs_sorts_by_round_then_trial_and_names_the_metric(tmp_path):
    d = tmp_path / "t"
    log = TrialLog(d / LOG_FILE)
    write_trial(log, "b", 1, 3, 0.02, 20, [m(0.5, 0.6)], "completed")
    write_trial(log, "c", 0, 2, 0.03, 30, [m(0.4, 0.7)], "completed")
    write_trial(log, "a", 1, 1, 0.04, 40, [m(0.3, 0.8), m(0.35, 0.85)], "completed")
    log.close()
    spec = make_spec(metric={"name": "val_accuracy", "mode": "max"})
    summary, rows = build_summary(spec, d, [], time.time())
    (d / "summary.json").write_text("old\n")  # replaced whole
    write_outputs(spec, d, summary, rows)
    assert json.loads((d / "summary.json").read_text())["best"]["trial_id"] == "a"
    with (d / "trials.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["round"], r["trial_id"]) for r in table] == [("0", "c"), ("1", "a"), ("1", "b")]
    assert [(r["best_val_accuracy"], r["best_epoch"]) for r in table] == [
        ("0.7", "1"), ("0.85", "2"), ("0.6", "1")]
    assert "best_val_loss" not in table[0]
    assert sorted(p.name for p in d.iterdir()) == sorted([LOG_FILE, "summary.json", "trials.csv"])


# -- top_table and print_top ------------------------------------------------------------


def cells_at_columns(table: str) -> list[list[str]]:
    """Each line cut at the header's column starts: checks the columns line up."""
    lines = table.splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    out = []
    for line in lines:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], len(line)])]
        out.append(cells)
    return out


def test_top_table_lists_the_best_trials_in_aligned_columns(sweep_dir):
    rows = trial_rows(TrialLog(sweep_dir / LOG_FILE), MIN)
    table = top_table(rows, MIN, n=3)
    assert cells_at_columns(table) == [
        ["rank", "trial", "round", "status", "val_loss", "epochs", "lr", "hidden_units",
         "optimizer"],
        ["1", "t1", "0", "completed", "0.5", "3", "0.01", "32", "sgd"],
        ["2", "t5", "1", "running", "0.55", "1", "0.05", "48", "sgd"],
        ["3", "t2", "0", "early_stopped", "0.7", "1", "0.3", "64", "sgd"],
    ]


def test_top_table_for_a_max_objective_formats_floats_to_four_digits(tmp_path):
    log = TrialLog(tmp_path / LOG_FILE)
    write_trial(log, "a", 0, 0, 0.0123456, 32, [m(0.5, 0.812345)], "completed")
    write_trial(log, "b", 0, 1, 0.2, 16, [m(0.4, 0.9)], "completed")
    write_trial(log, "c", 0, 2, 0.2, 16, [m(None, None)], "diverged")
    log.close()
    rows = trial_rows(TrialLog(tmp_path / LOG_FILE), MAX)
    cells = cells_at_columns(top_table(rows, MAX))
    assert cells[0][4] == "val_accuracy"
    assert [c[:5] for c in cells[1:]] == [["1", "b", "0", "completed", "0.9"],
                                         ["2", "a", "0", "completed", "0.8123"]]
    assert cells[2][6] == "0.01235"


def test_top_table_is_empty_when_no_trial_scored(tmp_path):
    rows = trial_rows(history_log(tmp_path, {"a": [m(None, None)]}), MIN)
    assert top_table(rows, MIN) == ""


def test_print_top_reports_counts_table_warnings_and_the_best(sweep_dir):
    summary, rows = build_summary(make_spec(), sweep_dir, [], time.time(), budget=5)
    summary["wall_seconds"] = 12.34
    table = top_table(rows, MIN)
    stream = io.StringIO()
    print_top(summary, table, stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("caviar: sweep 't' stopped after 12.3 s: 5 trials (1 completed, "
                        "1 early stopped, 2 diverged, 0 failed)")
    assert lines[1:1 + len(table.splitlines())] == table.splitlines()
    assert lines[-4:] == [
        f"caviar: warning: {EDGE}",
        "caviar: warning: " + summary["warnings"][1],
        "caviar: best trial t1 (round 0, epoch 2): val_loss 0.5, val_accuracy 0.8",
        'caviar: best config {"lr": 0.01, "hidden_units": 32, "optimizer": "sgd"}',
    ]
    assert len(lines) == 1 + len(table.splitlines()) + 4


def test_print_top_of_a_complete_sweep_says_done_and_writes_to_stderr(sweep_dir, capsys):
    results = [SimpleNamespace(metrics={"trial_id": "t5"}, error=RuntimeError("boom"))]
    summary, _ = build_summary(make_spec(), sweep_dir, results, time.time(), budget=5)
    summary["wall_seconds"] = 3.0
    print_top(summary)  # no table: the report goes on without it
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == ("caviar: sweep 't' done after 3.0 s: 5 trials (1 completed, "
                        "1 early stopped, 2 diverged, 1 failed)")
    assert lines[1] == f"caviar: warning: {EDGE}"
    assert len(lines) == 5


def test_print_top_without_a_best_trial_says_so(tmp_path):
    summary, _ = build_summary(make_spec(), tmp_path, [], time.time())
    summary["wall_seconds"] = 0.04
    stream = io.StringIO()
    print_top(summary, "a table", stream=stream)
    assert stream.getvalue().splitlines() == [
        "caviar: sweep 't' done after 0.0 s: 0 trials (0 completed, 0 early stopped, "
        "0 diverged, 0 failed)",
        "caviar: no trial reported a result",
    ]
