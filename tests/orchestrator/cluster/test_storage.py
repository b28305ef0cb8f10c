"""Trial storage on a folder and on a real S3-compatible server (moto's, on 127.0.0.1).

Nothing here is mocked: the S3 tests talk to a moto server process over HTTP through
pyarrow.fs, as Ray Tune's own storage does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, assert_one_paragraph_error, caviar, read_events, sweep_dict

from models.config import HParams, MLPConfig
from models.train import fit, load_checkpoint
from orchestrator.cluster.storage import Storage, check_location
from orchestrator.sweep.trainable import BEST_FILE, adopt_orphan, newest_checkpoint, save_epoch

CFG, HP, SEED = MLPConfig(hidden_units=8, layers=1), HParams(lr=0.05), 3
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path, s3_server, monkeypatch):
    """An empty trial storage folder: on the local disk, or in a bucket of the S3 server."""
    if request.param == "folder":
        return Storage(tmp_path / "store")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = f"st-{os.urandom(4).hex()}"
    s3_server.make_bucket(bucket)
    return Storage(f"s3://{bucket}/trials")


def test_a_store_writes_lists_reads_moves_and_deletes(store):
    trial = store / "trial_a"
    trial.mkdir()
    for n in (1, 2, 3):
        trial.write(f"epoch_{n:05d}.pt", lambda p, n=n: p.write_text(f"epoch {n}"))
    trial.write("best.pt", lambda p: p.write_text("best"))
    assert trial.list("epoch_*.pt") == ["epoch_00001.pt", "epoch_00002.pt", "epoch_00003.pt"]
    assert trial.read("epoch_00002.pt", lambda p: p.read_text()) == "epoch 2"
    assert store.is_dir("trial_a") and trial.exists("best.pt") and not trial.exists("x.pt")
    trial.delete("epoch_00001.pt")
    assert trial.list("epoch_*.pt") == ["epoch_00002.pt", "epoch_00003.pt"]

    store.move("trial_a", store / "orphans" / "trial_a")
    assert not store.is_dir("trial_a")
    assert (store / "orphans" / "trial_a").list() == ["best.pt", "epoch_00002.pt",
                                                      "epoch_00003.pt"]
    store.delete("orphans")
    assert store.list("orphans") == [] and (store / "none").list() == []


def test_a_store_pickles_as_its_location_and_rebuilds_its_filesystem(store):
    import pickle

    store.write("f.txt", lambda p: p.write_text("x"))
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone._fs is None
    assert clone.read("f.txt", lambda p: p.read_text()) == "x"


def _train(data, trial, epochs: int) -> None:
    def on_epoch(metrics, run):
        if run.epoch == 2:
            trial.write(BEST_FILE, run.save_checkpoint)
        save_epoch(run, trial)

    fit(data, CFG, HP, epochs=epochs, seed=SEED, device="cpu", callback=on_epoch)


def test_checkpoints_and_orphans_resume_through_the_store(store, tiny_data):
    """What a restarted trial reads: its newest checkpoint, else an orphan's, whose
    best.pt the adopting trial takes along (the orphans go when the sweep ends)."""
    _train(tiny_data, store / "trial_a", epochs=3)
    assert (store / "trial_a").list() == [BEST_FILE, "epoch_00002.pt", "epoch_00003.pt"]
    assert newest_checkpoint(store / "trial_a")["epoch"] == 3
    assert newest_checkpoint(str(store / "trial_none")) is None

    store.move("trial_a", store / "orphans" / "trial_a")
    assert adopt_orphan(str(store), SEED + 1, CFG, HP, into=store / "trial_b") is None
    assert not store.exists("trial_b")
    state = adopt_orphan(str(store), SEED, CFG, HP, into=store / "trial_b")
    assert state["epoch"] == 3 and state["seed"] == SEED
    assert (store / "trial_b").read(BEST_FILE, load_checkpoint)["epoch"] == 2


@pytest.mark.parametrize(("location", "fragment"), [
    ("ftp://host/x", "scheme 'ftp'"),
    ("s3:///no-bucket", "names no bucket"),
    ("", "must be a folder"),
    (42, "must be a folder"),
])
def test_check_location_refuses_what_is_no_trial_storage(location, fragment):
    assert fragment in check_location(location)


@pytest.mark.parametrize("ok", ["./runs", "/mnt/nfs/caviar", "s3://b/p", "gs://b"])
def test_check_location_takes_folders_and_object_stores(ok):
    assert check_location(ok) is None


def test_a_sweep_file_with_a_bad_storage_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(storage="hdfs://namenode/x")))
    done = caviar("sweep", path, "--workdir", tmp_path / "w")
    assert done.returncode == 2
    assert_one_paragraph_error(done.stderr, str(path), "key 'storage'", "hdfs")
    assert not (tmp_path / "w").exists()  # nothing half-done


def _run(*args, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def test_a_missing_bucket_is_refused_before_anything_starts(tmp_path, s3_server):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict()))
    done = _run("sweep", path, "--workdir", tmp_path / "w", "--storage", "s3://no-such-bucket/x",
                env=s3_server.env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert_one_paragraph_error(done.stderr, "s3://no-such-bucket/x", "'no-such-bucket' does not "
                               "exist")
    assert not (tmp_path / "w" / "t").exists()


def test_a_sweep_keeps_its_trials_in_s3_and_its_records_here(tmp_path, s3_server):
    """Checkpoints, best.pt and Tune's snapshots in the bucket; the summary, the event log
    and the exported model in the workdir; --fresh moves the old experiment aside there."""
    bucket = s3_server.make_bucket(f"sweeps-{os.urandom(4).hex()}")  # the server is shared
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(storage=f"s3://{bucket}/team-a", epochs=2,
                                              tracking={"enabled": False},
                                              strategy={"kind": "random", "trials": 2})))
    workdir = tmp_path / "w"
    done = _run("sweep", path, "--workdir", workdir, env=s3_server.env())
    assert done.returncode == 0, done.stderr
    summary = json.loads((workdir / "t" / "summary.json").read_text())
    assert summary["trials"]["completed"] == 2
    keys = s3_server.keys(bucket, "team-a/t/")
    trials = {k.split("/")[2] for k in keys if k.split("/")[2].startswith("trial_")}
    assert len(trials) == 2
    for trial in trials:
        assert f"team-a/t/{trial}/best.pt" in keys
        assert any(k.startswith(f"team-a/t/{trial}/epoch_") for k in keys)
    assert any(k.startswith("team-a/t/experiment_state-") for k in keys)
    assert not (workdir / "ray").exists()  # no trial storage on this disk
    assert (workdir / "t" / "model" / "weights.pt").is_file()
    assert summary["best"]["metrics"]["test_loss"] is not None  # read back from S3's best.pt
    assert len({e["trial_id"] for e in read_events(workdir / "t" / "trials.jsonl")}) == 2

    again = _run("sweep", path, "--workdir", workdir, "--fresh", env=s3_server.env())
    assert again.returncode == 0, again.stderr
    tops = {k.split("/")[1] for k in s3_server.keys(bucket, "team-a/")}
    assert "t" in tops and any(t.startswith("t.old-") for t in tops), tops


@pytest.mark.parametrize(("location", "fragment"), [
    ("s3://AKIA:secret@bucket/p", "carries credentials"),
    ("s3://bucket/p?region=eu-west-1", "options after '?'"),
])
def test_credentials_and_options_in_a_storage_uri_are_refused(location, fragment):
    problem = check_location(location)
    assert fragment in problem and "secret" not in problem


def test_a_sweep_file_takes_only_an_absolute_folder(tmp_path):
    from orchestrator.sweep.spec import parse_sweep
    from searchspaces import SpecError

    with pytest.raises(SpecError, match="relative folder"):
        parse_sweep(sweep_dict(storage="runs/trials"), "s.yaml", tmp_path)
    assert parse_sweep(sweep_dict(storage="/mnt/nfs/t"), "s.yaml", tmp_path).storage == \
        "/mnt/nfs/t"


def test_a_resume_goes_on_in_the_storage_it_started_with_and_refuses_another(tmp_path):
    from orchestrator.sweep.paths import SweepError, trial_storage
    from orchestrator.sweep.spec import parse_sweep

    spec = parse_sweep(sweep_dict(), "s.yaml", tmp_path)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "origin.json").write_text(json.dumps(
        {"workdir": str(tmp_path), "storage": "s3://b/started"}))
    assert trial_storage(spec, tmp_path, None, resume=True) == "s3://b/started"
    assert trial_storage(spec, tmp_path, "s3://b/started/", resume=True) == "s3://b/started"
    with pytest.raises(SweepError, match="started with its trials in s3://b/started"):
        trial_storage(spec, tmp_path, "s3://b/elsewhere", resume=True)
    other = parse_sweep(sweep_dict(storage="s3://b/file"), "s.yaml", tmp_path)
    with pytest.raises(SweepError, match="would find none of them"):
        trial_storage(other, tmp_path, None, resume=True)
    assert trial_storage(other, tmp_path, None, resume=False) == "s3://b/file"


def test_submit_refuses_a_bad_storage_before_reaching_the_cluster(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict()))
    done = caviar("submit", path, "--address", "http://127.0.0.1:9", "--storage", "ftp://x/y")
    assert done.returncode == 2
    assert_one_paragraph_error(done.stderr, "--storage ftp://x/y", "scheme 'ftp'")


def test_a_retune_refuses_a_missing_bucket_before_it_takes_the_lock(tmp_path, s3_server):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep_dict()))
    retune = tmp_path / "retune.yaml"
    retune.write_text(yaml.safe_dump({"model": "m", "sweep": "sweep.yaml"}))
    done = _run("retune", retune, "--workdir", tmp_path / "w", "--storage", "s3://nope-bkt/r",
                env=s3_server.env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert_one_paragraph_error(done.stderr, "--storage s3://nope-bkt/r", "'nope-bkt' does not "
                               "exist")
    assert not (tmp_path / "w").exists()
