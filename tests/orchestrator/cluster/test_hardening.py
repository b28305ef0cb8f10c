"""Hardening checks against real servers started here (tests/orchestrator/services.py):
MLflow's basic-auth app on PostgreSQL with its artifacts in S3 (moto's server), and a
two-raylet Ray cluster from ``ray start`` with token authentication.

- MLflow answers only its own Host names (403 otherwise), and nothing but /health
  without credentials (401); with them a run lands in PostgreSQL, its artifact in S3.
- pyarrow (Ray Tune's storage) reaches the S3 server by the endpoint variables.
- Ray's GCS refuses a client without the cluster's token (or with another); the
  dashboard and its Jobs API answer 401 without a token, 403 to a wrong one.
- Sockets: with ``ray start`` on Linux, --node-ip-address 127.0.0.1 is not kept: the
  nodes advertise the machine's outside address and the GCS and raylets listen on every
  interface; only the dashboard stays on 127.0.0.1. The token is what keeps the network
  out. Ray's loopback mode keeps a two-raylet cluster on 127.0.0.1, but its worker must
  join without Ray's rewrite of 127.0.0.1 (RayRaylets(loopback_only=True)).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import REPO
from services import IN_CI

# --- MLflow behind basic auth -------------------------------------------------------

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def _http(url: str, headers: dict | None = None, method: str = "GET",
          body: bytes | None = None) -> tuple[int, str]:
    """(status, body) of one request; a Host in ``headers`` replaces urllib's own."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_mlflow_answers_its_own_host_names_only(auth_mlflow_server):
    s = auth_mlflow_server
    admin = _basic(*s.credentials)
    for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}"):
        status, body = _http(s.url + SEARCH, {**admin, "Host": host})
        assert status == 200 and '"experiments"' in body, (host, status, body[:300])
    # DNS rebinding: a page from another name, or the server reached by another address
    # (MLflow's default list would let in every private one: 10.*, 192.168.*, ...)
    for host in ("evil.example.com", f"evil.example.com:{s.port}", f"10.0.0.5:{s.port}"):
        status, body = _http(s.url + SEARCH, {**admin, "Host": host})
        assert status == 403 and "Invalid Host header" in body, (host, status, body[:300])


def test_mlflow_refuses_requests_without_credentials(auth_mlflow_server, s3_server):
    s = auth_mlflow_server
    user, password = s.credentials
    for who, headers in (("nobody", {}), ("a wrong password", _basic(user, password + "x")),
                         ("an unknown user", _basic("mallory", password))):
        status, body = _http(s.url + SEARCH, headers)
        assert status == 401 and "not authenticated" in body, (who, status, body[:300])
    # writes too: neither an experiment nor an artifact gets in
    name = f"intruder-{uuid.uuid4().hex[:8]}"
    create = json.dumps({"name": name}).encode()
    status, _ = _http(s.url + "/api/2.0/mlflow/experiments/create",
                      {"Content-Type": "application/json"}, "POST", create)
    assert status == 401
    status, body = _http(s.url + f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}",
                         _basic(user, password))
    assert status == 404 and "RESOURCE_DOES_NOT_EXIST" in body, (status, body[:300])
    status, _ = _http(s.url + "/api/2.0/mlflow-artifacts/artifacts/0/intruder/artifacts/x.txt",
                      {"Content-Type": "application/octet-stream"}, "PUT", b"payload")
    assert status == 401
    assert not [k for k in s3_server.keys(s.bucket) if "intruder" in k]
    # only the health check is open (for probes), and it tells nothing else
    assert _http(s.url + "/health") == (200, "OK")


