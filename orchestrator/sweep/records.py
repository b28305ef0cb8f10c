"""The sweep's own record of its trials, written on the driver as Tune reports them.

``<workdir>/<name>/trials.jsonl`` is an append-only event log: one ``start``
line per trial (its config and round), one ``result`` line per epoch (a result
of a trial with short epochs carries several), one ``end`` line when it stops.
It survives a driver crash, so a resumed sweep still knows the epochs that ran
before; summary.json and trials.csv are built from it. Appending a line per
epoch costs microseconds; nothing else is written per result.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from pathlib import Path

from ray.tune import Callback

from models.objective import Objective
from orchestrator.cluster.storage import Storage
from orchestrator.trial_protocol import ROUND_KEY, reported_epochs

REPORTED = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds",
            "train_seconds", "samples_per_second", "caviar_status", "node_ip", "hostname",
            "node_id", "gpu_ids", "device", "gpu_name", "pid", "gpu_model", "gpu_count",
            "cpu_model", "cpu_count", "torch", "cuda", "threads", "numpy", "caviar_version")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class TrialLog:
    """Reads and appends the event log; keeps the latest state of every trial, and the
    counts a progress line needs (so no line scans every trial)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.trials: dict[str, dict] = {}
        self.ended = 0  # trials whose status is not "running"
        self.round = 0  # the highest round started
        self._started: dict[str, float] = {}  # trial id -> when it (last) started
        self._took: dict[str, float] = {}  # trial id -> seconds it ran, once it ended
        self.took_s = 0.0  # the sum of _took's values
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self._apply(json.loads(line))
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut short by a crash
        self._fh = None

    def _apply(self, event: dict) -> None:
        tid = event["trial_id"]
        t = self.trials.setdefault(tid, {"trial_id": tid, "config": {}, "round": 0,
                                         "history": {}, "status": "running", "error": None})
        kind, was_running = event["event"], t["status"] == "running"
        self._time(tid, kind, event.get("time"))
        if kind == "start":
            t["config"] = event["config"]
            t["round"] = event.get("round", 0)
            self.round = max(self.round, t["round"])
            if not was_running and event.get("restarted"):
                t["status"] = "running"
        elif kind == "result":
            t["history"][int(event["epoch"])] = event["metrics"]
        elif kind == "end":
            t["status"] = event["status"]
            t["error"] = event.get("error")
        elif kind == "forget":
            del self.trials[tid]
            self.ended -= not was_running
            return
        self.ended += was_running - (t["status"] == "running")

    def _time(self, tid: str, kind: str, at: float | None) -> None:
        """How long each ended trial ran, from its start and end events' times."""
        if kind in ("end", "forget"):
            self.took_s -= self._took.pop(tid, 0.0)
        if kind == "start" and at is not None:
            self._started[tid] = at
        elif kind == "end" and at is not None and tid in self._started:
            self._took[tid] = max(at - self._started[tid], 0.0)
            self.took_s += self._took[tid]
        elif kind == "forget":
            self._started.pop(tid, None)

    def mean_trial_s(self) -> float | None:
        """The mean seconds an ended trial ran (failed and stopped early ones too: they
        spent the budget as well); None before one ended."""
        return self.took_s / len(self._took) if self._took else None

    def append(self, event: dict) -> None:
        self._apply(event)
        if self._fh is None:
            self._open()
        self._fh.write(json.dumps(event, default=str) + "\n")

    def _open(self) -> None:
        """Opens the log for appending. A last line a crash cut short is ended first, so
        the next event is a line of its own (the cut one is skipped on every read)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut = False
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, 2)
                cut = f.read(1) != b"\n"
        self._fh = open(self.path, "a", buffering=1)  # line-buffered: a line per write
        if cut:
            self._fh.write("\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def time_left(mean_s: float | None, running: int, pending: int) -> float | None:
    """Seconds until the budget is spent, estimated from the ended trials' mean duration:
    each pending trial takes the mean, each running one half of it (on average it is
    half done), and the trials running now share the work. None before a trial ended,
    or when nothing is left."""
    if mean_s is None or running + pending == 0:
        return None
    return (pending + running / 2) * mean_s / max(running, 1)


def about(seconds: float) -> str:
    """``about 40 s``, ``about 12 min``, ``about 3 h 5 min``: a rounded duration."""
    if seconds < 90:
        return f"about {max(math.ceil(seconds), 1)} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


def trial_status(last: dict, epochs: int) -> str:
    """completed, early_stopped or diverged, from a trial's last result (an error is
    ``failed``, recorded by ``on_trial_error``)."""
    if last.get("caviar_status") == "diverged":
        return "diverged"
    if int(last.get("epoch") or 0) >= epochs:
        return "completed"
    return "early_stopped"


LOG_FILE = "trials.jsonl"  # the event log, in <workdir>/<sweep>/
STATE_FILE = "strategy.json"  # the strategy's rounds and boxes, beside it
KEEP_CHECKPOINTS = 2
ORPHANS = "orphans"  # checkpoints of trials a resumed Tune no longer knows
FORCED_EVERY = 2.0  # seconds between the progress lines trials' ends print
PRUNE_AFTER_S = 60.0  # many experiment snapshots (TUNE_GLOBAL_CHECKPOINT_S) after a trial ends


def prune_checkpoints(trial_dir: str | Path | Storage, keep: int = KEEP_CHECKPOINTS) -> int:
    """Deletes all but a trial's ``keep`` newest Tune checkpoints; returns how many went."""
    trial = trial_dir if isinstance(trial_dir, Storage) else Storage(trial_dir)
    found = trial.list("checkpoint_*")
    for old in found[:-keep] if keep else found:
        trial.delete(old)
    return max(len(found) - keep, 0)


