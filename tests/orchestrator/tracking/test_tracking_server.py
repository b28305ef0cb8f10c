"""Tracking against a real ``mlflow server`` process on 127.0.0.1 (tracking/sink.py with a
server: on SQLite and PostgreSQL backends, and the server lost mid-sweep and mid-retune)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO
from mlflow import MlflowClient
from services import Server

from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.spec import load_sweep


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def mlflow_server(request, tmp_path):
    """A real server on each backend: its own sqlite file, or a PostgreSQL database."""
    backend = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    s = Server(tmp_path, backend)
    s.start()
    yield s.url
    s.stop()


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


def test_a_tracking_server_lost_mid_retune_fails_the_job_and_moves_no_alias(server, tmp_path):
    """The re-tune job against a real server that dies between its search and its
    promotion: exit 1, and once the server is back, production is where it was."""
    import yaml
    from conftest import sweep_dict

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_dict(
        name="served-sweep", epochs=2, strategy={"kind": "random", "trials": 2},
        register={"name": "served-model", "promote": True})))
    cli = [sys.executable, "-m", "orchestrator.cli"]
    where = ["--workdir", str(tmp_path / "w"), "--tracking-uri", server.url]
    ran = subprocess.run([*cli, "sweep", str(sweep), *where], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0 and "now production" in ran.stderr, ran.stderr
    retune = tmp_path / "retune.yaml"
    retune.write_text(yaml.safe_dump({"model": "served-model", "sweep": str(sweep),
                                      "search": {"rounds": 1, "trials_per_round": 2},
                                      "seeds": 2, "margin": 0.0}))
    job = subprocess.Popen([*cli, "retune", str(retune), "--force", *where], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = []
    for line in job.stderr:  # the search is over and the gate trains: the server goes
        said.append(line)
        if "caviar: gate:" in line:
            server.stop(signal.SIGKILL)
            break
    _, rest = job.communicate(timeout=600)
    said = "".join(said) + rest
    assert job.returncode == 1, said
    assert "production was not changed" in said and "Traceback" not in said
    server.start()
    c = MlflowClient(server.url)
    assert dict(c.get_registered_model("served-model").aliases) == {"production": "1"}
    assert len(c.search_model_versions("name = 'served-model'")) == 1
