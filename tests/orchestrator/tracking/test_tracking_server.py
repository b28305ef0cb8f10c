"""Tracking against a real ``mlflow server`` process on 127.0.0.1, and ``caviar ui``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import REPO, free_port
from mlflow import MlflowClient

from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.spec import load_sweep


def _wait_healthy(url: str, proc, timeout: float = 120.0, log=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            said = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"the server exited with {proc.returncode}: {said}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer /health in {timeout} s")


class Server:
    """A real MLflow tracking server process: its own store (a sqlite file unless told),
    a fixed free port."""

    def __init__(self, tmp_path, backend: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                    "--port", str(self.port),
                    "--backend-store-uri", backend or f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts-destination", str(tmp_path / "server-artifacts"),
                    "--workers", "1"]
        self.proc = None
        self.log = tmp_path / f"server-{self.port}.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log,
                                         start_new_session=True)
        _wait_healthy(self.url, self.proc, log=self.log)

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


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A two-trial sweep on the embedded store, and ``caviar ui`` serving it."""
    import yaml
    from conftest import sweep_dict

    tmp = tmp_path_factory.mktemp("ui")
    workdir = tmp / "w"
    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_dict(name="ui-sweep", epochs=2,
                                               strategy={"kind": "random", "trials": 2})))
    ran = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep),
                          "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr
    port = free_port()
    err = tmp / "ui.err"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--workdir",
                                 str(workdir), "--port", str(port)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=f, text=True,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log=err)
        yield {"url": url, "workdir": workdir, "err": err, "tmp": tmp,
               "summary": json.loads((workdir / "ui-sweep" / "summary.json").read_text())}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)


def test_caviar_ui_serves_the_embedded_store(ui):
    c = MlflowClient(ui["url"])
    exp = c.get_experiment_by_name("ui-sweep")
    assert len(c.search_runs([exp.experiment_id])) == 3  # the sweep and its 2 trials
    said = ui["err"].read_text()
    assert f"at {ui['url']}" in said
    assert f"ui-sweep: {ui['url']}/#/experiments/{exp.experiment_id}/runs" in said


def _page_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_headless_chromium_finds_the_sweeps_runs_in_the_mlflow_ui(ui):
    from services import absent, chromium, dump_dom

    if chromium() is None:
        absent("Chromium", "apt-get install chromium")
    exp = MlflowClient(ui["url"]).get_experiment_by_name("ui-sweep").experiment_id
    runs = _page_text(dump_dom(f"{ui['url']}/#/experiments/{exp}/runs", ui["tmp"] / "c1"))
    # the parent run by its name, with its trials nested under it
    assert "ui-sweep" in runs and "3 matching runs" in runs, runs[:2000]
    parent = ui["summary"]["mlflow"]["parent_run_id"]
    page = _page_text(dump_dom(f"{ui['url']}/#/experiments/{exp}/runs/{parent}/artifacts",
                               ui["tmp"] / "c2"))
    for name in ("plots", "model", "summary.json", "trials.csv", "sweep.yaml"):
        assert name in page, (name, page[:2000])


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
