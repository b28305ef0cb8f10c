"""What a sweep hands MLflow (orchestrator/sweep/export.py): the parent run's artifacts, the
best trial's hardware, the exported best model, its registration, and ``caviar sync``."""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timezone

import pytest
import torch
from conftest import free_port, sweep_dict
from mlflow import MlflowClient

from models.config import MLPConfig
from models.net import MLP
from models.train import fit, load_checkpoint
from orchestrator.cluster.hardware import HARDWARE_KEYS, hardware_fingerprint
from orchestrator.sweep import export
from orchestrator.sweep.records import LOG_FILE, TrialLog
from orchestrator.sweep.run import SweepPaths
from orchestrator.sweep.sink import STATE_FILE, MlflowSink
from orchestrator.sweep.spec import parse_sweep
from orchestrator.sweep.trainable import BEST_FILE
from orchestrator.tracking.registry import PREVIOUS, PRODUCTION, Lock
from orchestrator.tracking.store import ensure_sqlite_store

TRIAL = "a1b2c3"
HW = {"gpu_model": "Test GPU 80GB", "gpu_count": 2, "cpu_model": "Test CPU", "cpu_count": 64,
      "torch": "2.99.0", "cuda": "12.9"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite MLflow store for the module; each test uses its own experiment and model."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ensure_sqlite_store(uri)
    return uri


def _spec(tmp_path, **overrides):
    return parse_sweep(sweep_dict(**overrides), str(tmp_path / "sweep.yaml"), tmp_path)


def _best_checkpoint(data, paths, trial_id: str = TRIAL, best_epoch: int = 2) -> dict:
    """A real trial's best.pt (saved at ``best_epoch`` of 3) in Tune's experiment folder."""
    path = paths.experiment.path / f"trial_{trial_id}" / BEST_FILE

    def callback(metrics, run):
        if run.epoch == best_epoch:
            run.save_checkpoint(path)

    fit(data, MLPConfig(hidden_units=8, layers=1), epochs=3, seed=5, device="cpu",
        callback=callback)
    return load_checkpoint(path)


def _summary(trial_id: str = TRIAL) -> dict:
    return {"best": {"trial_id": trial_id, "config": {"lr": 0.05, "hidden_units": 8},
                     "seed": 5, "round": 0, "epoch": 2,
                     "metrics": {"val_loss": 0.42, "val_accuracy": 0.81, "train_loss": None}}}


@pytest.fixture(scope="module")
def model_dir(data, tmp_path_factory):
    """A model folder export_best wrote, for the registration tests."""
    paths = SweepPaths.of("reg", tmp_path_factory.mktemp("work"))
    _best_checkpoint(data, paths)
    return export.export_best(paths, _summary(), data)


def _parent(store: str, tmp_path, model_dir) -> MlflowSink:
    """A sweep's parent run holding model/ (as log_model leaves it before register_best)."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()  # run_sweep makes it before tracking starts
    sink = MlflowSink(store, f"exp-{uuid.uuid4().hex[:8]}", sweep_dir, sweep_dir / LOG_FILE,
                      tmp_path)
    sink.prepare({"strategy": "random"}, {"mlflow.runName": "t"})
    sink.start()
    assert export.log_model(sink, model_dir, io.StringIO())
    return sink


def _aliases(client, name: str) -> dict:
    return {k: str(v) for k, v in (client.get_registered_model(name).aliases or {}).items()}


# -- sweep_artifacts ------------------------------------------------------------------------


def test_sweep_artifacts_are_summary_trials_plots_and_model(tmp_path):
    assert export.sweep_artifacts(tmp_path) == [
        tmp_path / "summary.json", tmp_path / "trials.csv", tmp_path / "plots",
        tmp_path / "model"]
    assert export.sweep_artifacts(str(tmp_path), model=False) == [
        tmp_path / "summary.json", tmp_path / "trials.csv", tmp_path / "plots"]


# -- trial_hardware -------------------------------------------------------------------------


def _rows(best_of_best: dict) -> list[dict]:
    other = {**HW, "gpu_model": "Other GPU", "val_loss": 0.9}
    return [{"trial_id": "other", "best": other},
            {"trial_id": TRIAL, "best": {"val_loss": 0.42, "epoch": 2, **best_of_best}}]


def test_trial_hardware_is_what_the_best_trial_reported():
    assert export.trial_hardware(_rows(HW), _summary()) == HW
    # a CPU-only node reports gpu_count 0: still its own report, not this machine's
    cpu_only = {**HW, "gpu_model": "", "gpu_count": 0}
    assert export.trial_hardware(_rows(cpu_only), _summary()) == cpu_only


@pytest.mark.parametrize("rows", [
    _rows({}),  # the best trial reported no hardware (an older sweep)
    _rows({"cpu_model": "Test CPU"}),  # nor its GPU count
    [{"trial_id": "other", "best": HW}],  # no row for the best trial
], ids=["no-keys", "no-gpu-count", "no-row"])
def test_without_the_best_trials_report_it_is_this_machines_fingerprint(rows):
    hw = export.trial_hardware(rows, _summary())
    assert hw == dict(hardware_fingerprint())
    assert set(hw) == set(HARDWARE_KEYS) and hw["cpu_model"] != "Test CPU"


# -- export_best ----------------------------------------------------------------------------


def test_export_best_writes_the_model_folder_with_its_test_scores(data, tmp_path):
    paths = SweepPaths.of("s", tmp_path)
    state = _best_checkpoint(data, paths, best_epoch=2)
    (paths.dir / "model").mkdir(parents=True)
    (paths.dir / "model" / "stale.txt").write_text("from an earlier sweep")
    summary = _summary()

    out = export.export_best(paths, summary, data)

    assert out == paths.dir / "model"
    assert sorted(p.name for p in out.iterdir()) == ["fingerprint.json", "model.json",
                                                     "weights.pt"]
    # the holdout scores, computed here from the checkpoint's own net
    net = MLP(data.n_features, data.n_classes, MLPConfig(**state["model_config"]))
    net.load_state_dict(state["model"])
    net.eval()
    with torch.no_grad():
        logits = net(torch.as_tensor(data.x_test))
    y = torch.as_tensor(data.y_test)
    test_loss = float(torch.nn.functional.cross_entropy(logits, y))
    test_accuracy = float((logits.argmax(dim=1) == y).float().mean())

    meta = json.loads((out / "model.json").read_text())
    assert meta["epoch"] == 2 and meta["seed"] == 5  # best.pt's epoch, not the last
    assert meta["metrics"]["val_loss"] == 0.42 and meta["metrics"]["val_accuracy"] == 0.81
    assert meta["metrics"]["test_loss"] == pytest.approx(test_loss, rel=1e-5)
    assert meta["metrics"]["test_accuracy"] == pytest.approx(test_accuracy)
    assert 0 < test_loss and 0 <= test_accuracy <= 1
    assert summary["best"]["metrics"]["test_loss"] == meta["metrics"]["test_loss"]
    assert meta["n_features"] == 6 and meta["n_classes"] == 3
    assert meta["feature_names"] == list(data.feature_names)

    weights = torch.load(out / "weights.pt", weights_only=True)
    assert weights.keys() == state["model"].keys()
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["rows"] == len(data.x_train) and len(fp["features"]) == 6


@pytest.mark.parametrize("summary", [
    {"best": None},  # no trial scored
    {},
    _summary("never-saved"),  # a best trial without best.pt
], ids=["best-none", "no-best", "no-checkpoint"])
def test_export_best_gives_none_without_a_best_checkpoint(data, tmp_path, summary):
    paths = SweepPaths.of("s", tmp_path)
    _best_checkpoint(data, paths)  # another trial's
    assert export.export_best(paths, summary, data) is None
    assert not (paths.dir / "model").exists()


# -- register_best --------------------------------------------------------------------------


def test_the_parent_runs_model_becomes_version_1_with_its_tags(store, tmp_path, model_dir):
    sink = _parent(store, tmp_path, model_dir)
    spec = _spec(tmp_path, name="tag-sweep", register={"name": "m-tags"})
    stream = io.StringIO()
    before = datetime.now(timezone.utc).replace(microsecond=0)

    out = export.register_best(sink, spec, _summary(), model_dir, stream, HW)

    assert out == {"name": "m-tags", "version": "1"}
    assert "registered 'm-tags' version 1 (models:/m-tags/1)" in stream.getvalue()
    c = MlflowClient(store)
    version = c.get_model_version("m-tags", "1")
    assert version.run_id == sink.state["parent_run_id"]
    assert version.source.endswith("/model")
    tags = version.tags
    assert tags["caviar.sweep"] == "tag-sweep" and tags["caviar.trial_id"] == TRIAL
    assert before <= datetime.fromisoformat(tags["caviar.tuned_at"]) <= \
        datetime.now(timezone.utc)
    assert tags["hp.lr"] == "0.05" and tags["hp.hidden_units"] == "8"
    assert tags["metric.val_loss"] == "0.42" and tags["metric.val_accuracy"] == "0.81"
    assert "metric.train_loss" not in tags  # None is not recorded
    assert {k: tags[f"hw.{k}"] for k in HW} == {k: str(v) for k, v in HW.items()}
    assert _aliases(c, "m-tags") == {}  # not promoted unless asked


def test_register_promote_moves_production_to_the_new_version(store, tmp_path, model_dir):
    sink = _parent(store, tmp_path, model_dir)
    spec = _spec(tmp_path, register={"name": "m-promote", "promote": True})
    stream = io.StringIO()
    c = MlflowClient(store)

    first = export.register_best(sink, spec, _summary(), model_dir, stream, HW)
    assert first == {"name": "m-promote", "version": "1", "promoted": True}
    assert _aliases(c, "m-promote") == {PRODUCTION: "1"}
    assert "'m-promote' version 1 is now production\n" in stream.getvalue()

    second = export.register_best(sink, spec, _summary(), model_dir, stream, HW)
    assert second == {"name": "m-promote", "version": "2", "promoted": True}
    assert _aliases(c, "m-promote") == {PRODUCTION: "2", PREVIOUS: "1"}
    assert "version 2 is now production (version 1 is previous)" in stream.getvalue()


def test_a_locked_model_is_registered_but_not_promoted(store, tmp_path, model_dir):
    sink = _parent(store, tmp_path, model_dir)
    spec = _spec(tmp_path, register={"name": "m-locked", "promote": True})
    stream = io.StringIO()
    c = MlflowClient(store)
    with Lock(c, "m-locked", lease_s=60, what="a re-tune job"):
        out = export.register_best(sink, spec, _summary(), model_dir, stream, HW)
    assert out == {"name": "m-locked", "version": "1"}
    text = stream.getvalue()
    assert "version 1 not promoted" in text and "a re-tune job" in text
    assert "caviar promote m-locked --version 1" in text
    assert _aliases(c, "m-locked") == {}


def test_a_name_mlflow_refuses_is_reported_not_raised(store, tmp_path, model_dir):
    import dataclasses

    from orchestrator.sweep.spec import Register

    sink = _parent(store, tmp_path, model_dir)
    # validate refuses such a name now; the export still reports, never raises, what
    # the registry refuses
    spec = dataclasses.replace(_spec(tmp_path, register={"name": "m"}),
                               register=Register("team/model"))
    stream = io.StringIO()
    assert export.register_best(sink, spec, _summary(), model_dir, stream, HW) is None
    text = stream.getvalue()
    assert "could not register 'team/model'" in text and "Invalid model name" in text
    assert f"the model is in {model_dir}" in text


# -- sync_workdir ---------------------------------------------------------------------------


def test_sync_of_an_empty_workdir_has_nothing_to_do(tmp_path):
    stream = io.StringIO()
    assert export.sync_workdir(tmp_path, None, stream) == 0
    assert stream.getvalue() == f"caviar: nothing to sync in {tmp_path}\n"


def _waiting_sweep(workdir, uri: str, experiment: str, trials=("t1", "t2"), epochs: int = 2):
    """A sweep folder as a sweep that could not reach MLflow leaves it."""
    d = workdir / "waiting"
    d.mkdir()
    sink = MlflowSink(uri, experiment, d, d / LOG_FILE, workdir)
    sink.prepare({"strategy": "random", "budget": len(trials)},
                 {"mlflow.runName": "waiting", "caviar.sweep": "waiting"})
    log = TrialLog(d / LOG_FILE)
    t = 1_700_000_000.0
    for i, tid in enumerate(trials):
        log.append({"event": "start", "trial_id": tid, "round": 0, "time": t,
                    "config": {"lr": 0.01 * (i + 1), "_seed": i, "_round": 0}})
        for epoch in range(1, epochs + 1):
            t += 1
            log.append({"event": "result", "trial_id": tid, "epoch": epoch, "time": t,
                        "metrics": {"epoch": epoch, "train_loss": 1.0 / epoch,
                                    "val_loss": 1.1 / epoch, "val_accuracy": 0.5,
                                    "lr": 0.01, "caviar_status": "running"}})
        log.append({"event": "end", "trial_id": tid, "status": "completed", "time": t})
    log.close()
    return d


def test_sync_writes_the_waiting_records_to_the_store(store, tmp_path):
    experiment = f"sync-{uuid.uuid4().hex[:8]}"
    d = _waiting_sweep(tmp_path, store, experiment)
    assert json.loads((d / STATE_FILE).read_text())["parent_run_id"] is None
    (d / "summary.json").write_text(json.dumps({"complete": True}))
    stream = io.StringIO()

    assert export.sync_workdir(tmp_path, None, stream) == 0  # the store mlflow.json names

    assert stream.getvalue() == f"caviar: waiting: 8 records written to {store}\n"
    c = MlflowClient(store)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("caviar.kind") == "sweep")
    children = {r.data.tags["caviar.trial_id"]: r for r in runs
                if r.data.tags.get("caviar.kind") == "trial"}
    assert sorted(children) == ["t1", "t2"] and len(runs) == 3
    assert parent.data.params == {"strategy": "random", "budget": "2"}
    assert parent.info.status == "FINISHED"  # its summary says the sweep is complete
    assert [a.path for a in c.list_artifacts(parent.info.run_id)] == ["summary.json"]
    for tid, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["caviar.status"] == "completed"
        history = c.get_metric_history(run.info.run_id, "val_loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 1.1), (2, 0.55)], tid
    assert children["t2"].data.params == {"lr": "0.02", "seed": "1"}

    again = io.StringIO()  # a second sync finds nothing new
    assert export.sync_workdir(tmp_path, None, again) == 0
    assert again.getvalue() == f"caviar: waiting: 0 records written to {store}\n"


def test_sync_leaves_the_parent_running_while_the_sweep_is_unfinished(store, tmp_path):
    experiment = f"sync-{uuid.uuid4().hex[:8]}"
    _waiting_sweep(tmp_path, f"http://127.0.0.1:{free_port()}", experiment, trials=("t1",),
                   epochs=1)
    stream = io.StringIO()
    assert export.sync_workdir(tmp_path, store, stream) == 0  # --tracking-uri wins
    assert stream.getvalue() == f"caviar: waiting: 3 records written to {store}\n"
    c = MlflowClient(store)
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    status = {r.data.tags["caviar.kind"]: r.info.status for r in runs}
    assert status == {"sweep": "RUNNING", "trial": "FINISHED"}  # no summary.json yet
    parent = next(r for r in runs if r.data.tags["caviar.kind"] == "sweep")
    # the parent's params and tags the sweep kept in mlflow.json (prepare) reach this store
    assert parent.data.params == {"strategy": "random", "budget": "1"}
    assert parent.data.tags["caviar.sweep"] == "waiting"
    assert parent.data.tags["mlflow.runName"] == "waiting"


def test_sync_with_mlflow_unreachable_fails_and_keeps_the_records(tmp_path):
    d = _waiting_sweep(tmp_path, f"sqlite:///{tmp_path / 'never.db'}", "e", trials=("t1",),
                       epochs=1)
    state_before, log_before = (d / STATE_FILE).read_text(), (d / LOG_FILE).read_text()
    down = f"http://127.0.0.1:{free_port()}"
    stream = io.StringIO()
    assert export.sync_workdir(tmp_path, down, stream) == 1
    text = stream.getvalue()
    assert text.startswith(f"caviar: waiting: MLflow at {down} failed (")
    assert "records written" not in text
    assert (d / STATE_FILE).read_text() == state_before  # nothing marked as written
    assert (d / LOG_FILE).read_text() == log_before  # the records still wait
