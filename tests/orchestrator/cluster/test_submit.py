"""``caviar submit``: a sweep sent to a real Ray cluster (a head started here) as a Ray Job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_paragraph_error, free_port, run_main
from ray.cluster_utils import Cluster
from services import free_ports

BIN = Path(sys.executable).parent



@pytest.fixture
def ray_head(monkeypatch):
    """A Ray head with its dashboard (the Jobs API) on 127.0.0.1, caviar's Python on PATH.

    Started with ray.cluster_utils.Cluster, so shutting it down stops only its own
    processes (``ray stop`` would stop every Ray on the machine). Its job agent gets a
    port of its own: every Ray's agent asks for 52365, and one that finds it taken (by
    another Ray here) serves no jobs ("No available agent to submit job").
    """
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dash, agent = free_ports(2)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": dash, "dashboard_agent_listen_port": agent})
    yield f"http://127.0.0.1:{dash}"
    cluster.shutdown()


def test_submit_runs_the_sweep_on_the_cluster_with_its_data(ray_head, write_sweep, tmp_path):
    # A CSV next to the sweep file: submit must ship it, the cluster cannot see this folder.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    rows = ["a,b,c,d,label"] + [",".join(f"{v:.5f}" for v in r) + f",{c}" for r, c in zip(x, y)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    sweep = write_sweep(data={"source": "csv", "path": "train.csv", "label": "label"},
                        strategy={"kind": "random", "trials": 2}, epochs=2)
    remote = tmp_path / "remote-runs"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "submit", str(sweep), "--address", ray_head,
         "--workdir", str(remote)],
        cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    assert job_id.startswith("caviar-t-")
    assert "submitted sweep 't'" in done.stderr and "done after" in done.stderr  # streamed log
    summary = json.loads((remote / "t" / "summary.json").read_text())
    assert summary["trials"]["completed"] == 2


def test_submit_to_nothing_fails_clearly(write_sweep):
    sweep = write_sweep()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "submit", str(sweep), "--address",
         f"http://127.0.0.1:{free_port()}"], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 1
    assert "cannot reach the Ray dashboard" in done.stderr and "Traceback" not in done.stderr


def test_submit_refuses_a_ray_client_address_at_once(write_sweep, capsys):
    """A ray:// address is bad input, told before anything connects: Ray's Jobs client
    would wait half a minute on a Ray Client connection, then fail with exit 1."""
    address = f"ray://127.0.0.1:{free_port()}"
    began = time.monotonic()
    code, out, err = run_main(capsys, "submit", write_sweep(), "--address", address)
    assert (code, out) == (2, "")
    assert_one_paragraph_error(err, f"--address {address}: ", "the dashboard's http:// or "
                               "https:// address, e.g. http://HEAD:8265", "Ray Client")
    assert time.monotonic() - began < 20  # no connection was tried


@pytest.mark.parametrize(("kw", "tail"), [
    ({}, ["--workdir", "/mnt/runs"]),
    ({"resume": True, "storage": "s3://b/p q"}, ["--workdir", "/mnt/runs", "--resume",
                                                 "--storage", "s3://b/p q"]),
])
def test_the_jobs_command_line_is_caviar_sweep_with_the_flags_given(kw, tail):
    import shlex

    from orchestrator.cli import build_parser
    from orchestrator.cli.sweeps import cmd_sweep
    from orchestrator.cluster.submit import entrypoint

    words = shlex.split(entrypoint("/mnt/runs", **kw))
    assert words[:3] == ["python", "-m", "orchestrator.cli"] and words[5:] == tail
    args = build_parser().parse_args(words[3:])
    assert args.func is cmd_sweep and args.storage == kw.get("storage")