def test_mlflow_with_credentials_tracks_to_postgresql_and_s3(auth_mlflow_server, s3_server,
                                                            monkeypatch, tmp_path):
    import psycopg
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    s = auth_mlflow_server
    # the client needs the server's credentials only: artifacts go through its proxy
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s.client_env().items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(s.url)
    exp = client.create_experiment(f"hardening-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(exp).info.run_id
    client.log_metric(run_id, "val_loss", 0.25, step=1)
    (tmp_path / "hello.txt").write_text("hello from caviar")
    client.log_artifact(run_id, str(tmp_path / "hello.txt"))
    client.set_terminated(run_id)

    key = f"artifacts/{exp}/{run_id}/artifacts/hello.txt"
    assert key in s3_server.keys(s.bucket, f"artifacts/{exp}/"), s3_server.keys(s.bucket)
    obj = s3_server.client().get_object(Bucket=s.bucket, Key=key)
    assert obj["Body"].read() == b"hello from caviar"
    with psycopg.connect(s.backend) as db:
        row = db.execute("SELECT status, experiment_id FROM runs WHERE run_uuid = %s",
                         (run_id,)).fetchone()
        metric = db.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = %s",
                            (run_id, "val_loss")).fetchone()
    assert row == ("FINISHED", int(exp)) and metric == (0.25,)

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")  # the same client without them: refused
    with pytest.raises(MlflowException, match="401|not authenticated"):
        client.get_run(run_id)


# --- the S3 server as Ray Tune's storage reaches it ---------------------------------------

PYARROW = textwrap.dedent("""
    import sys
    from pyarrow import fs
    how, url, bucket = sys.argv[1].split(",")
    if how == "endpoint_override":
        s3, path = fs.S3FileSystem(endpoint_override=url), bucket + "/p"
    else:  # Ray Tune's storage_path="s3://...": FileSystem.from_uri, the endpoint from env
        s3, path = fs.FileSystem.from_uri(f"s3://{bucket}/p")
    with s3.open_output_stream(path + "/" + how) as f:
        f.write(how.encode())
""")


