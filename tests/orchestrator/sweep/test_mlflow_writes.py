"""The event log translated into MLflow writes (orchestrator/sweep/mlflow_writes.py): events
in, a batch per trial out, without MLflow or Ray. What MLflow holds of each trial's run is
a ``Progress`` handed in; the writer (tracking/runs.py) records each batch it wrote with
``Progress.wrote``, as ``wrote`` below does."""

from __future__ import annotations

import json

import pytest

from orchestrator.sweep.mlflow_writes import events_of, translate
from orchestrator.tracking.runs import Progress

T = 1_700_000_000.0


def start(tid="a", t=T, **config) -> dict:
    config = {"lr": 0.1, "hidden_units": 8, "_seed": 3, "_round": 0, **config}
    return {"event": "start", "trial_id": tid, "round": config["_round"], "config": config,
            "time": t, "restarted": False}


def result(epoch: int, tid="a", t=None, replayed=False, **metrics) -> dict:
    metrics = {"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0 / epoch,
               "val_accuracy": 0.5, "lr": 0.1, "node_id": "n1", "device": "cpu", **metrics}
    e = {"event": "result", "trial_id": tid, "epoch": epoch, "metrics": metrics,
         "time": T + epoch if t is None else t}
    return {**e, "replayed": True} if replayed else e


def end(status="completed", tid="a") -> dict:
    return {"event": "end", "trial_id": tid, "status": status, "time": T + 100}


def forget(tid="a") -> dict:
    return {"event": "forget", "trial_id": tid, "time": T + 100}


class Held:
    """What MLflow holds, per trial, as the writer would tell it; records what was asked."""

    def __init__(self, **progress: Progress):
        self.table = dict(progress)
        self.asked: list[tuple[str, bool, bool]] = []

    def __call__(self, tid: str, find: bool = True, steps: bool = False) -> Progress:
        self.asked.append((tid, find, steps))
        return self.table.setdefault(tid, Progress())

    def wrote(self, batches) -> None:
        for tid, b in batches.items():
            p = self.table[tid]
            p.run_id = p.run_id or f"run-{tid}"
            p.wrote(b)


def steps_of(batch, key="val_loss") -> list[int]:
    return [step for k, _, _, step in batch.metrics if k == key]


def test_a_trial_becomes_a_run_with_its_params_metrics_per_epoch_node_tags_and_end():
    batches = translate([start(), result(1), result(2), end()], Held())
    assert list(batches) == ["a"]
    b = batches["a"]
    assert b.name == "trial-a"
    assert b.create == {"caviar.kind": "trial", "caviar.round": "0", "caviar.status": "running"}
    assert b.params == {"lr": "0.1", "hidden_units": "8", "seed": "3"}  # no _round, _seed
    assert ("val_loss", 0.5, int((T + 2) * 1000), 2) in b.metrics
    assert {k for k, *_ in b.metrics} == {"train_loss", "val_loss", "val_accuracy", "lr"}
    assert steps_of(b) == [1, 2] and b.steps == {(1, int((T + 1) * 1000)),
                                                 (2, int((T + 2) * 1000))}
    assert b.tags == {"caviar.status": "completed", "caviar.node_id": "n1",
                      "caviar.device": "cpu"}
    assert b.end == "FINISHED"


@pytest.mark.parametrize(("status", "end_status"), [
    ("completed", "FINISHED"), ("early_stopped", "FINISHED"), ("diverged", "FINISHED"),
    ("failed", "FAILED"), ("something new", "FINISHED")])
def test_a_trials_status_ends_its_run(status, end_status):
    b = translate([start(), end(status)], Held())["a"]
    assert b.tags["caviar.status"] == status and b.end == end_status


def test_a_run_is_made_with_the_round_of_the_event_that_first_names_it():
    assert translate([start(_round=2)], Held())["a"].create["caviar.round"] == "2"
    # a log whose start was written in an earlier sync: the result names the trial first
    assert translate([result(3)], Held())["a"].create["caviar.round"] == "0"


def test_a_metric_a_trial_did_not_report_or_that_was_not_finite_is_left_out():
    b = translate([start(), result(1, val_loss=None, lr=None)], Held())["a"]
    assert {k for k, *_ in b.metrics} == {"train_loss", "val_accuracy"}


def test_trials_get_a_batch_each_in_the_order_they_first_appear():
    events = [start("b"), start("a"), result(1, "a"), result(1, "b"), end(tid="a")]
    batches = translate(events, Held())
    assert list(batches) == ["b", "a"]
    assert batches["a"].end == "FINISHED" and batches["b"].end is None


