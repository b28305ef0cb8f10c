"""Sweeps on the embedded default: Ray started in this process, real Tune, real trials."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import read_events

from orchestrator.sweep.paths import SweepError
from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.spec import load_sweep
from searchspaces import SpecError

pytestmark = pytest.mark.usefixtures("embedded_ray")  # one Ray for the module's sweeps


def test_random_sweep_writes_summary_and_trials_csv(write_sweep, tmp_path):
    spec = load_sweep(write_sweep())
    summary = run_sweep(spec, tmp_path / "w")
    out = tmp_path / "w" / "t"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    # summary.json's keys scripts read (docs/reference/summary-json.md)
    for key in ("name", "strategy", "wall_seconds", "trials", "best", "rounds", "mlflow"):
        assert key in on_disk
    assert on_disk["trials"]["total"] == 4
    assert sum(on_disk["trials"][s] for s in ("completed", "early_stopped", "diverged",
                                              "failed")) == 4
    best = on_disk["best"]
    assert set(best["config"]) == {"lr", "hidden_units"}
    assert 0 < best["metrics"]["val_loss"] < 5 and 0 <= best["metrics"]["val_accuracy"] <= 1
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4
    assert {"trial_id", "round", "status", "lr", "hidden_units", "best_val_loss",
            "epochs"} <= set(rows[0])
    assert all(r["status"] == "completed" and r["epochs"] == "4" for r in rows)
    # the best row of the csv is the summary's best
    best_row = min(rows, key=lambda r: float(r["best_val_loss"]))
    assert best_row["trial_id"] == best["trial_id"]
    # every epoch of every trial is in the event log, once
    events = read_events(out / "trials.jsonl")
    epochs = sorted((e["trial_id"], e["epoch"]) for e in events if e["event"] == "result")
    assert len(epochs) == len(set(epochs)) == 16


def test_coarse_to_fine_with_asha_records_rounds_and_boxes(write_sweep, tmp_path):
    spec = load_sweep(write_sweep(
        strategy={"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 4, "keep": 0.5,
                  "margin": 0.05},
        scheduler={"kind": "asha", "grace_epochs": 1, "reduction_factor": 2}, epochs=4))
    summary = run_sweep(spec, tmp_path / "w")
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert [r["trials"] for r in summary["rounds"]] == [4, 4]
    lo0, hi0 = summary["rounds"][0]["box"]["lr"]
    lo1, hi1 = summary["rounds"][1]["box"]["lr"]
    assert (lo0, hi0) == pytest.approx((1e-3, 0.3))
    assert lo0 <= lo1 < hi1 <= hi0 and (hi1 / lo1) < (hi0 / lo0)
    assert summary["trials"]["total"] == 8
    rows = list(csv.DictReader((tmp_path / "w" / "t" / "trials.csv").open()))
    assert sorted(int(r["round"]) for r in rows) == [0] * 4 + [1] * 4
    # round 1's trials lie inside round 1's box
    for r in rows:
        if r["round"] == "1":
            assert lo1 - 1e-12 <= float(r["lr"]) <= hi1 + 1e-12
    # ASHA stops some trials early at reduction factor 2, each at one of its rungs (epochs
    # 1 and 2): a trial of short epochs reports several at once, and always at a rung.
    assert summary["trials"]["early_stopped"] >= 1
    events = read_events(tmp_path / "w" / "t" / "trials.jsonl")
    stopped = {e["trial_id"] for e in events
               if e["event"] == "end" and e["status"] == "early_stopped"}
    last = {t: max(e["epoch"] for e in events if e["event"] == "result" and e["trial_id"] == t)
            for t in stopped}
    assert len(stopped) == summary["trials"]["early_stopped"]
    assert set(last.values()) <= {1, 2}, last


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_bad_report_interval_is_refused_before_anything_is_written(write_sweep, tmp_path,
                                                                     monkeypatch, value):
    monkeypatch.setenv("CAVIAR_REPORT_EVERY_S", value)
    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1))
    with pytest.raises(SpecError, match=r"CAVIAR_REPORT_EVERY_S.*not a number of seconds >= 0"):
        run_sweep(spec, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_diverging_trial_is_recorded_as_diverged(write_sweep, tmp_path):
    spec = load_sweep(write_sweep(
        model={"batch_norm": False},
        space={"lr": {"scale": "log", "low": 1e5, "high": 1e6}, "optimizer": {"fixed": "sgd"}},
        strategy={"kind": "random", "trials": 2}))
    summary = run_sweep(spec, tmp_path / "w")
    assert summary["trials"]["diverged"] == 2
    assert any("diverged" in w for w in summary["warnings"])


def test_resources_the_cluster_cannot_give_are_refused_before_any_trial(write_sweep, tmp_path):
    spec = load_sweep(write_sweep(resources={"cpu": 1, "gpu": 1}))
    with pytest.raises(SpecError, match=r"resources.*gpu: 1.*no node of the cluster"):
        run_sweep(spec, tmp_path / "w")
    assert not (tmp_path / "w" / "t" / "trials.jsonl").exists()


def test_an_existing_sweep_needs_resume_or_fresh(write_sweep, tmp_path):
    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1))
    run_sweep(spec, tmp_path / "w")
    with pytest.raises(SweepError, match="already exists.*--resume.*--fresh"):
        run_sweep(spec, tmp_path / "w")
    summary = run_sweep(spec, tmp_path / "w", fresh=True)
    assert summary["trials"]["total"] == 1
    assert list((tmp_path / "w").glob("t.old-*"))  # moved aside, not deleted


def test_fresh_with_bad_input_leaves_the_old_sweep_where_it_was(write_sweep, tmp_path):
    from models.data import DataError
    from searchspaces import SpecError

    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1))
    run_sweep(spec, tmp_path / "w")
    before = sorted(p.name for p in (tmp_path / "w").iterdir())
    bad_data = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1,
                                      data={"source": "csv", "path": "gone.csv",
                                            "label": "y"}))
    with pytest.raises(DataError, match="gone.csv: no such file"):
        run_sweep(bad_data, tmp_path / "w", fresh=True)
    too_big = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1,
                                     resources={"cpu": 999}))
    with pytest.raises(SpecError, match="no node of the cluster has that much"):
        run_sweep(too_big, tmp_path / "w", fresh=True)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == before  # nothing moved
    assert run_sweep(spec, tmp_path / "w", resume=True)["trials"]["total"] == 1


def test_a_sweep_whose_snapshot_names_code_this_caviar_lacks_is_refused_clearly(write_sweep,
                                                                                 tmp_path):
    """Tune pickles caviar's functions by module and name into tuner.pkl; a sweep started
    under an earlier layout (orchestrator.records, orchestrator.sweep.trial_dirname) names
    modules this caviar lacks. Here the module a snapshot names is renamed (same length)."""
    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1,
                                  tracking={"enabled": False}))
    run_sweep(spec, tmp_path / "w")
    pkl = tmp_path / "w" / "ray" / "t" / "tuner.pkl"
    data = pkl.read_bytes()
    assert data.count(b"orchestrator.sweep.run") == 1  # where trial_dirname lives
    pkl.write_bytes(data.replace(b"orchestrator.sweep.run", b"orchestrator.sweep.ruX"))
    with pytest.raises(SweepError, match="started by an earlier caviar.*sweep.ruX.*"
                                         "resume it with that version, or start over with "
                                         "--fresh"):
        run_sweep(spec, tmp_path / "w", resume=True)


def test_resume_without_a_sweep_is_refused(write_sweep, tmp_path):
    spec = load_sweep(write_sweep())
    with pytest.raises(SweepError, match="nothing to resume"):
        run_sweep(spec, tmp_path / "w", resume=True)


def test_pbt_exploits_and_perturbs_within_the_space(write_sweep, tmp_path):
    spec = load_sweep(write_sweep(
        data={"source": "synthetic", "size": 3000, "n_features": 20, "classes": 3},
        space={"lr": {"scale": "log", "low": 1e-4, "high": 0.5},
               "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.99}},
        strategy={"kind": "random", "trials": 4}, epochs=8,
        scheduler={"kind": "pbt", "perturbation_interval": 2},
        resources={"cpu": 1, "concurrency": 4}))
    summary = run_sweep(spec, tmp_path / "w")
    assert summary["trials"]["total"] == 4 and summary["trials"]["completed"] == 4
    events = read_events(tmp_path / "w" / "t" / "trials.jsonl")
    configs = {}
    for e in events:
        if e["event"] == "start":
            configs.setdefault(e["trial_id"], []).append(e["config"])
    changed = [t for t, cs in configs.items() if cs[-1]["lr"] != cs[0]["lr"]]
    assert changed, "no trial was exploited and perturbed"
    for cs in configs.values():  # perturbed values stay inside the declared space
        for c in cs:
            assert 1e-4 <= c["lr"] <= 0.5 and 0.5 <= c["momentum"] <= 0.99


def test_tpe_sweep_runs_through_optuna(write_sweep, tmp_path):
    spec = load_sweep(write_sweep(strategy={"kind": "tpe", "trials": 4}, epochs=2))
    summary = run_sweep(spec, tmp_path / "w")
    assert summary["strategy"] == "tpe" and summary["trials"]["completed"] == 4
    assert summary["best"]["config"]["lr"] > 0


def test_a_copied_workdir_is_not_resumed_into_the_original(write_sweep, tmp_path):
    import shutil

    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1))
    run_sweep(spec, tmp_path / "w1")
    shutil.copytree(tmp_path / "w1", tmp_path / "w2")
    log = tmp_path / "w1" / "t" / "trials.jsonl"
    before = (log.stat().st_mtime_ns, log.read_bytes())
    with pytest.raises(SweepError, match=f"started in {tmp_path / 'w1'} and has been moved or "
                                         f"copied to {tmp_path / 'w2'}"):
        run_sweep(spec, tmp_path / "w2", resume=True)
    assert (log.stat().st_mtime_ns, log.read_bytes()) == before  # the original untouched
    assert run_sweep(spec, tmp_path / "w1", resume=True)["trials"]["total"] == 1


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem of a few MB (tmpfs, mounted as root): the disk that fills up."""
    import subprocess

    from services import IN_CI

    mounts = []

    def mount(megabytes: int):
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if done.returncode != 0:  # CI runs as root (it installs with apt-get): fail there
            why = f"cannot mount a tmpfs ({done.stderr.strip()}): these tests need root"
            pytest.fail(why) if IN_CI else pytest.skip(why)
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_disk_that_fills_mid_sweep_ends_it_in_one_paragraph(write_sweep, small_disk):
    from orchestrator.sweep.paths import DiskFull

    # nets of 1,500 units: a checkpoint is ~27 MB, so the first trial fills 40 MB
    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 3}, epochs=3,
                                  space={"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                                         "hidden_units": {"fixed": 1500}}))
    workdir = small_disk(40) / "w"
    with pytest.raises(DiskFull) as e:
        run_sweep(spec, workdir)
    message = str(e.value)
    assert message.startswith(f"the disk holding {workdir} is full (")
    assert f"caviar sweep {spec.source} --resume --workdir {workdir}" in message
    assert "\n" not in message
    assert not list(workdir.rglob("*.tmp")), "a half-written record was left behind"


def test_a_disk_already_full_is_refused_before_anything_is_written(write_sweep, small_disk):
    spec = load_sweep(write_sweep(strategy={"kind": "random", "trials": 1}, epochs=1))
    workdir = small_disk(8) / "w"
    with pytest.raises(SweepError, match=r"its disk has \d+\.\d MB free, under the 16 MB"):
        run_sweep(spec, workdir)
    assert list(workdir.iterdir()) == []
