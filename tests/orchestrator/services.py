"""Real services for the tests that need them: an MLflow server process, Debian's
PostgreSQL and Chromium.

Each is started by the test itself. Where one is not installed the test is skipped
with the reason, except under CAVIAR_CI=1 (set by .ci/run, which installs both), where
a missing service fails the test: CI never goes green by skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

IN_CI = os.environ.get("CAVIAR_CI") == "1"


def absent(what: str, install: str) -> None:
    message = f"{what} is not installed here ({install}; .ci/run installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else None


class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port, with a database ``mlflow``.

    PostgreSQL refuses to run as root: as root it runs as Debian's ``postgres`` user,
    in a folder of its own under /tmp (pytest's tmp_path is closed to other users)."""

    def __init__(self, bin_dir: Path, port: int):
        self.bin, self.port = bin_dir, port
        self.dir = Path(tempfile.mkdtemp(prefix="caviar-pg-"))
        self.data = self.dir / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.url = f"postgresql://caviar@127.0.0.1:{port}/mlflow"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr or done.stdout}")

    def start(self) -> str:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "caviar",
                  "--auth=trust", "--no-sync")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                  "-l", str(self.dir / "log"), "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "caviar", "mlflow")
        return self.url

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, user_data_dir: Path, budget_ms: int = 30000) -> str:
    """The page as headless Chromium leaves it once its scripts ran (virtual time).

    The flags keep Chromium off this machine's closed network (no background
    fetches, no component updates), as root needs --no-sandbox."""
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={user_data_dir}",
         f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def wait_healthy(url: str, proc, timeout: float = 120.0, log=None) -> None:
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
        from conftest import free_port

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
            self.proc = subprocess.Popen(  # without MLflow's job runner, which caviar never uses
                self.cmd, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        wait_healthy(self.url, self.proc, log=self.log)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)
