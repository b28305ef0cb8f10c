"""End to end on a real multi-raylet cluster, as a team runs caviar on its own cluster.

Started here by the test and torn down by PID: `ray start --head` on 127.0.0.1 and a
second `ray start --address` raylet (two raylets, token authentication on), an MLflow
server with the basic-auth app on PostgreSQL, and an S3-compatible server (moto's)
holding both the trials' storage and MLflow's artifacts. `caviar submit` sends a sweep
through the Jobs API; the worker raylet is killed (SIGKILL to its whole process group)
while a trial trains on it; the trial must go on on the head from its checkpoint in S3.
Then `caviar retune --dry-run` reads the registered model from the same server.

Nothing is mocked. The nodes' environment holds what a cluster's pods would get from
their Secrets: the S3 endpoint and keys, the MLflow address and credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, read_events
from services import RayRaylets

EPOCHS = 24
TRIALS = f"trials-{os.urandom(4).hex()}"
FAST_NODE_DEATH = {  # the GCS declares a silent node dead within ~5 s, not ~30 s
    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture
def servers(s3_server, auth_mlflow_server):
    """(S3, MLflow, Ray): the nodes' environment holds the S3 endpoint and keys and the
    MLflow address and credentials, as a cluster's pods get them from Secrets."""
    s3_server.make_bucket(TRIALS)  # a bucket of its own: the S3 server is shared
    ray = RayRaylets(head_cpus=1, worker_cpus=1, env={
        **s3_server.env(), **auth_mlflow_server.client_env(), **FAST_NODE_DEATH})
    try:
        yield s3_server, auth_mlflow_server, ray.start()
    finally:
        ray.stop()


def _caviar(*args, env: dict, **kw) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *map(str, args)],
                            cwd=REPO, env={**clean, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _by_trial(events: list[dict]) -> dict:
    trials: dict = {}
    for e in events:
        t = trials.setdefault(e["trial_id"], {"results": [], "end": None})
        if e["event"] == "result":
            t["results"].append(e)
        elif e["event"] == "end":
            t["end"] = e
    return trials


def _kill_the_worker_mid_trial(ray: RayRaylets, log, driver, timeout: float = 300) -> dict:
    """Waits for a trial with a few epochs recorded on the worker, then kills the worker."""
    worker = ray.node_ids["worker"]
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        if log.exists():
            for tid, t in _by_trial(read_events(log)).items():
                on_worker = [r for r in t["results"] if r["metrics"]["node_id"] == worker]
                if len(on_worker) >= 3 and t["end"] is None:
                    ray.kill_worker()
                    return {"trial": tid, "epoch": on_worker[-1]["epoch"], "node": worker}
        time.sleep(0.2)
    raise AssertionError(f"no trial ran on the worker long enough to kill it; driver: "
                         f"{driver.poll()} {driver.stderr.read() if driver.poll() else ''}")


def test_a_submitted_sweep_survives_a_lost_raylet_with_trials_in_s3(servers, tmp_path):
    s3, mlflow, ray = servers
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "t", "data": {"source": "synthetic", "size": 30000, "n_features": 20,
                              "classes": 3},
        "space": {"lr": {"scale": "log", "low": 0.01, "high": 0.3},
                  "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 64}},
        "strategy": {"kind": "random", "trials": 2}, "epochs": EPOCHS,
        "resources": {"cpu": 1, "concurrency": 2}, "seed": 0,
        "storage": f"s3://{TRIALS}/sweeps", "register": {"name": "e2e-model", "promote": True}}))
    workdir = tmp_path / "head-workdir"  # the head node's own disk: the driver's records
    driver = _caviar("submit", sweep, "--address", ray.dashboard, "--workdir", workdir,
                     env=ray.env())
    killed = _kill_the_worker_mid_trial(ray, workdir / "t" / "trials.jsonl", driver)
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-4000:]
    assert killed["epoch"] < EPOCHS, killed

    summary = json.loads((workdir / "t" / "summary.json").read_text())
    assert summary["trials"] == {"total": 2, "completed": 2, "early_stopped": 0,
                                 "diverged": 0, "failed": 0}
    moved = _by_trial(read_events(workdir / "t" / "trials.jsonl"))[killed["trial"]]
    head = ray.node_ids["head"]
    after = [r for r in moved["results"] if r["metrics"]["node_id"] == head
             and not r.get("replayed")]
    assert after and after[0]["epoch"] > 1, "the trial did not go on on the head from S3"
    trained = [r["epoch"] for r in moved["results"] if not r.get("replayed")]
    assert len(trained) == len(set(trained)), trained  # no epoch trained twice
    assert {r["epoch"] for r in moved["results"]} == set(range(1, EPOCHS + 1))

    keys = s3.keys(TRIALS, f"sweeps/t/trial_{killed['trial']}/")
    assert f"sweeps/t/trial_{killed['trial']}/best.pt" in keys, keys
    assert not (workdir / "ray").exists()  # trial storage is S3 only

    # The runs are in PostgreSQL, the model in the S3 artifact store.
    import psycopg

    with psycopg.connect(mlflow.backend.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows = conn.execute("SELECT r.status, count(*) FROM runs r JOIN experiments e ON "
                            "r.experiment_id = e.experiment_id WHERE e.name = 't' "
                            "GROUP BY r.status").fetchall()
    assert dict(rows) == {"FINISHED": 3}, rows  # the sweep's parent run and two trials
    run_id = summary["mlflow"]["parent_run_id"]
    model_keys = [k for k in s3.keys("mlflow", "artifacts/") if f"/{run_id}/" in k]
    assert any(k.endswith("/model/weights.pt") for k in model_keys), model_keys
    assert summary["registered"]["version"] == "1"

    # The nightly re-tune, dry, against the same server.
    retune = tmp_path / "retune.yaml"
    retune.write_text(yaml.safe_dump({"model": "e2e-model", "sweep": "sweep.yaml",
                                      "triggers": ["age", "hardware"], "max_age_days": 90}))
    dry = _caviar("retune", retune, "--dry-run", "--workdir", tmp_path / "retune-workdir",
                  env={**mlflow.client_env(), **s3.env()})
    out, err = dry.communicate(timeout=300)
    assert dry.returncode == 0, err[-4000:]
    decision = json.loads(out.strip().splitlines()[-1])
    assert decision["model"] == "e2e-model" and decision["production_version"] == "1"
    assert decision["decision"] in ("not_stale", "would_retune") and decision["dry_run"]
