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
from ray import tune

from models.config import split_config
from models.train import fit, load_checkpoint

CHECKPOINT_FILE = "checkpoint.pt"
META_PREFIX = "_"  # config keys the strategies add (round, seed): not hyperparameters


def hyperparameters(config: dict) -> dict:
    """A trial's hyperparameters: its config without caviar's bookkeeping keys."""
    return {k: v for k, v in config.items() if not k.startswith(META_PREFIX)}


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


def train_trial(config: dict, *, data, model: dict, epochs: int, cpus: float) -> None:
    """Trains one configuration; Tune calls it with the trial's config.

    Args:
        config: hyperparameters from the strategy, plus ``_round`` and ``_seed``.
        data: the standardised Dataset (shared through Ray's object store).
        model: the sweep's fixed net settings.
        epochs: the epochs each trial trains (schedulers may stop it sooner).
        cpus: CPUs the trial holds: torch gets one thread per CPU.
    """
    model_config, hparams = split_config({**model, **hyperparameters(config)})
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    device = _device()
    node = {"node_ip": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
            "device": device, "gpu_name": _gpu_name(device), "pid": os.getpid()}

    def report(metrics: dict, run) -> None:
        diverged = not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"]))
        out = {k: (v if not isinstance(v, float) or math.isfinite(v) else math.inf)
               for k, v in metrics.items()}
        out["caviar_status"] = "diverged" if diverged else (
            "completed" if run.epoch >= epochs else "running")
        out.update(node)
        with tempfile.TemporaryDirectory(prefix="caviar-ckpt-") as d:
            run.save_checkpoint(Path(d) / CHECKPOINT_FILE)
            tune.report(out, checkpoint=tune.Checkpoint.from_directory(d))

    fit(data, model_config, hparams, epochs=epochs, seed=int(config.get("_seed", 0)),
        device=device, callback=report, resume_from=resume, num_threads=max(1, int(cpus)))
