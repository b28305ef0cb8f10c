"""The hardware fingerprint: what the best hyperparameters depend on besides the data.

Recorded with every trial (the node it ran on) and sweep (the driver), so the
re-tune job can tell when production hyperparameters were tuned on other hardware.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


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