@pytest.mark.parametrize("how", ["endpoint_override", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_pyarrow_reaches_the_s3_server(s3_server, tmp_path, how):
    """pyarrow 25 takes the endpoint from endpoint_override, or in FileSystem.from_uri
    from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (S3FileSystem() itself reads neither)."""
    bucket = s3_server.make_bucket(f"pyarrow-{how.lower().replace('_', '-')}")
    env = {k: v for k, v in s3_server.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    if how != "endpoint_override":
        env[how] = s3_server.url
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-c", PYARROW, f"{how},{s3_server.url},{bucket}"],
                          env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert s3_server.keys(bucket) == [f"p/{how}"]


# --- Ray with token authentication -----------------------------------------------------

CLIENT = textwrap.dedent("""
    import json, sys, ray
    ray.init(address=sys.argv[1], logging_level="ERROR")

    @ray.remote(num_cpus=0, resources={"worker": 0.01})
    def where():
        return ray.get_runtime_context().get_node_id()

    print(json.dumps({"cpus": ray.cluster_resources().get("CPU"),
                      "worker_task_on": ray.get(where.remote(), timeout=120)}))
""")
JOBS = textwrap.dedent("""
    import sys
    from ray.job_submission import JobSubmissionClient
    print(len(JobSubmissionClient(sys.argv[1]).list_jobs()), "jobs")
""")


def _home(root: Path, token: str | None) -> Path:
    """A HOME of its own: with ``token`` in ~/.ray/auth_token, else without one."""
    home = root / f"home-{uuid.uuid4().hex[:8]}"
    (home / ".ray").mkdir(parents=True)
    if token is not None:
        (home / ".ray" / "auth_token").write_text(token)
    return home


def _python(code: str, arg: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with none of this process's Ray settings; a
    refused ray.init gives up after 2 tries (else 20, one a second)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run([sys.executable, "-c", code, arg], cwd=REPO, timeout=240,
                          env={**base, "HOME": str(home), "RAY_NUM_REDIS_GET_RETRIES": "2",
                               **env}, capture_output=True, text=True)


WRONG = "0" * 64


@pytest.mark.parametrize("case", ["no token", "another token", "the token without token mode"])
def test_a_ray_client_without_the_token_is_refused(ray_raylets, tmp_path, case):
    r = ray_raylets
    env, home = {
        "no token": ({}, _home(tmp_path, None)),
        "another token": ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": WRONG},
                          _home(tmp_path, None)),
        # Ray 2.60 sends a token to an address it is given only in token mode: the token
        # in RAY_AUTH_TOKEN or ~/.ray/auth_token alone is not enough
        "the token without token mode": ({"RAY_AUTH_TOKEN": r.token}, _home(tmp_path, r.token)),
    }[case]
    done = _python(CLIENT, r.address, home, **env)
    assert done.returncode != 0 and "worker_task_on" not in done.stdout
    assert "InvalidAuthToken" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("case", ["token in the environment", "over a stale token file",
                                  "token file"])
def test_a_ray_client_with_the_token_reaches_both_raylets(ray_raylets, tmp_path, case):
    r = ray_raylets
    env, home = {
        "token in the environment": (r.env(), _home(tmp_path, None)),
        "over a stale token file": (r.env(), _home(tmp_path, WRONG)),  # RAY_AUTH_TOKEN wins
        "token file": ({"RAY_AUTH_MODE": "token"}, _home(tmp_path, r.token)),
    }[case]
    done = _python(CLIENT, r.address, home, **env)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"cpus": 2.0, "worker_task_on": r.node_ids["worker"]}


EMBEDDED = textwrap.dedent("""
    import json, ray
    from orchestrator.cluster.connect import connect
    connect()
    print(json.dumps({"gcs": ray.get_runtime_context().gcs_address,
                      "nodes": len(ray.nodes())}))
""")


def test_the_embedded_ray_starts_its_own_beside_a_ray_start_cluster(ray_raylets, tmp_path):
    """``ray.init()`` alone joins a cluster ``ray start`` runs on the same machine (Ray
    finds its GCS among the processes) and refuses the embedded Ray's settings there:
    caviar's embedded default, with no address given, starts a Ray of its own."""
    done = _python(EMBEDDED, "", _home(tmp_path, None))
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["gcs"] != ray_raylets.address and seen["nodes"] == 1, seen


CAVIAR_CLIENT = CLIENT.replace(
    'ray.init(address=sys.argv[1], logging_level="ERROR")',
    "from orchestrator.cluster.connect import connect\nconnect(sys.argv[1])")


@pytest.mark.parametrize("case", ["token in the environment", "token file"])
def test_caviar_joins_a_cluster_with_its_token_alone(ray_raylets, tmp_path, case):
    """What plain Ray refuses above ("the token without token mode"), caviar's connect
    does: a token found is a token sent (RAY_AUTH_MODE=token unless set)."""
    r = ray_raylets
    env, home = {"token in the environment": ({"RAY_AUTH_TOKEN": r.token},
                                              _home(tmp_path, None)),
                 "token file": ({}, _home(tmp_path, r.token))}[case]
    done = _python(CAVIAR_CLIENT, r.address, home, **env)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"cpus": 2.0, "worker_task_on": r.node_ids["worker"]}


def test_the_dashboard_and_its_jobs_api_need_the_token(ray_raylets, tmp_path):
    r = ray_raylets
    status, body = r.request("/api/jobs/", token=None)
    assert (status, body) == (401, b"Unauthorized: Missing authentication token")
    status, body = r.request("/api/jobs/", token=WRONG)
    assert (status, body) == (403, b"Forbidden: Invalid authentication token")
    status, body = r.request("/api/jobs/")
    assert status == 200 and isinstance(json.loads(body), list)
    for path in ("/api/version", "/api/v0/nodes", "/nodes?view=summary", "/api/v0/logs"):
        assert r.request(path, token=None)[0] == 401, path
    # a job submitted without the token is refused and never runs
    marker = tmp_path / "ran"
    submission = f"intruder-{uuid.uuid4().hex[:8]}"
    status, _ = r.request("/api/jobs/", token=None, method="POST", body=json.dumps(
        {"entrypoint": f"touch {marker}", "submission_id": submission}).encode(),
        headers={"Content-Type": "application/json"})
    assert status == 401
    jobs = json.loads(r.request("/api/jobs/")[1])
    assert submission not in {j.get("submission_id") for j in jobs}
    # open without a token: the UI's page, its health checks, and which auth mode is on
    assert r.request("/", token=None)[0] == 200
    assert r.request("/api/gcs_healthz", token=None)[0] == 200
    assert json.loads(r.request("/api/authentication_mode", token=None)[1]) == {
        "authentication_mode": "token"}
    # Ray checks no Host header: the token is all that guards the dashboard
    assert r.request("/api/jobs/", token=None, headers={"Host": "evil.example.com"})[0] == 401
    assert r.request("/api/jobs/", headers={"Host": "evil.example.com"})[0] == 200
    # and Ray's own Jobs client, as `caviar submit` uses it
    refused = _python(JOBS, r.dashboard, _home(tmp_path, None))
    assert refused.returncode != 0
    assert "Authentication required: Unauthorized: Missing authentication token" in refused.stderr
    allowed = _python(JOBS, r.dashboard, _home(tmp_path, None), **r.env())
    assert allowed.returncode == 0 and "jobs" in allowed.stdout, allowed.stderr[-2000:]
    assert not marker.exists()


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def _is_wildcard(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_unspecified


def test_ray_start_advertises_the_outside_address_and_listens_on_every_interface(ray_raylets):
    """What `ray start --node-ip-address 127.0.0.1` does on Linux (Ray 2.60): true here,
    and a reason for token auth and a firewall (or the cluster network) around Ray."""
    from ray._raylet import node_ip_address_from_perspective

    r = ray_raylets
    outside = node_ip_address_from_perspective(None)  # what Ray takes for this machine
    if _is_loopback(outside):  # nothing for Ray to rewrite 127.0.0.1 to
        why = "this machine has no address but loopback ones"
        pytest.fail(why) if IN_CI else pytest.skip(why)
    assert {n["node_ip"] for n in r.nodes() if n["state"] == "ALIVE"} == {outside}
    socks = r.listening()
    by_port = {port: addr for _, _, listens in socks.values() for addr, port in listens}
    assert _is_wildcard(by_port[r.port]), socks  # the GCS
    raylets = [(role, listens) for role, name, listens in socks.values()
               if "/raylet/raylet" in name]
    assert {role for role, _ in raylets} == {"head", "worker"}, socks
    assert all(_is_wildcard(a) for _, listens in raylets for a, _ in listens), raylets
    # the dashboard (Jobs API) is the one that stays on loopback, as told
    assert [a for _, _, listens in socks.values() for a, p in listens
            if p == r.dashboard_port] == ["127.0.0.1"]
    # so the GCS answers on the outside address too
    socket.create_connection((outside, r.port), timeout=5).close()


def test_a_cluster_in_rays_loopback_mode_listens_on_127_0_0_1_only(tmp_path):
    """Ray's loopback mode on the head and the worker joined without Ray's rewrite of
    127.0.0.1: every socket of both nodes is a loopback one, and the cluster works.
    Losing the worker (kill_worker) leaves none of its processes and a DEAD node."""
    from services import RayRaylets

    r = RayRaylets(loopback_only=True, env={"RAY_health_check_period_ms": "1000",
                                            "RAY_health_check_failure_threshold": "3"})
    try:
        r.start()
        assert {n["node_ip"] for n in r.nodes()} == {"127.0.0.1"}
        done = _python(CLIENT, r.address, _home(tmp_path, None), **r.env())
        assert done.returncode == 0, done.stderr[-2000:]
        worker_id = r.node_ids["worker"]
        assert json.loads(done.stdout.strip().splitlines()[-1])["worker_task_on"] == worker_id
        socks = r.listening()
        assert {role for role, _, _ in socks.values()} == {"head", "worker"}
        outside = {f"{a}:{p} ({role}: {name})" for role, name, listens in socks.values()
                   for a, p in listens if not _is_loopback(a)}
        assert not outside, sorted(outside)

        r.kill_worker()
        assert r.pids("worker") == []
        deadline = time.time() + 60
        while {n["node_id"]: n["state"] for n in r.nodes()}.get(worker_id) != "DEAD":
            assert time.time() < deadline, r.nodes()
            time.sleep(0.5)
        assert r.node_ids == {"head": r.node_ids["head"]}
    finally:
        r.stop()
    assert r.pids("head") == [] and not r.root.exists()
