"""Tracking against a real ``mlflow server`` process on 127.0.0.1 (sweep/sink.py with a
server: on SQLite and PostgreSQL backends, and the server lost mid-sweep and mid-retune).

One server per backend for the module, and one Ray for its sweeps; each test has
experiments and registered models of its own names. A test that kills the server starts
it again on the same port, or leaves it to the next test that needs it (``up``)."""

from __future__ import annotations

import io
import signal
import threading
import time

import pytest
from conftest import sweep_dict
from mlflow import MlflowClient
from services import Server

from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.spec import load_sweep
from orchestrator.tracking.sync import SyncThread


@pytest.fixture(scope="module", autouse=True)
def one_ray():
    """One Ray for the module's sweeps and re-tune: the first starts it in this process,
    the others join it (orchestrator.cluster.connect); shut down after the module."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-sqlite")
    s = Server(tmp)
    s.backend = f"sqlite:///{tmp / 'server.db'}"  # its store (services.Server's default)
    assert s.cmd[s.cmd.index("--backend-store-uri") + 1] == s.backend
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def postgresql_server(tmp_path_factory):
    from conftest import free_port
    from services import Postgres, absent, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        absent("PostgreSQL", "apt-get install postgresql")
    pg = Postgres(bin_dir, free_port())
    try:
        s = Server(tmp_path_factory.mktemp("mlflow-postgresql"), pg.start())
        try:
            s.start()
            yield s
        finally:
            s.stop()
    finally:
        pg.stop()


def up(server: Server) -> Server:
    """``server``, started again if a test before left it down."""
    if server.proc.poll() is not None:
        server.start()
    return server


@pytest.fixture
def server(sqlite_server):
    """The module's sqlite-backed server, up."""
    return up(sqlite_server)


def served(server: Server, tmp, backend: str) -> dict:
    """A sweep tracked on ``server`` (a real ``mlflow server``), its best model registered
    there and made production. One trial at a time: one trial process to start, not two."""
    name = f"served-{backend}"
    sweep = sweep_file(tmp, name=name, epochs=2, strategy={"kind": "random", "trials": 2},
                       resources={"cpu": 1, "concurrency": 1},
                       register={"name": f"{name}-model", "promote": True})
    said = io.StringIO()
    summary = run_sweep(load_sweep(sweep), tmp / "w", tracking_uri=up(server).url,
                        stream=said)
    return {"name": name, "model": f"{name}-model", "sweep": sweep, "workdir": tmp / "w",
            "summary": summary, "said": said.getvalue()}


@pytest.fixture(scope="module")
def served_sqlite(sqlite_server, tmp_path_factory):
    return served(sqlite_server, tmp_path_factory.mktemp("served-sqlite"), "sqlite")


@pytest.fixture(scope="module")
def served_postgresql(postgresql_server, tmp_path_factory):
    return served(postgresql_server, tmp_path_factory.mktemp("served-postgresql"),
                  "postgresql")


@pytest.fixture
def fail_fast(monkeypatch):
    """MLflow's client retries a refused connection without its backoff (4 s a call
    otherwise): a dead server fails each call at once, and the code under test retries
    on its own schedule."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")


class Said(io.TextIOBase):
    """A stream for a command's progress: keeps what it was told (from any thread), and
    calls ``on_line(line)`` for each whole line, in the writer's thread."""

    def __init__(self, on_line=None):
        self._lock = threading.Lock()
        self._text, self._partial = [], ""
        self.on_line = on_line

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self._lock:
            self._text.append(s)
            self._partial += s
            *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if self.on_line is not None:
                self.on_line(line)
        return len(s)

    def text(self) -> str:
        with self._lock:
            return "".join(self._text)


def sweep_file(tmp_path, **overrides):
    """A sweep file (conftest's small sweep with ``overrides``), its name among them."""
    import yaml

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(**overrides)))
    return path


