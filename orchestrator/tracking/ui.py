"""``caviar ui``: the MLflow UI for the embedded store, on 127.0.0.1 only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.tracking.store import (
    ARTIFACTS_DIR,
    DB_FILE,
    StoreMissing,
    embedded_uri,
    ensure_sqlite_store,
    mlflow_client,
)
from searchspaces.errors import CaviarError


class PortTaken(CaviarError):
    """Something listens on the port already: bad input (exit 2)."""


def start_ui(workdir: str | Path, port: int) -> tuple[subprocess.Popen, str, list[str]]:
    """Starts ``mlflow server`` on the workdir's store; returns (the server process, its
    URL, a line per sweep naming its runs page)."""
    workdir = Path(workdir).expanduser().resolve()
    if not (workdir / DB_FILE).exists():
        raise StoreMissing(f"{workdir}: no MLflow store here ({DB_FILE}) yet: run a sweep "
                           "first, or pass the --workdir it used")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise PortTaken(f"port {port} on 127.0.0.1 is taken: pass --port")
    uri = embedded_uri(workdir)
    ensure_sqlite_store(uri)
    # MLflow's job runner and its seven consumers (about 2 GB) serve jobs caviar never
    # sends; a session of its own makes the server, uvicorn and all one process group,
    # so stop_ui ends every one of them.
    server = subprocess.Popen([
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
        "--default-artifact-root", (workdir / ARTIFACTS_DIR).as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    return server, url, sweep_pages(uri, url)


def stop_ui(server: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stops the server's whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            os.killpg(server.pid, 0)  # children left behind by the leader?
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # give the children the same signal's time, then the next one


def sweep_pages(uri: str, url: str) -> list[str]:
    """Each sweep's runs page: the parent, its trials nested under it. (MLflow 3's UI
    opens an experiment on its GenAI overview, not its runs.)"""
    return [f"  {exp.name}: {url}/#/experiments/{exp.experiment_id}/runs"
            for exp in mlflow_client(uri).search_experiments() if exp.name != "Default"]