class RecordingCallback(Callback):
    """Driver-side: writes the event log, prints a progress line, prunes checkpoints.

    Progress: a line whenever a trial ends, and at most every ``every`` seconds
    otherwise: round, trials done/running/pending of the budget, best so far, and once
    a trial ended, an estimate of the time left (``time_left``).

    Checkpoints: Tune is told to keep them all, and this callback deletes all but
    the last two of a trial a minute after it ends. Tune's own ``num_to_keep``
    deletes a checkpoint as soon as a newer one arrives, while the experiment
    snapshot that a resume reads may still name the deleted one: a driver killed
    in that window leaves a trial that can never be restored (seen here with Ray
    2.60). A running trial's checkpoints are kept, so any snapshot can be resumed.
    """

    def __init__(self, log_path: str, objective: Objective, epochs: int, budget: int,
                 every: float = 10.0, stream=None, trials_dir: str | None = None):
        self.trials_dir = trials_dir
        self._ended: deque[tuple[float, str]] = deque()  # (monotonic end, trial id), in order
        self._reconciled = False
        self.log_path = log_path
        self.objective = objective
        self.epochs, self.budget = epochs, budget
        self.every = every
        self.stream = stream
        self._log: TrialLog | None = None
        self._last_print = 0.0
        self._best: tuple[str, float] | None = None
        self._best_known = False  # _best holds what the log does (set on first use)

    # Tune pickles callbacks with the experiment: keep the file handle out of it.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_log"] = None
        state["stream"] = None
        return state

    def __setstate__(self, state):  # a snapshot an earlier caviar took: its own fields
        self.__dict__.update(state)
        if isinstance(self._ended, dict):
            self._ended = deque(sorted((t, tid) for tid, t in self._ended.items()))
        self.__dict__.setdefault("_best", None)
        self.__dict__.setdefault("_best_known", False)

    @property
    def log(self) -> TrialLog:
        if self._log is None:
            self._log = TrialLog(self.log_path)
        return self._log

    def on_trial_start(self, iteration, trials, trial, **info):
        config = dict(trial.config)
        self.log.append({"event": "start", "trial_id": trial.trial_id,
                         "round": config.get(ROUND_KEY, 0), "config": config,
                         "restarted": trial.trial_id in self.log.trials, "time": time.time()})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """One ``result`` line per epoch the result carries (several when epochs are short);
        the epochs before the latest share its node fields and were running."""
        batch = reported_epochs(result)
        for metrics in batch[:-1]:
            self._record(trial.trial_id, {**result, **metrics, "caviar_status": "running"})
        self._record(trial.trial_id, result)
        self._progress(trials)

    def _record(self, trial_id: str, result: dict) -> None:
        metrics = {k: _clean(result[k]) for k in REPORTED if k in result}
        event = {"event": "result", "trial_id": trial_id,
                 "epoch": result.get("epoch", result.get("training_iteration")),
                 "metrics": metrics, "time": time.time()}
        if result.get("caviar_replayed"):
            event["replayed"] = True
        self.log.append(event)
        v = self.objective.score(metrics.get(self.objective.name))
        if self._best_known and v is not None and math.isfinite(v) and \
                self.objective.better(v, self._best and self._best[1]):
            self._best = (trial_id, v)

    def on_step_begin(self, iteration, trials, **info):
        if self._reconciled:
            return
        self._reconciled = True
        # After a resume: trials the dead driver started after Tune's last experiment
        # snapshot are unknown to Tune, whose strategy suggests them again (same config,
        # same seed) under new ids. Forget the old ids, and set their checkpoints aside
        # as orphans: the new trial adopts them (trainable.adopt_orphan) and goes on.
        known = {t.trial_id for t in trials}
        for tid in [t for t in self.log.trials if t not in known]:
            self.log.append({"event": "forget", "trial_id": tid, "time": time.time()})
            self._best_known = False  # it may have held the best
            trials = Storage(self.trials_dir) if self.trials_dir else None
            if trials is not None and trials.is_dir(f"trial_{tid}"):
                trials.move(f"trial_{tid}", trials / ORPHANS / f"trial_{tid}")

    def on_step_end(self, iteration, trials, **info):
        if not self.trials_dir:
            return
        now = time.monotonic()
        while self._ended and now - self._ended[0][0] > PRUNE_AFTER_S:
            prune_checkpoints(Storage(self.trials_dir) / f"trial_{self._ended.popleft()[1]}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended.append((time.monotonic(), trial.trial_id))
        last = trial.last_result or {}
        self.log.append({"event": "end", "trial_id": trial.trial_id,
                         "status": trial_status(last, self.epochs),
                         "time": time.time()})
        self._progress(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended.append((time.monotonic(), trial.trial_id))
        error = getattr(trial, "error_file", None) or "error"
        self.log.append({"event": "end", "trial_id": trial.trial_id, "status": "failed",
                         "error": str(error), "time": time.time()})
        self._progress(trials, force=True)

    def on_experiment_end(self, trials, **info):
        self.log.close()

    def best(self) -> tuple[str, float] | None:
        """(trial id, value) of the best finite value any trial reported so far: read from
        the log once (and after a trial is forgotten), then kept as results arrive."""
        if not self._best_known:
            self._best, self._best_known = None, True
            for t in self.log.trials.values():
                v = self.objective.best(m.get(self.objective.name)
                                        for m in t["history"].values())
                if v is not None and self.objective.better(v, self._best and self._best[1]):
                    self._best = (t["trial_id"], v)
        return self._best

    def _progress(self, trials, force: bool = False) -> None:
        """The progress line: when a trial ends (at most every ``FORCED_EVERY`` seconds: a
        sweep of short trials would print thousands) and every ``every`` seconds."""
        now = time.monotonic()
        if now - self._last_print < (FORCED_EVERY if force else self.every):
            return
        self._last_print = now
        log = self.log
        started, done = len(log.trials), log.ended
        best = self.best()
        best_txt = f"best {self.objective.name} {best[1]:.4g} ({best[0]})" if best \
            else "no result yet"
        pending = max(self.budget - started, 0)
        left = time_left(log.mean_trial_s(), started - done, pending)
        left_txt = "" if left is None else f" | {about(left)} left"
        print(f"caviar: round {log.round} | trials {done} done, {started - done} running, "
              f"{pending} pending of {self.budget} | {best_txt}{left_txt}",
              file=self.stream or sys.stderr, flush=True)
