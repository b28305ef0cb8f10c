"""SIGKILL the driver in the middle of a sweep, then ``caviar sweep --resume``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, kill_session, read_events


def _caviar(*args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})}, **kwargs)


# Epochs of ~0.1 s. "0": a report and a checkpoint every epoch, as trials with epochs of
# seconds do. Unset: the pace of short epochs, a report (and checkpoint) per 2 s, each
# carrying the epochs since the last: a killed trial goes back to its last report.
# "s3": trial storage in a bucket of a real S3-compatible server (moto's): checkpoints,
# orphans and Tune's snapshot go through it; the resume finds it in origin.json. The
# paced case keeps its trials in a folder (the default): between them, both paces and
# both kinds of storage are killed and resumed.
SIZE = 6000  # rows: an epoch of ~0.2 s
PACES = [pytest.param({}, 50, (1, 35), None, id="short-epochs-paced"),
         pytest.param({"CAVIAR_REPORT_EVERY_S": "0"}, 10, (2, 6), "s3", id="every-epoch-s3")]


@pytest.mark.parametrize(("env", "n_epochs", "window", "storage"), PACES)
def test_resume_after_sigkill_keeps_finished_trials_and_checkpoints(write_sweep, tmp_path, env,
                                                                    n_epochs, window, storage,
                                                                    request):
    sweep = write_sweep(data={"source": "synthetic", "size": SIZE, "n_features": 30,
                              "classes": 4},
                        strategy={"kind": "random", "trials": 4}, epochs=n_epochs,
                        resources={"cpu": 1, "concurrency": 2})
    workdir = tmp_path / "w"
    log = workdir / "t" / "trials.jsonl"
    flags = []
    if storage == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = s3.make_bucket(f"resume-{os.urandom(4).hex()}")
        env = {**env, **s3.env()}
        flags = ["--storage", f"s3://{bucket}/trials"]  # the resume finds it alone
    driver = _caviar("sweep", str(sweep), "--workdir", str(workdir), *flags, env=env)
    before = None
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if log.exists():
            events = read_events(log)
            ended = {e["trial_id"] for e in events if e["event"] == "end"}
            started = {e["trial_id"] for e in events if e["event"] == "start"}
            running = started - ended
            epochs = {t: [e["epoch"] for e in events if e["event"] == "result"
                          and e["trial_id"] == t] for t in running}
            # Kill while every running trial is mid-way (epochs recorded, but many left to
            # train after the resume): right after the first end, the other trial of the
            # first pair may be one epoch short of its last.
            lo, hi = window
            if len(ended) >= 1 and running and \
                    all(lo <= len(v) <= hi for v in epochs.values()):
                kill_session(driver.pid)  # the driver and what it started, workers too
                driver.wait()
                before = {"ended": ended, "running": running, "events": len(events)}
                break
        time.sleep(0.05)
    assert before is not None, "the sweep never reached the point to kill it"

    resumed_at = time.time()
    resumed = _caviar("sweep", str(sweep), "--workdir", str(workdir), "--resume", env=env)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err

    summary = json.loads((workdir / "t" / "summary.json").read_text())
    assert summary["trials"]["total"] == 4  # the trial count is unchanged
    assert summary["trials"]["completed"] == 4
    assert json.loads(out.strip().splitlines()[-1])["trial_id"] == summary["best"]["trial_id"]

    # A trial is known by its seed: one started in the last second before the kill is
    # unknown to Tune's snapshot and comes back under a new id, with the same config.
    events = read_events(log)
    seed_of = {e["trial_id"]: e["config"]["_seed"] for e in events if e["event"] == "start"}
    forgotten = {e["trial_id"] for e in events if e["event"] == "forget"}
    alive = set(seed_of) - forgotten
    assert len(alive) == 4 and len({seed_of[t] for t in alive}) == 4

    def trained(seed, since=0.0):
        """Epochs trained (not replayed from a checkpoint) by a seed's trials since then."""
        return [e["epoch"] for e in events if e["event"] == "result" and e["time"] >= since
                and seed_of[e["trial_id"]] == seed and not e.get("replayed")]

    for tid in before["ended"]:  # no finished trial is re-run
        assert trained(seed_of[tid], resumed_at) == [], tid
    # No epoch is trained twice: no trial restarted from epoch 0 (nor from any epoch it
    # had passed). Epochs trained just before the kill but not yet recorded come back
    # replayed from the checkpoint.
    for seed in {seed_of[t] for t in alive}:
        epochs = trained(seed)
        assert len(epochs) == len(set(epochs)), (seed, epochs)
    # The kill did interrupt training that the resumed sweep went on with.
    assert any(trained(seed_of[t], resumed_at) for t in before["running"])
    for tid in alive:  # and every trial has every epoch
        epochs = {e["epoch"] for e in events if e["event"] == "result" and e["trial_id"] == tid}
        assert epochs == set(range(1, n_epochs + 1)), tid
    # Every trial has its best.pt, an orphan's adopter too (the orphans are gone).
    if storage == "s3":
        keys = s3.keys(bucket, "trials/t/")
        assert not (workdir / "ray").exists() and keys
        assert not [k for k in keys if k.startswith("trials/t/orphans/")]
        with_best = {k.split("/")[2] for k in keys if k.endswith("/best.pt")}
    else:
        assert not (workdir / "ray" / "t" / "orphans").exists()
        with_best = {p.parent.name for p in (workdir / "ray" / "t").glob("trial_*/best.pt")}
    assert with_best == {f"trial_{t}" for t in alive}

    # MLflow (the embedded store): one run per trial, each epoch once, none left RUNNING.
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.get_experiment_by_name("t")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trial_runs = [r for r in runs if r.data.tags.get("caviar.kind") == "trial"
                  and r.data.tags.get("caviar.status") != "forgotten"]
    assert sorted(r.data.tags["caviar.trial_id"] for r in trial_runs) == sorted(alive)
    for r in trial_runs:
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, n_epochs + 1)), \
            (r.data.tags["caviar.trial_id"], steps)
    forgotten = [r for r in runs if r.data.tags.get("caviar.status") == "forgotten"]
    assert all(r.info.status == "KILLED" for r in forgotten)
    assert len([r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]) == 1
