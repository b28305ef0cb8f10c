"""Real services for the tests that need them: an MLflow server process, Debian's
PostgreSQL and Chromium; for the cluster tests an S3-compatible server (moto's
standalone one), an MLflow server behind basic auth storing on PostgreSQL and S3, and
a two-raylet Ray cluster started with ``ray start`` and token authentication.

Each is started by the test itself. Where one is not installed the test is skipped
with the reason, except under CAVIAR_CI=1 (set by .ci/run, which installs both), where
a missing service fails the test: CI never goes green by skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orchestrator.tracking.ui import stop_ui

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
        self.create_database("mlflow")
        return self.url

    def create_database(self, name: str) -> str:
        """Another database in the same cluster (e.g. MLflow's auth store); its URL."""
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "caviar", name)
        return self.url.rsplit("/", 1)[0] + f"/{name}"

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


# --- the cluster tests' servers: S3, MLflow behind auth, a two-raylet Ray -------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports on 127.0.0.1 that nothing listens on (all bound at once, so
    none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class S3Server:
    """moto's standalone S3-compatible server (``python -m moto.server``) in a process of
    its own on a loopback port: a real HTTP server, not an in-process mock. Any keys are
    accepted; ``env()`` gives a client (boto3, pyarrow.fs, MLflow) what it needs.

    pyarrow 25 (Ray Tune's ``storage_path`` filesystem): ``FileSystem.from_uri("s3://..")``
    honours AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; ``S3FileSystem()`` built directly
    ignores both and needs ``endpoint_override=url``."""

    ACCESS_KEY, SECRET_KEY, REGION = "caviar-test", "caviar-test-secret", "us-east-1"

    def __init__(self, log_dir: Path):
        from conftest import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log_dir) / f"s3-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ENDPOINT_URL_S3": self.url,
                "AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
                "AWS_DEFAULT_REGION": self.REGION, "MLFLOW_S3_ENDPOINT_URL": self.url}

    def start(self, timeout: float = 60.0) -> S3Server:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self.proc.returncode}: "
                                   f"{_tail(self.log)}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:  # ListBuckets
                    if r.status == 200:
                        return self
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise TimeoutError(f"moto's server did not answer in {timeout} s") from None
                time.sleep(0.2)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=self.REGION,
                            aws_access_key_id=self.ACCESS_KEY,
                            aws_secret_access_key=self.SECRET_KEY)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                        Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def stop(self) -> None:
        if self.proc is not None:
            stop_ui(self.proc, grace_s=10.0)


class AuthMlflowServer:
    """``mlflow server --app-name basic-auth`` on a loopback port: runs and registry on
    PostgreSQL (``backend``), artifacts proxied (``--serve-artifacts``) to
    ``s3://BUCKET/artifacts`` on ``s3``, ``--allowed-hosts`` 127.0.0.1:PORT and
    localhost:PORT only, one worker, no job runner.

    Its auth store is ``auth_backend`` (by default ``backend`` itself: the auth app keeps
    its own alembic table, but a database of its own is safer; see Postgres.create_database),
    configured through an ini of its own (MLFLOW_AUTH_CONFIG_PATH: the packaged one
    points at a sqlite file in the server's working directory). The admin, whose password
    comes from MLFLOW_AUTH_ADMIN_PASSWORD (3.17 has no default), is created on the first
    start; MLFLOW_FLASK_SERVER_SECRET_KEY, which the auth app requires, is random.
    ``/health`` answers without credentials (and to any Host header)."""

    def __init__(self, workdir: Path, backend: str, s3: S3Server, bucket: str = "mlflow",
                 auth_backend: str | None = None, username: str = "admin"):
        import secrets

        from conftest import free_port

        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend, self.bucket, self.s3 = backend, bucket, s3
        self.credentials = (username, secrets.token_urlsafe(18))
        self.log = self.dir / f"mlflow-auth-{self.port}.log"
        ini = self.dir / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {auth_backend or backend}\n"
                       f"admin_username = {username}\n")
        self.server_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")},
            **s3.env(),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else 7 unused huey workers
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": username,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.credentials[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--backend-store-uri", backend,
                    "--artifacts-destination", f"s3://{bucket}/artifacts", "--serve-artifacts",
                    "--allowed-hosts", f"127.0.0.1:{self.port},localhost:{self.port}",
                    "--workers", "1"]
        self.proc: subprocess.Popen | None = None

    def client_env(self) -> dict[str, str]:
        user, password = self.credentials
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password}

    def start(self, timeout: float = 120.0) -> AuthMlflowServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log, cwd=self.dir,
                                         env=self.server_env, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            wait_healthy(self.url, self.proc, timeout=timeout, log=self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, sig=signal.SIGTERM) -> None:
        if sig == signal.SIGKILL and self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            stop_ui(self.proc, grace_s=30.0)


