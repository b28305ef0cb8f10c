"""The Ray Tune trainable: one trial = one ``models.train.fit`` run, reported epoch by epoch.

It runs on a worker. At each report it writes the trainer's checkpoint into the
trial's folder in the sweep's trial storage (a folder, or an object store:
``orchestrator.cluster.storage``) as ``<storage>/<sweep>/trial_<id>/epoch_NNNNN.pt``,
the last two kept, and reports the epochs' metrics: every epoch when epochs take
seconds, at most every ``REPORT_EVERY_S`` when they are short (``_Pace``). A trial restarted
after a crash, a lost node or a driver killed mid-sweep continues from its
newest checkpoint there.

Why not Tune's own checkpoints (``tune.report(checkpoint=...)``) every epoch:
each one is a temporary folder copied into storage and registered by the
driver, which cost 4 points of orchestration efficiency here on 1 s trials;
and Tune's bookkeeping of them can name a deleted checkpoint after a driver
crash. Only PBT needs Tune's checkpoints (its exploit hands one trial's
checkpoint to another): with ``tune_checkpoints`` the trial also reports them.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune

from models.config import split_config
from models.objective import Objective
from models.train import fit, load_checkpoint, save_state
from orchestrator import caviar_version
from orchestrator.cluster.hardware import hardware_fingerprint
from orchestrator.cluster.storage import Storage
from orchestrator.sweep.records import ORPHANS
from orchestrator.trial_protocol import EPOCHS_KEY, SEED_KEY, hyperparameters

CHECKPOINT_FILE = "checkpoint.pt"  # inside a Tune checkpoint folder (PBT)
KEEP = 2  # own checkpoints kept per trial


def _trial_id() -> str:
    return tune.get_context().get_trial_id()


def _device() -> str:
    """The GPU Ray assigned this trial, else the CPU (Ray sets CUDA_VISIBLE_DEVICES)."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _storage(folder: str | os.PathLike | Storage | None) -> Storage | None:
    if not folder or isinstance(folder, Storage):
        return folder or None
    return Storage(folder)


def save_epoch(run, trial_dir: str | os.PathLike | Storage, keep: int = KEEP) -> None:
    """Writes this epoch's checkpoint (whole) and deletes all but the last ``keep``."""
    trial = _storage(trial_dir)
    trial.write(f"epoch_{run.epoch:05d}.pt", run.save_checkpoint)
    for old in trial.list("epoch_*.pt")[:-keep]:
        trial.delete(old)


def newest_checkpoint(trial_dir: str | os.PathLike | Storage | None) -> dict | None:
    """The readable checkpoint of the most epochs in a trial's folder (own or Tune's).

    One cut off by a crash does not read whole and is skipped. Names go newest first
    (``epoch_NNNNN.pt``, Tune's ``checkpoint_NNNNNN``): from an object store at most a
    few are fetched, not every one a PBT trial has kept.
    """
    trial = _storage(trial_dir)
    if trial is None or not trial.is_dir():
        return None
    own = trial.list("epoch_*.pt")[::-1]
    tunes = [f"{d}/{CHECKPOINT_FILE}" for d in trial.list("checkpoint_*")[::-1]]
    found = [s for s in (_first_readable(trial, own), _first_readable(trial, tunes)) if s]
    return max(found, key=lambda state: state["epoch"], default=None)


def _first_readable(trial: Storage, names: list[str]) -> dict | None:
    for name in names:
        try:
            return trial.read(name, load_checkpoint)
        except Exception:  # noqa: BLE001 - a partial file from a crash: skip it
            continue
    return None


def adopt_orphan(trials_dir: str | None, seed: int, model_config, hparams,
                 into: Storage | None = None) -> dict | None:
    """The newest checkpoint an orphaned trial (same seed, same configuration) left.

    A driver killed soon after starting a trial leaves a trial Tune's snapshot
    never saw; on resume the strategy suggests it again under a new id, and this
    new trial goes on from the orphan's checkpoints instead of epoch 0. With
    ``into`` (the new trial's folder) the orphan's ``best.pt`` comes along: the
    orphans go when the sweep ends, and the new trial may never beat that epoch.
    """
    if not trials_dir:
        return None
    best, source = None, None
    orphans = _storage(trials_dir) / ORPHANS
    for name in orphans.list("trial_*"):
        state = newest_checkpoint(orphans / name)
        if state is None or state["seed"] != seed:
            continue
        if state["hparams"] != asdict(hparams) or state["model_config"] != asdict(model_config):
            continue  # the strategy suggested something else this time: start afresh
        if best is None or state["epoch"] > best["epoch"]:
            best, source = state, orphans / name
    if into is not None and source is not None and source.exists(BEST_FILE):
        source.copy(BEST_FILE, into)
    return best


