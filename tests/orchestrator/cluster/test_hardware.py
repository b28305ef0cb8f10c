"""The hardware fingerprint (orchestrator/cluster/hardware.py): what this machine records,
and the hardware a trial would train on, probed on a real Ray cluster only when needed."""

from __future__ import annotations

import os

import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from orchestrator.cluster.hardware import HARDWARE_KEYS, hardware_fingerprint, training_hardware


def test_the_fingerprint_holds_exactly_the_hardware_keys():
    fp = hardware_fingerprint()
    assert tuple(fp) == HARDWARE_KEYS
    # No GPU exists on this machine (torch is the CPU build): none is recorded.
    assert fp["gpu_count"] == 0 and fp["gpu_model"] == "" and fp["cuda"] == ""
    assert fp["torch"] == torch.__version__
    assert fp["cpu_count"] == os.cpu_count()
    assert isinstance(fp["cpu_model"], str) and fp["cpu_model"].strip()


@pytest.mark.usefixtures("ray_shutdown")
def test_without_a_cluster_or_gpu_the_local_fingerprint_is_the_answer_and_ray_stays_off(
        monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    probed = training_hardware(cpu=1, gpu=0)
    assert not ray.is_initialized()
    assert probed == hardware_fingerprint()
    probed["gpu_count"] = 99  # a copy: the cached fingerprint is not the caller's to change
    assert hardware_fingerprint()["gpu_count"] == 0


@pytest.mark.usefixtures("ray_shutdown")
def test_the_hardware_a_trial_would_get_is_probed_on_the_cluster():
    """Through a Ray task placed like a trial (a real 2-node ray.cluster_utils.Cluster;
    no GPU here, so the node advertising one is placed on but reports none)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, num_gpus=1)  # an advertised GPU: none is real here
    try:
        probed = training_hardware(cpu=1, gpu=1, address=cluster.address)
        assert ray.is_initialized()
        assert probed == {**hardware_fingerprint(), "gpu_count": 0, "gpu_model": ""}
    finally:
        ray.shutdown()
        cluster.shutdown()
