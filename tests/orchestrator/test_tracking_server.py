"""Tracking against a real ``mlflow server`` process on 127.0.0.1, and ``caviar ui``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO
from mlflow import MlflowClient

from orchestrator.sweep import run_sweep
from orchestrator.sweepfile import load_sweep


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer /health in {timeout} s")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server: its own sqlite file, a random free port."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.usefixtures("ray_shutdown")
def test_a_sweep_tracked_on_a_real_server(mlflow_server, write_sweep, tmp_path):
    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 3}, epochs=3,
                                  register={"name": "served"}))
    summary = run_sweep(spec, tmp_path / "w", tracking_uri=mlflow_server)
    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("t")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("caviar.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    for r in children:
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_loss"))
        assert steps == [1, 2, 3] and r.info.status == "FINISHED"
    # artifacts went through the server's proxy, and the model is registered there
    names = {a.path for a in c.list_artifacts(parents[0].info.run_id)}
    assert {"summary.json", "trials.csv", "model"} <= names
    assert summary["registered"]["name"] == "served"
    assert c.get_model_version("served", summary["registered"]["version"]).source.endswith(
        "/model")


def test_caviar_ui_serves_the_embedded_store(write_sweep, tmp_path):
    workdir = tmp_path / "w"
    sweep = write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1)
    ran = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep),
                          "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--workdir",
                           str(workdir), "--port", str(port)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, ui)
        exp = MlflowClient(url).get_experiment_by_name("t")
        assert exp is not None
        assert len(MlflowClient(url).search_runs([exp.experiment_id])) == 2  # sweep + trial
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        _, err = ui.communicate(timeout=60)
    assert f"at {url}" in err


def test_caviar_ui_without_a_store_says_so(tmp_path):
    ran = subprocess.run([sys.executable, "-m", "orchestrator.cli", "ui", "--workdir",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2 and "no MLflow store here" in ran.stderr