def _starting_point(trials_dir, seed, model_config, hparams) -> tuple[dict | None, list]:
    """(the state to resume from, the epochs to replay to Tune before training on).

    Tune's own checkpoint wins when it is another trial's (a PBT exploit). Else the
    newest of the trial's own checkpoints, then an orphan's. Epochs it holds beyond
    what Tune knows of are replayed (``_Reporter.replay``), so the driver records
    every epoch and ASHA sees each of its rungs' epochs (its time is the epoch);
    with PBT one report each, as PBT's time is Tune's training_iteration.
    """
    own_dir = _own_dir(trials_dir)
    tune_state, known = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            tune_state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
        known = tune_state["epoch"]
        if own_dir is None or Path(checkpoint.path).parent.name != own_dir.name:
            # A PBT exploit: the donor's state, no replay. This trial's own checkpoints
            # belong to the line it leaves: drop them, or a later restart would go back.
            for stale in (own_dir.list("epoch_*.pt") if own_dir else ()):
                own_dir.delete(stale)
            return tune_state, []
    state = newest_checkpoint(own_dir)
    if state is None:
        state = adopt_orphan(trials_dir, seed, model_config, hparams, into=own_dir)
    if state is None or (tune_state is not None and state["epoch"] <= known):
        return tune_state, []
    return state, state["history"][known:]


def _own_dir(trials_dir) -> Storage | None:
    return _storage(trials_dir) / f"trial_{_trial_id()}" if trials_dir else None


BEST_FILE = "best.pt"  # the trial's checkpoint at its best epoch (the sweep's metric)


def node_info(device: str, threads: int) -> dict:
    """Where the trial runs and what a bit-identical re-run needs besides its config
    (torch threads, device, versions), reported with every epoch (and tagged on its
    MLflow run)."""
    return {"node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "device": device, "threads": threads,
            "gpu_name": torch.cuda.get_device_name(0) if device == "cuda" else "",
            "pid": os.getpid(), "numpy": np.__version__, "caviar_version": caviar_version(),
            **hardware_fingerprint()}


REPORT_EVERY_S = 2.0  # short epochs: one report (and checkpoint) per this many seconds
REPORT_ENV = "CAVIAR_REPORT_EVERY_S"  # the driver's environment sets it for a sweep


class _Pace:
    """When a trial reports to Tune and writes its checkpoint.

    Every epoch when epochs are long; when they are short, at most every ``every``
    seconds, so the trial trains instead of writing checkpoints and the driver (on
    the same cores) handles a result per ``every`` seconds, not one per epoch. Always
    at the last epoch, a diverged one, and the epochs a scheduler decides at (ASHA's
    rungs), so each decision sees its own epoch. A report carries every epoch since
    the previous one (``EPOCHS_KEY``): the event log and MLflow still get each epoch.
    A killed trial loses at most the epochs since its last report (under ``every``
    seconds of training): those were never reported, so none is recorded twice.
    """

    def __init__(self, epochs: int, decisions=(), every: float = REPORT_EVERY_S):
        self.epochs, self.decisions, self.every = epochs, frozenset(decisions), every
        self.since = time.monotonic()

    def due(self, metrics: dict) -> bool:
        now = time.monotonic()
        if (now - self.since >= self.every or metrics["epoch"] >= self.epochs
                or metrics["epoch"] in self.decisions or _diverged(metrics)):
            self.since = now
            return True
        return False


def _diverged(metrics: dict) -> bool:
    return not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"]))


