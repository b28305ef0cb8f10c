"""SIGKILL the driver in the middle of a sweep, then ``caviar sweep --resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO, read_events


def _caviar(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def test_resume_after_sigkill_keeps_finished_trials_and_checkpoints(write_sweep, tmp_path):
    sweep = write_sweep(data={"source": "synthetic", "size": 5000, "n_features": 30,
                              "classes": 4},
                        strategy={"kind": "random", "trials": 6}, epochs=10,
                        resources={"cpu": 1, "concurrency": 2})
    workdir = tmp_path / "w"
    log = workdir / "t" / "trials.jsonl"
    driver = _caviar("sweep", str(sweep), "--workdir", str(workdir))
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
            if len(ended) >= 2 and running and all(len(v) >= 3 for v in epochs.values()):
                os.killpg(driver.pid, signal.SIGKILL)  # the driver and what it started
                driver.wait()
                before = {"ended": ended, "running": running, "events": len(events)}
                break
        time.sleep(0.2)
    assert before is not None, "the sweep never reached the point to kill it"
    time.sleep(2)  # let the dead driver's Ray processes go

    resumed = _caviar("sweep", str(sweep), "--workdir", str(workdir), "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err

    summary = json.loads((workdir / "t" / "summary.json").read_text())
    assert summary["trials"]["total"] == 6  # the trial count is unchanged
    assert summary["trials"]["completed"] == 6
    assert json.loads(out.strip().splitlines()[-1])["trial_id"] == summary["best"]["trial_id"]

    events = read_events(log)
    starts = {}
    for e in events:
        if e["event"] == "start":
            starts.setdefault(e["trial_id"], []).append(events.index(e))
    assert len(starts) == 6
    for tid in before["ended"]:  # no finished trial is re-run
        assert len(starts[tid]) == 1, tid
    for tid in before["running"]:  # unfinished trials went on from a checkpoint
        assert len(starts[tid]) == 2, tid
        after_restart = [e for e in events[starts[tid][1]:]
                         if e["event"] == "result" and e["trial_id"] == tid]
        assert after_restart and after_restart[0]["epoch"] > 1, (tid, after_restart[:1])
    for tid in starts:  # and every trial has every epoch
        epochs = {e["epoch"] for e in events if e["event"] == "result" and e["trial_id"] == tid}
        assert epochs == set(range(1, 11)), tid