def wait_for(condition, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)  # polling files the sweep writes


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_sweep_tracked_on_a_real_server(backend, request):
    """On each backend: the server's own sqlite file, or a PostgreSQL database."""
    sweep = request.getfixturevalue(f"served_{backend}")
    url = up(request.getfixturevalue(f"{backend}_server")).url
    summary = sweep["summary"]
    c = MlflowClient(url)
    exp = c.get_experiment_by_name(sweep["name"])
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("caviar.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED"
    for r in children:
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_loss"))
        assert steps == [1, 2] and r.info.status == "FINISHED"
    # artifacts went through the server's proxy, and the model is registered there
    names = {a.path for a in c.list_artifacts(parents[0].info.run_id)}
    assert {"summary.json", "trials.csv", "model"} <= names
    assert summary["registered"]["name"] == sweep["model"]
    version = summary["registered"]["version"]
    assert c.get_model_version(sweep["model"], version).source.endswith("/model")
    assert "now production" in sweep["said"]
    assert c.get_registered_model(sweep["model"]).aliases == {"production": version}


class QuickSync(SyncThread):
    """The sweep's MLflow writer, syncing every 0.2 s instead of 5: the outage below is
    felt (a sync fails) within a fraction of a second of the kill."""

    def __init__(self, sink, every: float = 5.0, stream=None):
        super().__init__(sink, every=0.2, stream=stream)


def _results(log, cursor: int | None = None) -> int:
    """Result events in the sweep's event log (before ``cursor``)."""
    try:
        return log.read_bytes()[:cursor].count(b'"event": "result"')
    except FileNotFoundError:  # not yet
        return 0


def _synced_results(log, state) -> int:
    """Result events MLflow holds: those before the cursor the sink saved."""
    import json

    try:
        return _results(log, json.loads(state.read_text())["cursor"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_server_killed_mid_sweep_loses_nothing(server, tmp_path, monkeypatch, fail_fast):
    """SIGKILL the server once MLflow holds some epochs; start it again only once the
    sweep felt it (a sync failed) and reported more epochs: those waited on disk and are
    written when it is back; none is lost, none written twice."""
    monkeypatch.setattr("orchestrator.sweep.run.SyncThread", QuickSync)
    monkeypatch.setenv("CAVIAR_REPORT_EVERY_S", "0")  # a report per epoch, as they come
    epochs = 8
    spec = load_sweep(sweep_file(
        tmp_path, name="outage", strategy={"kind": "random", "trials": 4}, epochs=epochs,
        data={"source": "synthetic", "size": 20000, "n_features": 20, "classes": 4}))
    log = tmp_path / "w" / "outage" / "trials.jsonl"
    state = tmp_path / "w" / "outage" / "mlflow.json"
    said = Said()
    outage = {}

    def kill_then_restart():
        try:
            wait_for(lambda: _synced_results(log, state) >= 1, "MLflow to hold an epoch")
            server.stop(signal.SIGKILL)  # gone at once, mid-sweep
            outage["from"], outage["said"] = _results(log), len(said.text())
            wait_for(lambda: "is not answering" in said.text()[outage["said"]:]
                     and _results(log) > outage["from"],
                     "a failed sync and an epoch reported while the server is down")
            outage["during"] = _results(log) - outage["from"]
        except BaseException as e:  # told by the test's thread
            outage["error"] = e
        finally:
            if server.proc.poll() is not None:
                server.start()

    t = threading.Thread(target=kill_then_restart, daemon=True)
    t.start()
    summary = run_sweep(spec, tmp_path / "w", tracking_uri=server.url, stream=said)
    t.join(timeout=120)
    assert "error" not in outage, outage["error"]
    assert outage["during"] > 0, outage  # epochs reported while the server was down
    said = said.text()
    assert "MLflow answers again" in said  # and all was written once it was back
    assert "still not answering" not in said, said
    assert summary["trials"]["completed"] == 4
    c = MlflowClient(server.url)
    runs = c.search_runs([c.get_experiment_by_name("outage").experiment_id])
    children = [r for r in runs if r.data.tags.get("caviar.kind") == "trial"]
    assert len(children) == 4 and len(runs) == 5
    for r in children:  # every epoch, once: nothing lost, nothing written twice
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_loss"))
        assert steps == list(range(1, epochs + 1)), steps
        assert r.info.status == "FINISHED"


def test_a_tracking_server_lost_mid_retune_fails_the_job_and_moves_no_alias(
        served_sqlite, server, tmp_path, monkeypatch, fail_fast):
    """The re-tune job against a real server that dies between its search and its
    promotion (killed as the gate starts training): exit 1, and production is where it
    was in the store the server wrote."""
    import yaml

    model, sweep = served_sqlite["model"], served_sqlite["sweep"]
    where = ["--workdir", served_sqlite["workdir"], "--tracking-uri", server.url]
    c = MlflowClient(server.url)
    assert c.get_registered_model(model).aliases == {"production": "1"}
    retune = tmp_path / "retune.yaml"
    retune.write_text(yaml.safe_dump({"model": model, "sweep": str(sweep),
                                      "search": {"rounds": 1, "trials_per_round": 2},
                                      "seeds": 2, "margin": 0.0}))

    def at_gate(line: str) -> None:  # the search is over and the gate trains: it goes
        if line.startswith("caviar: gate:"):
            server.stop(signal.SIGKILL)

    from orchestrator.cli import main

    said = Said(at_gate)
    try:
        with monkeypatch.context() as m:
            m.setattr("sys.stderr", said)
            code = main(["retune", str(retune), "--force", *map(str, where)])
    finally:
        killed = server.proc.poll() is not None
    said = said.text()
    assert killed, said
    assert code == 1, said
    assert "production was not changed" in said and "Traceback" not in said
    # read without the server (the next test to need it starts it again)
    c = MlflowClient(server.backend)
    aliases = c.get_registered_model(model).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"production": "1"}
    assert len(c.search_model_versions(f"name = '{model}'")) == 1
