"""Sweeps on a real multi-node Ray cluster (ray.cluster_utils.Cluster on this machine).

The worker nodes advertise one GPU each as a resource count: there is no GPU
here, so Ray schedules by the GPU resource while each trial trains on the CPU
(torch sees no CUDA device). That is the only thing not real in these tests.
"""

from __future__ import annotations

import io

import pytest
import ray
from conftest import read_events
from ray.cluster_utils import Cluster

from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.spec import load_sweep


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    yield c
    ray.shutdown()
    c.shutdown()


def _by_trial(events):
    trials = {}
    for e in events:
        t = trials.setdefault(e["trial_id"], {"starts": [], "results": [], "end": None})
        if e["event"] == "start":
            t["starts"].append(e)
        elif e["event"] == "result":
            t["results"].append(e)
        else:
            t["end"] = e
    return trials


def _max_overlap(intervals):
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


def test_trials_spread_over_nodes_and_pack_four_per_gpu(cluster, write_sweep, tmp_path):
    nodes = [cluster.add_node(num_cpus=4, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    spec = load_sweep(write_sweep(
        data={"source": "synthetic", "size": 3000, "n_features": 20, "classes": 3},
        strategy={"kind": "random", "trials": 8}, epochs=12,
        resources={"cpu": 1, "gpu": 0.25, "concurrency": 8}))
    said = io.StringIO()
    summary = run_sweep(spec, tmp_path / "w", stream=said)
    assert summary["trials"]["completed"] == 8
    # Several nodes and trial storage on a folder: said (here every node shares the disk)
    assert "trial storage" in said.getvalue() and "several nodes" in said.getvalue()

    trials = _by_trial(read_events(tmp_path / "w" / "t" / "trials.jsonl"))
    node_of = {tid: t["results"][0]["metrics"]["node_id"] for tid, t in trials.items()}
    assert set(node_of.values()) == {n.node_id for n in nodes}  # both workers ran trials
    # Ray handed every trial a (fractional) GPU, and the trial fell back to the CPU.
    for t in trials.values():
        m = t["results"][0]["metrics"]
        assert m["gpu_ids"] != "" and m["device"] == "cpu"
    # Four trials at gpu 0.25 ran at once on one node, and never more than four.
    for node in nodes:
        spans = [(t["starts"][0]["time"], t["end"]["time"]) for tid, t in trials.items()
                 if node_of[tid] == node.node_id]
        assert _max_overlap(spans) == 4


# A node lost mid-trial (the trial goes on on another node from its checkpoint, no epoch
# trained twice) is tests/orchestrator/cluster/test_cluster_e2e.py's: `ray start` raylets,
# the worker's killed outright, trials in S3.