# Ray's `ray start` on Linux turns --node-ip-address 127.0.0.1 (and a bootstrap address
# 127.0.0.1:PORT) into the machine's outside address, and a worker refuses to join at
# all in Ray's loopback mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). For a cluster on
# loopback only, the worker's `ray start` runs with that rewrite turned off.
_RAY_CLI_KEEPING_LOOPBACK = (
    "import sys\n"
    "from ray._private import services\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv[0] = 'ray'\n"
    "main()\n")
RAY_NODE_LABEL = "caviar-node"  # its value: "head" or "worker"
RAY_WORKER_PORTS = 40  # worker processes a node can run at once (each listens on one)


class RayRaylets:
    """A real Ray cluster of two raylets on this machine, each a ``ray start --block``
    process in a session of its own: the head (GCS, dashboard with the Jobs API on
    127.0.0.1) and a worker joined through ``--address 127.0.0.1:PORT``. Token
    authentication is on with a fresh random token, given to every process in
    RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (ahead of any ~/.ray/auth_token, which is
    neither read nor written). Each node has a ``--temp-dir`` of its own and every port
    `ray start` takes a flag for (GCS, dashboard, client server, object and node
    managers, agents, metrics, worker ports) is a free one, as are the dashboard's and
    the autoscaler's metrics ports (DASHBOARD_METRIC_PORT, AUTOSCALER_METRIC_PORT), so
    it clashes with no other Ray here.

    Nodes carry the label ``caviar-node=head|worker``; the worker also the custom
    resource ``{"worker": 1}`` (``worker_resources``). ``env`` adds to the nodes'
    environment (e.g. RAY_health_check_period_ms); caviar's Python is first on their PATH.

    ``loopback_only=False`` is Ray as a user runs it: Ray advertises the machine's
    outside address and its GCS, raylets and workers listen on every interface.
    ``loopback_only=True`` keeps both nodes on 127.0.0.1 (Ray's loopback mode on the
    head, and the worker's `ray start` without its rewrite of 127.0.0.1): its clients
    then need RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 too (in ``env()``).

    Stopping kills each node's process group, then any process left that carries the
    node's marker in its environment (nothing escapes by a new session): never
    ``ray stop``, which would stop every Ray on the machine."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1, *,
                 worker_resources: dict | None = None, env: dict | None = None,
                 loopback_only: bool = False):
        import secrets

        self.token = secrets.token_hex(32)
        self.loopback_only = loopback_only
        self.root = Path(tempfile.mkdtemp(prefix="caviar-ray-", dir="/tmp"))  # short: sockets
        each = 6 + RAY_WORKER_PORTS
        ports = free_ports(5 + 2 * each)
        gcs, dash, client, dash_metrics, autoscaler_metrics = ports[:5]
        self.port, self.dashboard_port = gcs, dash
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        ray_cli = str(Path(sys.executable).parent / "ray")
        common = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        head_ports, worker_ports = ports[5:5 + each], ports[5 + each:]
        self.cmds = {
            "head": [ray_cli, "start", "--head", *common, "--port", str(gcs),
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                     "--ray-client-server-port", str(client), "--num-cpus", str(head_cpus),
                     "--labels", f"{RAY_NODE_LABEL}=head",
                     "--temp-dir", str(self.root / "head"), *self._ports(head_ports)],
            "worker": [*([sys.executable, "-c", _RAY_CLI_KEEPING_LOOPBACK] if loopback_only
                         else [ray_cli]),
                       "start", "--address", self.address, *common,
                       "--num-cpus", str(worker_cpus),
                       "--resources", json.dumps(worker_resources or {"worker": 1}),
                       "--labels", f"{RAY_NODE_LABEL}=worker",
                       "--temp-dir", str(self.root / "worker"), *self._ports(worker_ports)],
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        base.update(self.env(), PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                                     f"{os.environ.get('PATH', '')}",
                    RAY_USAGE_STATS_ENABLED="0", DASHBOARD_METRIC_PORT=str(dash_metrics),
                    AUTOSCALER_METRIC_PORT=str(autoscaler_metrics))
        base.update(env or {})
        self.node_env = {role: {**base, "CAVIAR_TEST_RAY_NODE": self._marker(role)}
                         for role in self.cmds}
        if loopback_only:  # the worker's own CLI must not be in loopback mode: it refuses
            self.node_env["worker"].pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = {role: self.root / f"{role}.log" for role in self.cmds}

    @staticmethod
    def _ports(p: list[int]) -> list[str]:
        return ["--object-manager-port", str(p[0]), "--node-manager-port", str(p[1]),
                "--dashboard-agent-listen-port", str(p[2]),
                "--dashboard-agent-grpc-port", str(p[3]), "--runtime-env-agent-port", str(p[4]),
                "--metrics-export-port", str(p[5]),
                "--worker-port-list", ",".join(map(str, p[6:]))]

    def _marker(self, role: str) -> str:
        return f"{self.root}:{role}"

    def env(self) -> dict[str, str]:
        """What a client (ray.init, JobSubmissionClient, `caviar submit`) needs to be let in."""
        env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        if self.loopback_only:
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return env

    def start(self, timeout: float = 120.0) -> RayRaylets:
        try:
            for role in ("head", "worker"):
                with open(self.logs[role], "ab") as log:
                    self.procs[role] = subprocess.Popen(
                        self.cmds[role], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                        env=self.node_env[role], cwd=self.root, start_new_session=True)
                if role == "head":  # the worker retries, but not for long
                    self._wait(lambda: self._answers(self.port), timeout, "the GCS")
            self._wait(lambda: {n["labels"].get(RAY_NODE_LABEL) for n in self.nodes()
                                if n["state"] == "ALIVE"} == {"head", "worker"},
                       timeout, "both nodes ALIVE")
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while True:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start ({role}) exited with {proc.returncode}: "
                                       f"{_tail(self.logs[role])}")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"Ray: no {what} after {timeout} s; head: "
                                   f"{_tail(self.logs['head'])}")
            time.sleep(0.5)

    def request(self, path: str, token: str | None = "", method: str = "GET",
                headers: dict | None = None, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of an HTTP request to the dashboard, with the cluster's token
        (``token=""``), another (a string) or none (None)."""
        token = self.token if token == "" else token
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.dashboard + path, data=body, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def nodes(self) -> list[dict]:
        """The cluster's nodes from the dashboard's state API: node_id, node_ip, state
        (ALIVE, DEAD), labels, resources_total, is_head_node."""
        status, body = self.request("/api/v0/nodes?limit=100&detail=true")
        if status != 200:
            raise OSError(f"GET /api/v0/nodes: {status} {body[:200]!r}")
        return json.loads(body)["data"]["result"]["result"]

    @property
    def node_ids(self) -> dict[str, str]:
        """{"head": id, "worker": id} of the nodes alive now."""
        return {n["labels"][RAY_NODE_LABEL]: n["node_id"] for n in self.nodes()
                if n["state"] == "ALIVE" and RAY_NODE_LABEL in n["labels"]}

    def pids(self, role: str) -> list[int]:
        """Every live process of one node (``ray start``, raylet, GCS, agents, workers),
        found by the marker each inherits in its environment."""
        needle = f"CAVIAR_TEST_RAY_NODE={self._marker(role)}\0".encode()
        found = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if needle in environ.read_bytes():
                    found.append(int(environ.parent.name))
            except OSError:
                continue  # gone meanwhile, or not ours to read
        return found

    def listening(self) -> dict[int, tuple[str, str, list[tuple[str, int]]]]:
        """{pid: (role, process name, [(address, port) it listens on])} for the cluster."""
        import importlib

        importlib.import_module("ray")  # puts the psutil Ray bundles on sys.path
        psutil = importlib.import_module("psutil")

        out = {}
        for role in self.cmds:
            for pid in self.pids(role):
                try:
                    p = psutil.Process(pid)
                    socks = sorted((c.laddr.ip, c.laddr.port)
                                   for c in p.net_connections(kind="inet")
                                   if c.status == psutil.CONN_LISTEN)
                    name = " ".join(p.cmdline())[:120] or p.name()
                except psutil.Error:
                    continue
                if socks:
                    out[pid] = (role, name, socks)
        return out

    def kill_worker(self) -> None:
        """The worker node lost at once: SIGKILL to its whole process group (and to any of
        its processes outside it)."""
        self._kill("worker")

    def _kill(self, role: str) -> None:
        proc = self.procs.get(role)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        for _ in range(3):  # stragglers that left the group
            left = self.pids(role)
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def stop(self) -> None:
        """Both nodes gone (worker first), nothing of theirs left, the temp dirs removed."""
        try:
            for role in ("worker", "head"):
                self._kill(role)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
