"""The hardware fingerprint: what the best hyperparameters depend on besides the data.

Recorded with every trial (the node it ran on) and sweep (the driver), so the
re-tune job can tell when production hyperparameters were tuned on other hardware.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from orchestrator.cluster.connect import connect


@functools.lru_cache(maxsize=1)
def hardware_fingerprint() -> dict:
    """What the best hyperparameters depend on: GPU model and count, CPU, torch, CUDA."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return {"gpu_model": torch.cuda.get_device_name(0) if gpus else "", "gpu_count": gpus,
            "cpu_model": cpu, "cpu_count": os.cpu_count() or 0, "torch": torch.__version__,
            "cuda": torch.version.cuda or ""}


HARDWARE_KEYS = ("gpu_model", "gpu_count", "cpu_model", "cpu_count", "torch", "cuda")


def _probe() -> dict:
    return dict(hardware_fingerprint())


def training_hardware(cpu: float = 1, gpu: float = 0, address: str | None = None) -> dict:
    """The hardware a trial of ``cpu`` CPUs and ``gpu`` GPUs would train on now.

    With a cluster (``address`` or RAY_ADDRESS) or local GPUs, a Ray task holding those
    resources reports from where Ray places it, seeing the GPUs a trial would see
    (Ray sets CUDA_VISIBLE_DEVICES). With neither, this machine's fingerprint is that
    answer, and Ray is not started for it."""
    import torch

    address = address or os.environ.get("RAY_ADDRESS")
    if not address and not torch.cuda.is_available():
        return dict(hardware_fingerprint())
    import ray

    connect(address)
    task = ray.remote(num_cpus=cpu, num_gpus=gpu)(_probe)
    return ray.get(task.remote(), timeout=600)
