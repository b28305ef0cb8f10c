"""Tracking against a real ``mlflow server`` process on 127.0.0.1, and ``caviar ui``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import REPO, free_port
from mlflow import MlflowClient

from orchestrator.sweep import run_sweep
from orchestrator.sweepfile import load_sweep


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


class Server:
    """A real MLflow tracking server process: its own sqlite file, a fixed free port."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                    "--port", str(self.port),
                    "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "server-artifacts"),
                    "--workers", "1"]
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_healthy(self.url, self.proc)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def mlflow_server(server):
    return server.url


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
    port = free_port()
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


@pytest.mark.usefixtures("ray_shutdown")
def test_a_server_down_for_20_s_mid_sweep_loses_nothing(server, write_sweep, tmp_path):
    spec = load_sweep(write_sweep(
        data={"source": "synthetic", "size": 50000, "n_features": 30, "classes": 4},
        strategy={"kind": "random", "trials": 16}, epochs=20))
    log = tmp_path / "w" / "t" / "trials.jsonl"
    outage = {}

    def stop_then_restart():
        while not (log.exists() and log.read_text().count('"result"') >= 3):
            time.sleep(0.2)
        server.stop(signal.SIGKILL)  # gone at once, mid-sweep
        outage["from"] = log.read_text().count('"result"')
        time.sleep(20)
        outage["during"] = log.read_text().count('"result"') - outage["from"]
        server.start()

    t = threading.Thread(target=stop_then_restart, daemon=True)
    t.start()
    summary = run_sweep(spec, tmp_path / "w", tracking_uri=server.url)
    t.join(timeout=120)
    assert outage.get("during", 0) > 0, "no epoch was reported while the server was down"
    assert summary["trials"]["completed"] == 16
    c = MlflowClient(server.url)
    runs = c.search_runs([c.get_experiment_by_name("t").experiment_id])
    children = [r for r in runs if r.data.tags.get("caviar.kind") == "trial"]
    assert len(children) == 16 and len(runs) == 17
    for r in children:  # every epoch, once: nothing lost, nothing written twice
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_loss"))
        assert steps == list(range(1, 21)), steps
        assert r.info.status == "FINISHED"
