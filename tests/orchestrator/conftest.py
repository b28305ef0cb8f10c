"""Shared fixtures for the orchestrator tests: sweep files, and Ray shut down after each test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def sweep_dict(**overrides) -> dict:
    """A small, fast sweep: synthetic data, two tuned parameters, random search."""
    d = {
        "name": "t",
        "data": {"source": "synthetic", "size": 1200, "n_features": 12, "classes": 3},
        "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                  "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 64}},
        "strategy": {"kind": "random", "trials": 4},
        "epochs": 4,
        "resources": {"cpu": 1, "concurrency": 2},
        "seed": 0,
    }
    d.update(overrides)
    return d


@pytest.fixture
def write_sweep(tmp_path):
    def write(name: str = "sweep.yaml", **overrides) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(sweep_dict(**overrides)))
        return path

    return write


@pytest.fixture
def no_outside_services(monkeypatch):
    """Commands find their store by --workdir or --tracking-uri and start their own Ray:
    nothing from the environment the tests run in (MLflow, Ray, CAVIAR_DEBUG) leaks in."""
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CAVIAR_DEBUG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny nets train faster on one thread: more only contend on busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_data():
    """300 synthetic rows, 6 features, 3 classes, split and standardised."""
    from models.data import DataSpec, load

    return load(DataSpec(source="synthetic", size=300, n_features=6, classes=3))


@pytest.fixture
def ray_shutdown():
    """Shuts down whatever Ray the test started, so the next test starts clean."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def embedded_ray():
    """caviar's embedded Ray (``connect()``, as a sweep starts it), started once for a
    module's in-process sweeps (each sweep finds it running and keeps to it) and shut
    down after the module: a start costs seconds, and what a test checks of a sweep
    does not depend on a new Ray."""
    import ray

    from orchestrator.cluster.connect import connect

    if ray.is_initialized():
        ray.shutdown()
    connect()
    yield
    ray.shutdown()


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def kill_session(leader: int, timeout: float = 60) -> None:
    """SIGKILL a process started with ``start_new_session`` and everything it started,
    and wait until none of them is left (zombies aside). ``os.killpg`` is not enough for
    a driver: Ray's workers each lead a process group of their own and train on for
    seconds after their raylet dies, writing checkpoints."""
    deadline = time.monotonic() + timeout
    while members := session_members(leader):
        assert time.monotonic() < deadline, f"session {leader} still has {members}"
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)  # polling /proc until the kills took


def session_members(leader: int) -> list[int]:
    """The live processes (not zombies) of the session ``leader`` leads."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            alive = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and os.getsid(int(entry.name)) == leader:
                found.append(int(entry.name))
        except (OSError, IndexError):
            pass
    return found


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on (for a server to start, or to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own on a loopback port; yields its SQLAlchemy URL."""
    from services import Postgres, absent, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        absent("PostgreSQL", "apt-get install postgresql")
    pg = Postgres(bin_dir, free_port())
    try:
        yield pg.start()
    finally:
        pg.stop()


def caviar(*args: object, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``caviar ARGS`` as a user would, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "CAVIAR_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def run_main(capsys, *args: object) -> tuple[int, str, str]:
    """``caviar ARGS`` in-process (the same code path without the start-up cost):
    (exit code, stdout, stderr)."""
    from orchestrator.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_paragraph_error(stderr: str, *fragments: str) -> None:
    """Bad input's contract: one line ``caviar: error: ...`` holding each fragment."""
    text = stderr.strip()
    assert text.startswith("caviar: error: "), stderr
    assert "Traceback" not in stderr
    assert "\n\n" not in text and len(text.splitlines()) == 1, stderr
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


# --- the cluster tests' real servers (services.py): S3 and the MLflow server behind
# auth once per test process (each test in buckets and experiments of its own), the
# raylets once per module (tests kill nodes) ---------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3-compatible server on 127.0.0.1, its own process
    (services.S3Server: ``.url``, ``.env()``, ``.make_bucket(name)``, ``.keys(bucket,
    prefix)``)."""
    import importlib.util

    from services import S3Server, absent

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        absent("moto's S3 server", "pip install 'moto[server]'")
    s3 = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        yield s3.start()
    finally:
        s3.stop()


@pytest.fixture(scope="session")
def auth_mlflow_server(s3_server, tmp_path_factory):
    """``mlflow server --app-name basic-auth`` on 127.0.0.1 (services.AuthMlflowServer):
    runs on a PostgreSQL of its own (database ``mlflow``; the auth store in
    ``mlflow_auth``), artifacts in the bucket ``mlflow`` of ``s3_server`` under
    ``artifacts/``. ``.url``, ``.credentials``, ``.client_env()``, ``.backend``."""
    import importlib.util

    from services import AuthMlflowServer, Postgres, absent, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        absent("PostgreSQL", "apt-get install postgresql")
    if importlib.util.find_spec("flask_wtf") is None:
        absent("Flask-WTF (MLflow's basic-auth app)", "pip install 'mlflow[auth]'")
    pg = Postgres(bin_dir, free_port())
    try:
        backend = pg.start()
        server = AuthMlflowServer(tmp_path_factory.mktemp("mlflow-auth"), backend, s3_server,
                                  s3_server.make_bucket("mlflow"),
                                  auth_backend=pg.create_database("mlflow_auth"))
        try:
            yield server.start()
        finally:
            server.stop()
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def ray_raylets():
    """A two-raylet Ray cluster from ``ray start`` with token auth (services.RayRaylets:
    ``.address``, ``.dashboard``, ``.env()``, ``.node_ids``, ``.nodes()``,
    ``.kill_worker()``): one CPU each, the worker with the resource ``{"worker": 1}``;
    a lost node is declared DEAD within about 5 s (health checks each second)."""
    from services import RayRaylets

    cluster = RayRaylets(env={"RAY_health_check_period_ms": "1000",
                              "RAY_health_check_failure_threshold": "3"})
    try:
        yield cluster.start()
    finally:
        cluster.stop()