def _finite(metrics: dict) -> dict:
    """Non-finite floats as inf: what JSON and Tune's comparisons take."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else math.inf)
            for k, v in metrics.items()}


class _Reporter:
    """Hands Tune the trainer's metrics, a status, and the node: one result per report
    (the latest epoch's, with every epoch since the previous report under ``EPOCHS_KEY``)."""

    def __init__(self, epochs: int, tune_checkpoints: bool, node: dict):
        self.epochs, self.tune_checkpoints, self.node = epochs, tune_checkpoints, node

    def result(self, batch: list[dict], replayed: bool = False) -> dict:
        metrics = batch[-1]
        out = _finite(metrics)
        out["caviar_status"] = "diverged" if _diverged(metrics) else (
            "completed" if metrics["epoch"] >= self.epochs else "running")
        out["caviar_replayed"] = replayed
        out[EPOCHS_KEY] = [_finite(m) for m in batch]
        out.update(self.node)
        return out

    def report(self, batch: list[dict], save, replayed: bool = False) -> None:
        """Epochs since the last report; with Tune checkpoints (PBT), ``save(path)``
        writes the state first."""
        if not self.tune_checkpoints:
            tune.report(self.result(batch, replayed))
            return
        with tempfile.TemporaryDirectory(prefix="caviar-ckpt-") as d:
            save(Path(d) / CHECKPOINT_FILE)
            tune.report(self.result(batch, replayed),
                        checkpoint=tune.Checkpoint.from_directory(d))

    def replay(self, epochs: list[dict], state: dict | None, pace: _Pace) -> None:
        """Epochs a checkpoint holds that Tune never heard of: reported as the pace says
        (ignoring time: the scheduler's epochs and the last)."""
        batch: list[dict] = []
        for i, metrics in enumerate(epochs):
            batch.append(metrics)
            if i == len(epochs) - 1:
                self.report(batch, lambda path: torch.save(state, path), replayed=True)
            elif self.tune_checkpoints or metrics["epoch"] in pace.decisions:
                tune.report(self.result(batch, replayed=True))
                batch = []


class _BestKeeper:
    """Keeps ``best.pt``, the trial's checkpoint at its best epoch: the model a sweep
    exports and registers. A resumed trial starts from the best of the line it continues.

    Between reports the best epoch's state waits in memory (a copy); at a report it is
    written before the epoch's checkpoint, so a checkpoint on disk never holds a best
    epoch that ``best.pt`` lacks.
    """

    def __init__(self, trial_dir: str | os.PathLike | Storage | None, objective: Objective,
                 resumed: dict | None):
        self.dir, self.objective = _storage(trial_dir), objective
        self.best = objective.best(m.get(objective.name) for m in resumed["history"]) \
            if resumed is not None else None
        self.pending: dict | None = None  # the best epoch's state, not yet written

    def on_epoch(self, metrics: dict, run, due: bool) -> None:
        if self.dir is None:
            return
        v = metrics.get(self.objective.name)
        improved = v is not None and math.isfinite(v) and self.objective.better(v, self.best)
        if improved:
            self.best = v
            self.pending = None if due else run.state_dict()
            if due:
                self.dir.write(BEST_FILE, run.save_checkpoint)
        if due:
            if self.pending is not None:
                pending, self.pending = self.pending, None
                self.dir.write(BEST_FILE, lambda path: save_state(pending, path))
            save_epoch(run, self.dir)


def train_trial(config: dict, *, data, model: dict, epochs: int, cpus: float,
                trials_dir: str | None = None, tune_checkpoints: bool = False,
                objective: Objective | None = None, decisions=(),
                report_every: float = REPORT_EVERY_S) -> None:
    """Trains one configuration; Tune calls it with the trial's config.

    Args:
        config: hyperparameters from the strategy, plus ``_round`` and ``_seed``.
        data: the standardised Dataset (shared through Ray's object store).
        model: the sweep's fixed net settings.
        epochs: the epochs each trial trains (schedulers may stop it sooner).
        cpus: CPUs the trial holds: torch gets one thread per CPU.
        trials_dir: the experiment's folder in trial storage (a path, or an object
            store URI), where trial folders are ``trial_<id>``; None keeps no
            checkpoints of its own.
        tune_checkpoints: also hand Tune a checkpoint every epoch (PBT needs them).
        objective: the sweep's metric, which picks the epoch kept as ``best.pt``
            (default val_loss, min).
        decisions: the epochs a scheduler decides at (ASHA's rungs): always reported.
        report_every: seconds between reports (and checkpoints) of short epochs; with
            Tune checkpoints (PBT), and when 0, every epoch.
    """
    model_config, hparams = split_config({**model, **hyperparameters(config)})
    seed = int(config.get(SEED_KEY, 0))
    resume, replay = _starting_point(trials_dir, seed, model_config, hparams)
    own_dir = _own_dir(trials_dir)
    if own_dir is not None:
        own_dir.mkdir()
    device, threads = _device(), max(1, int(cpus))
    reporter = _Reporter(epochs, tune_checkpoints, node_info(device, threads))
    pace = _Pace(epochs, decisions, every=0.0 if tune_checkpoints else report_every)
    reporter.replay(replay, resume, pace)
    keeper = _BestKeeper(own_dir, objective or Objective(), resume)
    batch: list[dict] = []

    def on_epoch(metrics: dict, run) -> None:
        due = pace.due(metrics)
        keeper.on_epoch(metrics, run, due)
        batch.append(metrics)
        if due:
            reporter.report(batch, run.save_checkpoint)
            batch.clear()

    fit(data, model_config, hparams, epochs=epochs, seed=seed, device=device,
        callback=on_epoch, resume_from=resume, num_threads=threads)
