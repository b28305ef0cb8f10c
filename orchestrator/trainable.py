"""The Ray Tune trainable: one trial = one ``models.train.fit`` run, reported epoch by epoch.

It runs on a worker. Each epoch it reports the trainer's metrics and a
checkpoint (Tune keeps the last two); a trial restarted after a crash, a lost
node or a PBT exploit continues from the checkpoint Tune hands it.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from models.config import split_config
from models.train import fit, load_checkpoint

CHECKPOINT_FILE = "checkpoint.pt"
META_PREFIX = "_"  # config keys the strategies add (round, seed): not hyperparameters


def hyperparameters(config: dict) -> dict:
    """A trial's hyperparameters: its config without caviar's bookkeeping keys."""
    return {k: v for k, v in config.items() if not k.startswith(META_PREFIX)}


def _trial_id() -> str:
    return tune.get_context().get_trial_id()


def _device() -> str:
    """The GPU Ray assigned this trial, else the CPU (Ray sets CUDA_VISIBLE_DEVICES)."""
    if ray.get_gpu_ids():
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


def _gpu_name(device: str) -> str:
    if device != "cuda":
        return ""
    import torch

    return torch.cuda.get_device_name(0)


def newest_checkpoint(trial_dir: str | os.PathLike | None) -> dict | None:
    """The readable checkpoint of the most epochs in a trial's storage folder.

    Tune restores a trial from the last checkpoint its experiment snapshot knew
    of; after a driver SIGKILL that snapshot can lag the trial by a few epochs.
    The trial's folder holds its newer checkpoints too: take the newest that
    reads whole (one cut off mid-copy by the crash is skipped).
    """
    if not trial_dir or not Path(trial_dir).is_dir():
        return None
    best = None
    for path in Path(trial_dir).glob(f"checkpoint_*/{CHECKPOINT_FILE}"):
        try:
            state = load_checkpoint(path)
        except Exception:  # noqa: BLE001 - a partial file from a crash: skip it
            continue
        if best is None or state["epoch"] > best["epoch"]:
            best = state
    return best


def adopt_orphan(trials_dir: str | None, seed: int, model_config, hparams) -> dict | None:
    """The newest checkpoint an orphaned trial (same seed, same configuration) left.

    A driver killed within a second of starting a trial leaves a trial Tune's
    snapshot never saw; on resume the strategy suggests it again under a new id,
    and this new trial goes on from the orphan's checkpoints instead of epoch 0.
    """
    from dataclasses import asdict

    from orchestrator.records import ORPHANS

    if not trials_dir:
        return None
    best = None
    for orphan in (Path(trials_dir) / ORPHANS).glob("trial_*"):
        state = newest_checkpoint(orphan)
        if state is None or state["seed"] != seed:
            continue
        if state["hparams"] != asdict(hparams) or state["model_config"] != asdict(model_config):
            continue  # the strategy suggested something else this time: start afresh
        if best is None or state["epoch"] > best["epoch"]:
            best = state
    return best


def train_trial(config: dict, *, data, model: dict, epochs: int, cpus: float,
                trials_dir: str | None = None) -> None:
    """Trains one configuration; Tune calls it with the trial's config.

    Args:
        config: hyperparameters from the strategy, plus ``_round`` and ``_seed``.
        data: the standardised Dataset (shared through Ray's object store).
        model: the sweep's fixed net settings.
        epochs: the epochs each trial trains (schedulers may stop it sooner).
        cpus: CPUs the trial holds: torch gets one thread per CPU.
        trials_dir: the experiment's storage folder, where trial folders are
            ``trial_<id>`` (see ``newest_checkpoint``).
    """
    model_config, hparams = split_config({**model, **hyperparameters(config)})
    resume, donor, known = None, False, 0
    checkpoint = tune.get_checkpoint()
    own_dir = Path(trials_dir) / f"trial_{_trial_id()}" if trials_dir else None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE)
        known = resume["epoch"]
        # A PBT exploit hands over another trial's checkpoint: that one must win.
        donor = own_dir is not None and Path(checkpoint.path).parent.name != own_dir.name
    replay = []
    if not donor:
        newer = newest_checkpoint(own_dir)
        if newer is not None and (resume is None or newer["epoch"] > resume["epoch"]):
            resume = newer
            # Epochs that ran but whose results the (dead) driver never recorded.
            replay = newer["history"][known:]
    seed = int(config.get("_seed", 0))
    if resume is None:
        resume = adopt_orphan(trials_dir, seed, model_config, hparams)
        replay = resume["history"] if resume is not None else []
    device = _device()
    node = {"node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "device": device, "gpu_name": _gpu_name(device), "pid": os.getpid()}

    def result(metrics: dict) -> dict:
        diverged = not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"]))
        out = {k: (v if not isinstance(v, float) or math.isfinite(v) else math.inf)
               for k, v in metrics.items()}
        out.setdefault("caviar_replayed", False)
        out["caviar_status"] = "diverged" if diverged else (
            "completed" if metrics["epoch"] >= epochs else "running")
        out.update(node)
        return out

    def send(metrics: dict, save) -> None:
        with tempfile.TemporaryDirectory(prefix="caviar-ckpt-") as d:
            save(Path(d) / CHECKPOINT_FILE)
            tune.report(result(metrics), checkpoint=tune.Checkpoint.from_directory(d))

    # Replayed one report per epoch, so Tune's training_iteration stays equal to the
    # epoch (ASHA's rungs count iterations).
    for metrics in replay[:-1]:
        tune.report({**result(metrics), "caviar_replayed": True})
    if replay:
        send({**replay[-1], "caviar_replayed": True}, lambda path: torch.save(resume, path))

    fit(data, model_config, hparams, epochs=epochs, seed=seed,
        device=device, callback=lambda metrics, run: send(metrics, run.save_checkpoint),
        resume_from=resume, num_threads=max(1, int(cpus)))
