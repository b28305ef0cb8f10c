"""The sweep's event log and its driver-side callback (orchestrator/sweep/records.py).

TrialLog replays ``trials.jsonl`` (start / result / end / forget events), survives
a line cut short by a crash, and appends; trial_status names how a trial ended;
prune_checkpoints keeps a trial's newest checkpoints; RecordingCallback finds the
best value so far for either direction and pickles without its file handles.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import re
from types import SimpleNamespace

import pytest
from conftest import read_events

from models.objective import Objective
from orchestrator.sweep import records
from orchestrator.sweep.records import (
    LOG_FILE,
    ORPHANS,
    RecordingCallback,
    TrialLog,
    about,
    prune_checkpoints,
    time_left,
    trial_status,
)


def start(tid: str, round_: int = 0, restarted: bool = False, **config) -> dict:
    return {"event": "start", "trial_id": tid, "round": round_, "restarted": restarted,
            "config": {**config, "_round": round_, "_seed": 7}, "time": 1.0}


def result(tid: str, epoch: int, **metrics) -> dict:
    return {"event": "result", "trial_id": tid, "epoch": epoch, "metrics": metrics, "time": 2.0}


def end(tid: str, status: str, error: str | None = None) -> dict:
    event = {"event": "end", "trial_id": tid, "status": status, "time": 3.0}
    if error is not None:
        event["error"] = error
    return event


def write_log(path, events) -> None:
    log = TrialLog(path)
    for event in events:
        log.append(event)
    log.close()


# -- TrialLog ---------------------------------------------------------------------------


def test_start_result_and_end_events_build_each_trials_state(tmp_path):
    log = TrialLog(tmp_path / LOG_FILE)
    assert log.trials == {}
    log.append(start("a", lr=0.01))
    assert log.trials["a"]["status"] == "running"
    assert log.trials["a"]["config"] == {"lr": 0.01, "_round": 0, "_seed": 7}
    log.append(result("a", 1, val_loss=0.9))
    log.append(result("a", 2, val_loss=0.7))
    log.append(end("a", "completed"))
    log.append(start("b", round_=1, lr=0.1))
    log.append(end("b", "failed", error="/tmp/error.txt"))
    log.close()
    a, b = log.trials["a"], log.trials["b"]
    assert a["history"] == {1: {"val_loss": 0.9}, 2: {"val_loss": 0.7}}
    assert (a["status"], a["error"], a["round"]) == ("completed", None, 0)
    assert (b["status"], b["error"], b["round"], b["history"]) == (
        "failed", "/tmp/error.txt", 1, {})


def test_a_result_for_an_epoch_seen_before_replaces_it(tmp_path):
    log = TrialLog(tmp_path / LOG_FILE)
    log.append(start("a"))
    log.append(result("a", 1, val_loss=0.9))
    log.append(result("a", 1, val_loss=0.8))  # the epoch re-run after a restore
    log.close()
    assert log.trials["a"]["history"] == {1: {"val_loss": 0.8}}


def test_a_forget_event_drops_the_trial(tmp_path):
    path = tmp_path / LOG_FILE
    write_log(path, [start("a"), result("a", 1, val_loss=0.5), start("b"),
                     {"event": "forget", "trial_id": "a", "time": 4.0}])
    assert list(TrialLog(path).trials) == ["b"]


def test_a_forgotten_trial_that_starts_again_begins_empty(tmp_path):
    path = tmp_path / LOG_FILE
    write_log(path, [start("a", lr=0.1), result("a", 1, val_loss=0.5),
                     {"event": "forget", "trial_id": "a", "time": 4.0}, start("a", lr=0.2)])
    a = TrialLog(path).trials["a"]
    assert a["config"]["lr"] == 0.2 and a["history"] == {}


def test_appending_then_rereading_gives_the_same_trials(tmp_path):
    path = tmp_path / "sub" / "dir" / LOG_FILE  # append makes the folders
    events = [start("a", lr=0.01, hidden_units=32), result("a", 1, val_loss=1.1, lr=0.01),
              result("a", 2, val_loss=0.8, lr=0.01), end("a", "early_stopped"),
              start("b", round_=1, lr=0.2, hidden_units=64), result("b", 1, val_loss=2.5),
              end("b", "failed", error="boom"), start("c", round_=1, lr=0.05)]
    log = TrialLog(path)
    for event in events:
        log.append(event)
    log.close()
    again = TrialLog(path)
    assert again.trials == log.trials
    assert list(again.trials) == ["a", "b", "c"]
    assert again.trials["c"]["status"] == "running"
    assert read_events(path) == events  # one line per event, in order


def test_appending_to_an_existing_log_keeps_its_trials(tmp_path):
    path = tmp_path / LOG_FILE
    write_log(path, [start("a"), result("a", 1, val_loss=0.5)])
    log = TrialLog(path)
    log.append(result("a", 2, val_loss=0.4))
    log.append(end("a", "completed"))
    log.close()
    a = TrialLog(path).trials["a"]
    assert a["history"] == {1: {"val_loss": 0.5}, 2: {"val_loss": 0.4}}
    assert a["status"] == "completed"


def test_a_line_cut_by_a_crash_is_skipped_and_later_lines_still_apply(tmp_path):
    path = tmp_path / LOG_FILE
    lines = [json.dumps(start("a", lr=0.01)), json.dumps(result("a", 1, val_loss=0.9)),
             json.dumps(result("a", 2, val_loss=0.7))[:25],  # cut mid-way
             json.dumps(result("a", 3, val_loss=0.6)), json.dumps(end("a", "completed")),
             "", json.dumps({"event": "result", "epoch": 4})]  # a blank line; no trial id
    path.write_text("\n".join(lines) + "\n")
    a = TrialLog(path).trials["a"]
    assert a["history"] == {1: {"val_loss": 0.9}, 3: {"val_loss": 0.6}}
    assert a["status"] == "completed"


def test_a_cut_last_line_is_skipped_on_read(tmp_path):
    path = tmp_path / LOG_FILE
    path.write_text(json.dumps(start("a")) + "\n" + json.dumps(end("a", "completed"))[:20])
    log = TrialLog(path)
    assert log.trials["a"]["status"] == "running"


def test_an_event_appended_after_a_cut_last_line_survives_a_reread(tmp_path):
    # The resumed driver appends to a log whose last line the crash cut short (no newline
    # after it): the new event must be a line of its own, not glued onto the broken one.
    path = tmp_path / LOG_FILE
    path.write_text(json.dumps(start("a")) + "\n" + json.dumps(result("a", 1, val_loss=0.5))[:30])
    log = TrialLog(path)
    log.append(start("b", lr=0.3))
    log.close()
    assert list(TrialLog(path).trials) == ["a", "b"]


def test_a_restarted_trial_goes_back_to_running(tmp_path):
    path = tmp_path / LOG_FILE
    write_log(path, [start("a"), result("a", 1, val_loss=0.5), end("a", "failed", error="oom")])
    log = TrialLog(path)
    assert log.trials["a"]["status"] == "failed"
    log.append(start("a", restarted=True))
    log.close()
    assert log.trials["a"]["status"] == "running"
    again = TrialLog(path).trials["a"]
    assert again["status"] == "running"
    assert again["history"] == {1: {"val_loss": 0.5}}  # the epochs before the restart stay


def test_a_start_without_the_restarted_flag_keeps_the_ended_status(tmp_path):
    log = TrialLog(tmp_path / LOG_FILE)
    log.append(start("a"))
    log.append(end("a", "completed"))
    log.append(start("a"))  # a replayed start line, not a restart
    log.close()
    assert log.trials["a"]["status"] == "completed"


# -- trial_status -----------------------------------------------------------------------


@pytest.mark.parametrize("last, epochs, status", [
    ({"epoch": 5, "val_loss": 0.3}, 5, "completed"),
    ({"epoch": 6}, 5, "completed"),
    ({"epoch": 2, "val_loss": 0.3}, 5, "early_stopped"),
    ({}, 5, "early_stopped"),
    ({"epoch": None}, 5, "early_stopped"),
    ({"epoch": 2, "caviar_status": "diverged"}, 5, "diverged"),
    ({"epoch": 5, "caviar_status": "diverged"}, 5, "diverged"),  # diverged on the last epoch
    ({"epoch": 5, "caviar_status": "ok"}, 5, "completed"),
])
def test_trial_status_follows_the_last_result_and_the_epoch_budget(last, epochs, status):
    assert trial_status(last, epochs) == status


# -- prune_checkpoints ------------------------------------------------------------------


def make_checkpoints(trial_dir, n: int) -> list[str]:
    names = [f"checkpoint_{i:06d}" for i in range(n)]
    for name in names:
        (trial_dir / name).mkdir(parents=True)
        (trial_dir / name / "model.pt").write_bytes(b"x" * 10)
    (trial_dir / "result.json").write_text("{}\n")
    (trial_dir / "params.json").write_text("{}\n")
    return names


def test_prune_checkpoints_keeps_the_newest_two(tmp_path):
    # 12 checkpoints: checkpoint_000010 and _000011 are the newest (not _000009 as a
    # careless sort of unpadded numbers would say)
    names = make_checkpoints(tmp_path, 12)
    assert prune_checkpoints(tmp_path) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_000010", "checkpoint_000011", "params.json", "result.json"]
    assert (tmp_path / names[-1] / "model.pt").read_bytes() == b"x" * 10


def test_prune_checkpoints_with_keep_zero_removes_them_all(tmp_path):
    make_checkpoints(tmp_path, 3)
    assert prune_checkpoints(tmp_path, keep=0) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.json", "result.json"]


@pytest.mark.parametrize("n, keep, removed, left", [
    (5, 3, 2, ["checkpoint_000002", "checkpoint_000003", "checkpoint_000004"]),
    (2, 2, 0, ["checkpoint_000000", "checkpoint_000001"]),
    (1, 2, 0, ["checkpoint_000000"]),
    (0, 2, 0, []),
    (4, 1, 3, ["checkpoint_000003"]),
])
def test_prune_checkpoints_returns_how_many_went(tmp_path, n, keep, removed, left):
    make_checkpoints(tmp_path, n)
    assert prune_checkpoints(tmp_path, keep=keep) == removed
    assert sorted(p.name for p in tmp_path.glob("checkpoint_*")) == left


def test_prune_checkpoints_of_a_missing_folder_removes_nothing(tmp_path):
    assert prune_checkpoints(tmp_path / "trial_gone") == 0


# -- RecordingCallback ------------------------------------------------------------------

MIN = Objective("val_loss", "min")
MAX = Objective("val_accuracy", "max")


@pytest.fixture
def sweep_log(tmp_path):
    """Four trials: a's best val_loss 0.40 (epoch 2), b's 0.35 but its best accuracy is
    lower than a's, c only reports nothing usable, d has a NaN loss and the top accuracy
    at an epoch whose loss is infinite."""
    path = tmp_path / LOG_FILE
    write_log(path, [
        start("a"), result("a", 1, val_loss=0.60, val_accuracy=0.70),
        result("a", 2, val_loss=0.40, val_accuracy=0.85), result("a", 3, val_loss=0.45,
                                                                 val_accuracy=0.80),
        start("b"), result("b", 1, val_loss=0.35, val_accuracy=0.82),
        start("c"), result("c", 1, val_loss=None, val_accuracy=None),
        start("d"), result("d", 1, val_loss=math.nan, val_accuracy=0.5),
        result("d", 2, val_loss=math.inf, val_accuracy=0.9),
    ])
    return path


def test_best_with_a_min_objective_is_the_lowest_finite_value(sweep_log):
    cb = RecordingCallback(str(sweep_log), MIN, epochs=3, budget=4)
    assert cb.best() == ("b", 0.35)


def test_best_with_a_max_objective_is_the_highest_finite_value(sweep_log):
    cb = RecordingCallback(str(sweep_log), MAX, epochs=3, budget=4)
    assert cb.best() == ("d", 0.9)


def test_best_ignores_trials_without_a_finite_value(tmp_path):
    path = tmp_path / LOG_FILE
    write_log(path, [start("c"), result("c", 1, val_loss=None),
                     start("d"), result("d", 1, val_loss=math.nan),
                     result("d", 2, val_loss=-math.inf)])
    assert RecordingCallback(str(path), MIN, epochs=3, budget=2).best() is None


def test_best_without_a_log_is_none(tmp_path):
    assert RecordingCallback(str(tmp_path / LOG_FILE), MAX, epochs=3, budget=2).best() is None


def test_a_pickled_callback_drops_its_file_handle_and_stream(tmp_path, sweep_log):
    with open(tmp_path / "progress.txt", "w") as stream:
        cb = RecordingCallback(str(sweep_log), MIN, epochs=3, budget=4, every=5.0,
                               stream=stream, trials_dir=str(tmp_path / "trials"))
        cb.log.append(result("a", 4, val_loss=0.2))  # opens the log's file handle
        opened = cb.log
        assert opened._fh is not None
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps(stream)  # what would break Tune's pickling of the callback
        clone = pickle.loads(pickle.dumps(cb))
        # the original is untouched
        assert cb.stream is stream and cb._log is opened and opened._fh is not None
        opened.close()
    assert clone.stream is None and clone._log is None
    assert (clone.log_path, clone.objective, clone.epochs, clone.budget, clone.every,
            clone.trials_dir) == (str(sweep_log), MIN, 3, 4, 5.0, str(tmp_path / "trials"))
    # the copy reads the log again, the epoch appended before pickling included
    assert clone.best() == ("a", 0.2)
    assert clone.log.trials == TrialLog(sweep_log).trials


def trial(tid: str, status: str = "RUNNING", round_: int = 0, last_result=None, **config):
    """The fields of a Tune Trial the callback reads."""
    return SimpleNamespace(trial_id=tid, status=status, config={**config, "_round": round_},
                           last_result=last_result, error_file=None)


def test_the_callback_records_tune_events_and_prints_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "FORCED_EVERY", 0.0)  # each end prints (see the next test)
    path = tmp_path / "sweep" / LOG_FILE
    progress = tmp_path / "progress.txt"
    with open(progress, "w") as stream:
        cb = RecordingCallback(str(path), MIN, epochs=2, budget=3, every=5.0, stream=stream)
        a, b = trial("a", lr=0.1), trial("b", lr=0.01)
        trials = [a, b]
        cb.on_trial_start(0, trials, a)
        cb.on_trial_start(0, trials, b)
        cb.on_trial_result(1, trials, a, {"epoch": 1, "val_loss": 0.8, "lr": 0.1,
                                          "train_loss": math.nan, "not_reported": 1})
        cb.on_trial_result(2, trials, a, {"epoch": 2, "val_loss": 0.5, "caviar_replayed": True})
        a.status, a.last_result = "TERMINATED", {"epoch": 2, "val_loss": 0.5}
        cb.on_trial_complete(3, trials, a)
        b.status = "ERROR"
        cb.on_trial_error(4, trials, b)
        cb.on_experiment_end(trials)
    events = read_events(path)
    assert [(e["event"], e["trial_id"]) for e in events] == [
        ("start", "a"), ("start", "b"), ("result", "a"), ("result", "a"), ("end", "a"),
        ("end", "b")]
    assert events[0]["config"] == {"lr": 0.1, "_round": 0} and events[0]["restarted"] is False
    # only the reported metrics, a NaN as null
    assert events[2]["metrics"] == {"epoch": 1, "val_loss": 0.8, "lr": 0.1, "train_loss": None}
    assert events[3].get("replayed") is True and "replayed" not in events[2]
    assert events[4]["status"] == "completed"
    assert (events[5]["status"], events[5]["error"]) == ("failed", "error")
    # the first result prints (the machine has been up for more than `every` seconds), the
    # second comes within `every` of it and does not; each end prints
    # once a trial ended, the line ends with the time left (its figure: the tests below)
    lines = [re.sub(r" \| about \d+ s left$", " | about N s left", line)
             for line in progress.read_text().splitlines()]
    assert lines == [
        "caviar: round 0 | trials 0 done, 2 running, 1 pending of 3 | best val_loss 0.8 (a)",
        "caviar: round 0 | trials 1 done, 1 running, 1 pending of 3 | best val_loss 0.5 (a) "
        "| about N s left",
        "caviar: round 0 | trials 2 done, 0 running, 1 pending of 3 | best val_loss 0.5 (a) "
        "| about N s left",
    ]


def test_a_result_carrying_several_epochs_is_one_line_per_epoch(tmp_path):
    path = tmp_path / LOG_FILE
    cb = RecordingCallback(str(path), MIN, epochs=5, budget=1, stream=io.StringIO())
    a = trial("a", lr=0.1)
    cb.on_trial_start(0, [a], a)
    epochs = [{"epoch": e, "val_loss": v, "train_loss": 0.9} for e, v in
              [(1, 0.8), (2, 0.3), (3, 0.6)]]
    cb.on_trial_result(1, [a], a, {**epochs[-1], "caviar_status": "running", "node_ip": "10.0.0.7",
                                   "caviar_replayed": True, "caviar_epochs": epochs})
    results = [e for e in read_events(path) if e["event"] == "result"]
    assert [e["epoch"] for e in results] == [1, 2, 3]
    assert [e["metrics"]["val_loss"] for e in results] == [0.8, 0.3, 0.6]
    assert all(e["metrics"]["node_ip"] == "10.0.0.7" and e["replayed"] for e in results)
    assert {e["metrics"]["caviar_status"] for e in results} == {"running"}
    assert cb.best() == ("a", 0.3)  # the best epoch inside the batch, not the latest


def test_after_a_resume_trials_tune_does_not_know_are_forgotten_and_their_checkpoints_kept(
        tmp_path):
    path = tmp_path / LOG_FILE
    trials_dir = tmp_path / "trials"
    write_log(path, [start("a"), result("a", 1, val_loss=0.5), start("b"),
                     result("b", 1, val_loss=0.4)])
    make_checkpoints(trials_dir / "trial_b", 1)
    (trials_dir / "trial_a").mkdir()
    cb = RecordingCallback(str(path), MIN, epochs=2, budget=2, trials_dir=str(trials_dir))
    cb.on_step_begin(0, [trial("a")])
    cb.on_step_begin(1, [trial("a")])  # once per driver
    cb.log.close()
    assert list(TrialLog(path).trials) == ["a"]
    assert [e["trial_id"] for e in read_events(path) if e["event"] == "forget"] == ["b"]
    assert (trials_dir / ORPHANS / "trial_b" / "checkpoint_000000" / "model.pt").is_file()
    assert not (trials_dir / "trial_b").exists() and (trials_dir / "trial_a").is_dir()


def test_many_quick_ends_print_one_line_every_few_seconds_with_counts_kept_not_scanned(
        tmp_path, monkeypatch):
    """2,000 trials ending within a second print one progress line, not 2,000; the counts
    and the best come from what the callback kept, and match a scan of the log."""
    progress = tmp_path / "progress.txt"
    with open(progress, "w") as stream:
        cb = RecordingCallback(str(tmp_path / LOG_FILE), MIN, epochs=1, budget=2500,
                               every=3600.0, stream=stream)
        trials = []
        for i in range(2000):
            t = trial(f"t{i}", round_=i // 1000)
            trials.append(t)
            cb.on_trial_start(0, trials, t)
            cb.on_trial_result(0, trials, t, {"epoch": 1, "val_loss": 1.0 + (i - 777) ** 2})
            t.status, t.last_result = "TERMINATED", {"epoch": 1}
            if i < 1999:
                cb.on_trial_complete(0, trials, t)
        monkeypatch.setattr(records, "FORCED_EVERY", 0.0)
        cb._progress(trials, force=True)
        cb.on_experiment_end(trials)
    lines = progress.read_text().splitlines()
    assert len(lines) == 2, lines[:5]  # the first end, then the one forced here
    assert re.fullmatch(r"caviar: round 1 \| trials 1999 done, 1 running, 500 pending of "
                        r"2500 \| best val_loss 1 \(t777\) \| about \d+ s left", lines[-1])
    log = TrialLog(tmp_path / LOG_FILE)
    assert log.ended == sum(t["status"] != "running" for t in log.trials.values()) == 1999


# -- the time left -----------------------------------------------------------------------


def timed(event: dict, at: float) -> dict:
    return {**event, "time": at}


def test_the_log_keeps_the_mean_time_ended_trials_ran(tmp_path):
    log = TrialLog(tmp_path / LOG_FILE)
    assert log.mean_trial_s() is None
    log.append(timed(start("a"), 100.0))
    log.append(timed(start("b"), 110.0))
    log.append(timed(result("a", 1, val_loss=0.5), 120.0))
    assert log.mean_trial_s() is None  # nothing ended yet
    log.append(timed(end("a", "completed"), 130.0))  # 30 s
    log.append(timed(end("b", "failed"), 200.0))  # 90 s: a failed trial spent time too
    assert log.mean_trial_s() == pytest.approx(60.0)
    log.append(timed(start("b", restarted=True), 300.0))  # restarted: it runs again
    log.append(timed(end("b", "completed"), 310.0))  # its last run, 10 s, counts
    assert log.mean_trial_s() == pytest.approx(20.0)
    log.append({"event": "forget", "trial_id": "a", "time": 320.0})
    assert log.mean_trial_s() == pytest.approx(10.0)
    log.close()
    assert TrialLog(tmp_path / LOG_FILE).mean_trial_s() == pytest.approx(10.0)  # replayed


@pytest.mark.parametrize(("mean", "running", "pending", "left"), [
    (None, 2, 5, None),  # no trial ended: no estimate
    (60.0, 0, 0, None),  # nothing left
    (60.0, 4, 8, (8 + 2) * 60.0 / 4),  # pending ones whole, running ones half, 4 at a time
    (60.0, 1, 3, (3 + 0.5) * 60.0),
    (60.0, 0, 3, 3 * 60.0),  # between trials: as if one ran at a time
])
def test_time_left_counts_pending_trials_whole_and_running_ones_half(mean, running, pending,
                                                                     left):
    assert time_left(mean, running, pending) == (None if left is None else pytest.approx(left))


@pytest.mark.parametrize(("seconds", "text"), [
    (0.002, "about 1 s"), (41.2, "about 42 s"), (89.0, "about 89 s"), (95.0, "about 2 min"),
    (3000.0, "about 50 min"), (5400.0, "about 1 h 30 min"), (11100.0, "about 3 h 5 min"),
])
def test_about_rounds_a_duration_to_its_unit(seconds, text):
    assert about(seconds) == text


def test_the_progress_line_ends_with_the_time_left_once_a_trial_ended(tmp_path, monkeypatch):
    """Two trials of a budget of 11 ran 40 s and 80 s (60 s on average); two run, seven
    wait: the seven whole and the two running ones half done, two at a time, is
    (7 + 2 / 2) * 60 / 2 = 240 s."""
    monkeypatch.setattr(records, "FORCED_EVERY", 0.0)
    path = tmp_path / LOG_FILE
    write_log(path, [timed(start("a"), 0.0), timed(start("b"), 0.0),
                     timed(result("a", 1, val_loss=0.5), 10.0), timed(end("a", "completed"), 40.0),
                     timed(end("b", "early_stopped"), 80.0), timed(start("c"), 80.0),
                     timed(start("d"), 80.0)])
    stream = io.StringIO()
    cb = RecordingCallback(str(path), MIN, epochs=2, budget=11, stream=stream)
    cb._progress([], force=True)
    assert stream.getvalue() == ("caviar: round 0 | trials 2 done, 2 running, 7 pending of 11 "
                                 "| best val_loss 0.5 (a) | about 4 min left\n")
