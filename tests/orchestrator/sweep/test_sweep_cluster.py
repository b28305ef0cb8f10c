"""Sweeps on a real multi-node Ray cluster (ray.cluster_utils.Cluster on this machine).

The worker nodes advertise one GPU each as a resource count: there is no GPU
here, so Ray schedules by the GPU resource while each trial trains on the CPU
(torch sees no CUDA device). That is the only thing not real in these tests.
"""

from __future__ import annotations

import io
import threading
import time

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


EPOCHS = 30


def test_a_lost_node_trial_recovers_from_its_checkpoint(cluster, write_sweep, tmp_path,
                                                        monkeypatch):
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    # The node must die while its trial still has epochs to train: a report (and
    # checkpoint) every epoch, so the third comes after 3 epochs, not after 2 s of them,
    # and epochs of a few tenths of a second, enough of them to outlast the dead node's
    # worker, which trains on for about 2 s after its raylet goes (with 12 epochs a
    # loaded CI machine once finished them all there first).
    monkeypatch.setenv("CAVIAR_REPORT_EVERY_S", "0")
    spec = load_sweep(write_sweep(
        data={"source": "synthetic", "size": 30000, "n_features": 20, "classes": 3},
        strategy={"kind": "random", "trials": 2}, epochs=EPOCHS,
        resources={"cpu": 1, "gpu": 1, "concurrency": 2}))
    log = tmp_path / "w" / "t" / "trials.jsonl"
    removed = {}

    def remove_a_busy_node():
        deadline = time.time() + 120
        while time.time() < deadline:
            if log.exists():
                for tid, t in _by_trial(read_events(log)).items():
                    if len(t["results"]) >= 3 and t["end"] is None:
                        node_id = t["results"][-1]["metrics"]["node_id"]
                        node = next(n for n in nodes if n.node_id == node_id)
                        removed.update(trial=tid, node=node_id,
                                       epoch=t["results"][-1]["epoch"])
                        cluster.remove_node(node)
                        return
            time.sleep(0.2)

    remover = threading.Thread(target=remove_a_busy_node, daemon=True)
    remover.start()
    summary = run_sweep(spec, tmp_path / "w")
    remover.join(timeout=5)
    assert removed, "no trial ran long enough to remove its node"
    assert removed["epoch"] < EPOCHS, removed

    assert summary["trials"] == {"total": 2, "completed": 2, "early_stopped": 0,
                                 "diverged": 0, "failed": 0}
    moved = _by_trial(read_events(log))[removed["trial"]]
    survivor = next(n.node_id for n in nodes if n.node_id != removed["node"])
    after = [r for r in moved["results"] if r["metrics"]["node_id"] == survivor
             and not r.get("replayed")]  # epochs read back from its checkpoint, not trained
    assert after, "the trial did not move to the surviving node"
    # It went on from a checkpoint, not from epoch 0, and finished all its epochs.
    assert after[0]["epoch"] > 1
    trained = [r["epoch"] for r in moved["results"] if not r.get("replayed")]
    assert len(trained) == len(set(trained)), trained  # no epoch trained twice
    assert {r["epoch"] for r in moved["results"]} == set(range(1, EPOCHS + 1))
