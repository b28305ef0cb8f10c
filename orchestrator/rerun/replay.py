"""A trial trained again from its recipe, compared epoch by epoch with its record.

On a CPU with the same torch threads, versions and data, a trial re-trains bit for
bit: the seed fixes the initial weights and the mini-batch order, and one thread
count fixes the order of floating-point reductions (another count gives another
last digit). On a GPU, cuDNN and cuBLAS pick kernels whose reductions are
not ordered; ``deterministic`` asks torch for deterministic ones (slower), which
makes re-runs on the same GPU model repeat each other.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from orchestrator import caviar_version
from orchestrator.rerun.recipe import METRICS, Recipe


@dataclass
class Outcome:
    """The re-run's epochs, where it ran, and how it compares with the record."""

    history: list[dict]
    digest: str
    threads: int
    device: str
    versions: dict
    host: str = field(default_factory=socket.gethostname)

    def diffs(self, recipe: Recipe) -> list[dict]:
        """Per epoch: recorded and re-run values and their largest absolute difference."""
        rows = []
        for m in self.history:
            then = recipe.recorded.get(m["epoch"], {})
            gap = max((abs(m[k] - then[k]) for k in METRICS if k in then), default=float("nan"))
            rows.append({"epoch": m["epoch"], **{f"recorded_{k}": then.get(k) for k in METRICS},
                         **{f"rerun_{k}": m[k] for k in METRICS}, "max_diff": gap})
        return rows

    def identical(self, recipe: Recipe) -> bool:
        rows = self.diffs(recipe)
        return len(rows) == len(recipe.recorded) and all(r["max_diff"] == 0 for r in rows)

    def differences(self, recipe: Recipe) -> list[str]:
        """What differs from the record besides the numbers, in words."""
        out = []
        if self.digest != recipe.digest:
            out.append(f"the data: its digest is {self.digest[:12]}, recorded "
                       f"{recipe.digest[:12]} (the file or the split changed)")
        if recipe.threads is not None and self.threads != recipe.threads:
            out.append(f"torch threads: {self.threads} here, {recipe.threads} recorded (another "
                       "reduction order)")
        if recipe.device and self.device != recipe.device:
            out.append(f"device: {self.device} here, {recipe.device} recorded")
        for k, v in self.versions.items():
            if recipe.versions.get(k) and recipe.versions[k] != v:
                out.append(f"{k}: {v} here, {recipe.versions[k]} recorded")
        return out


def deterministic_mode() -> None:
    """Deterministic GPU kernels (cuBLAS needs its workspace setting before first use)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def retrain(recipe: Recipe, threads: int, device: str, deterministic: bool = False) -> Outcome:
    """Trains the recipe's configuration for its epochs, with ``threads`` torch threads."""
    from models.config import split_config
    from models.data import load
    from models.fingerprint import digest
    from models.train import fit

    if deterministic:
        deterministic_mode()
    data = load(recipe.data)
    model_config, hparams = split_config(recipe.config)
    result = fit(data, model_config, hparams, epochs=recipe.epochs, seed=recipe.seed,
                 device=device, num_threads=threads)
    used = "cuda" if str(device).startswith("cuda") else "cpu"
    return Outcome(result.history, digest(data), threads, used,
                   {"torch": torch.__version__, "numpy": np.__version__,
                    "caviar_version": caviar_version()})


def retrain_on_ray(recipe: Recipe, threads: int, device: str, address: str | None,
                   deterministic: bool = False) -> Outcome:
    """The same, in a Ray task holding ``threads`` CPUs (and a GPU for cuda) on the
    cluster at ``address``: the node Ray picks must read the data's path."""
    import ray

    from orchestrator.cluster.connect import connect

    connect(address)
    gpus = 1 if device.startswith("cuda") else 0
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(retrain)
    return ray.get(task.remote(recipe, threads, device, deterministic))


def default_device(recipe: Recipe) -> str:
    """The recorded device when this machine has it, else the CPU."""
    if recipe.device == "cuda" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def log_rerun(client, recipe: Recipe, outcome: Outcome) -> str:
    """The re-run as its own run beside the trial's, linked by ``caviar.rerun_of``."""
    from mlflow.entities import Metric, Param

    identical = outcome.identical(recipe)
    run = client.create_run(recipe.experiment_id, run_name=f"rerun-trial-{recipe.trial_id}",
                            tags={"caviar.kind": "rerun", "caviar.rerun_of": recipe.run_id,
                                  "caviar.trial_id": recipe.trial_id,
                                  "caviar.identical": str(identical).lower(),
                                  "caviar.threads": str(outcome.threads),
                                  "caviar.device": outcome.device,
                                  **{f"caviar.{k}": v for k, v in outcome.versions.items()}})
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(m[k]), now, m["epoch"]) for m in outcome.history for k in METRICS]
    params = [Param(k, str(v)) for k, v in {**recipe.config, "seed": recipe.seed}.items()]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000],
                         params=params if i == 0 else [])
    gaps = [r["max_diff"] for r in outcome.diffs(recipe)]
    client.set_tag(run.info.run_id, "caviar.max_diff", f"{max(gaps, default=0):.3g}")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