def test_pbt_changed_values_become_tags_and_a_metric_at_the_next_epoch():
    """MLflow refuses a changed param: the first values stay params; a value PBT changed
    is a caviar.hp tag, and a number also an hp_ metric at the first epoch after it."""
    events = [start(), result(1), start(lr=0.2, optimizer="adam"), result(2), result(3)]
    b = translate(events, Held())["a"]
    assert b.params["lr"] == "0.1" and "optimizer" not in b.params
    assert b.tags["caviar.hp.lr"] == "0.2" and b.tags["caviar.hp.optimizer"] == "adam"
    assert [(k, v, step) for k, v, _, step in b.metrics if k.startswith("hp_")] == \
        [("hp_lr", 0.2, 2)]


def test_pbt_changes_are_judged_against_the_params_the_run_already_holds():
    held = Held(a=Progress("run-a", {"lr": "0.1", "hidden_units": "8", "seed": "3"}))
    b = translate([start(lr=0.1, hidden_units=True)], held)["a"]
    assert b.params == {}
    assert b.tags == {"caviar.hp.hidden_units": "True", "caviar.status": "running"}
    assert b.metrics == []  # a bool is no number to plot: a tag only


def test_a_restart_reopens_the_run_an_end_closed():
    b = translate([start(), end("failed"), start()], Held())["a"]
    assert b.tags["caviar.status"] == "running" and b.end is None


def test_a_forgotten_trial_ends_its_run_killed_and_one_without_a_run_is_left_alone():
    held = Held(a=Progress("run-a"))
    batches = translate([forget("a"), forget("b")], held)
    assert list(batches) == ["a"]
    assert batches["a"].tags == {"caviar.status": "forgotten"}
    assert batches["a"].end == "KILLED"
    assert ("a", False, False) in held.asked and ("b", False, False) in held.asked  # no search


def test_a_trial_forgotten_in_the_batch_that_started_it_is_made_and_killed():
    b = translate([start(), result(1), forget()], Held())["a"]
    assert b.create["caviar.kind"] == "trial" and b.params and steps_of(b) == [1]
    assert b.tags["caviar.status"] == "forgotten" and b.end == "KILLED"


def test_progress_is_asked_with_steps_only_for_results():
    held = Held()
    translate([start(), result(1), end()], held)
    assert held.asked == [("a", True, False), ("a", True, True), ("a", True, False)]


def test_the_same_events_handed_again_after_their_batch_was_written_write_nothing_new():
    """A sync that failed midway is retried from the same cursor: runs already written
    get no metric again and no param (their params are known)."""
    events = [start(), result(1), result(2), start("b"), result(1, "b")]
    held = Held()
    first = translate(events, held)
    held.wrote({"a": first["a"]})  # "b" failed
    again = translate(events, held)
    assert again["a"].metrics == [] and again["a"].params == {}
    assert again["b"].metrics == first["b"].metrics and again["b"].params == first["b"].params


def test_steps_an_earlier_process_wrote_are_not_written_again():
    held = Held(a=Progress("run-a", {"lr": "0.1"}, earlier_step=2, last_step=2,
                           steps_known=True))
    b = translate([result(1), result(2), result(3)], held)["a"]
    assert steps_of(b) == [3]


def test_a_replayed_epoch_is_written_only_when_mlflow_and_the_batch_lack_it():
    """After a resume, epochs Tune never recorded are replayed from the checkpoint: one
    MLflow holds (or this batch holds) is left out; a new one is written."""
    held = Held(a=Progress("run-a", {"lr": "0.1"}))
    first = translate([result(1), result(2)], held)
    held.wrote(first)
    b = translate([result(2, t=T + 50, replayed=True), result(3, t=T + 51, replayed=True),
                   result(3, t=T + 52, replayed=True)], held)["a"]
    assert steps_of(b) == [3]


def test_a_step_logged_again_at_another_time_is_written_unless_replayed():
    """A trial PBT restarts from another's checkpoint may report an epoch it passed: MLflow
    keeps both values, told apart by their time."""
    held = Held(a=Progress("run-a", {"lr": "0.1"}))
    held.wrote(translate([result(1), result(2)], held))
    b = translate([result(2, t=T + 60)], held)["a"]
    assert steps_of(b) == [2] and b.steps == {(2, int((T + 60) * 1000))}


def test_events_of_skips_a_line_a_crash_cut_short_and_lines_that_are_no_events():
    lines = [json.dumps(start()), json.dumps(result(1))[:20], "[1, 2]", '{"trial_id": "a"}',
             json.dumps(end())]
    events = events_of("\n".join(lines).encode() + b"\n")
    assert [e["event"] for e in events] == ["start", "end"]
