"""MLflow tracking of sweeps (orchestrator/sweep/sink.py, with tracking/runs.py and
tracking/sync.py): real MLflow (the embedded sqlite store), real Ray."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import free_port, read_events, run_main
from mlflow import MlflowClient

from orchestrator.sweep.run import run_sweep
from orchestrator.sweep.spec import load_sweep
from orchestrator.tracking.sync import SyncThread


@pytest.fixture(scope="module", autouse=True)
def one_ray():
    """One Ray for the module's sweeps: the first starts it in this process, the others
    join it (orchestrator.cluster.connect); shut down after the module."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def fail_fast(monkeypatch):
    """MLflow's client retries a refused connection without its backoff (4 s a call
    otherwise): an unreachable server fails each call at once, and the code under test
    retries on its own schedule."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")


def runs_of(uri: str, experiment: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return c, c.search_runs([exp.experiment_id], max_results=1000)


def tracked(tmp, writer: str) -> dict:
    """A sweep on the embedded store, its best model registered as ``tiny-classifier``:
    tracked by the driver's thread, or (as sweeps of more than LARGE_SWEEP trials are)
    by a process of its own."""
    import yaml
    from conftest import sweep_dict

    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_dict(strategy={"kind": "random", "trials": 4},
                                               epochs=3, register={"name": "tiny-classifier"})))
    with pytest.MonkeyPatch.context() as m:
        if writer == "process":
            m.setattr("orchestrator.sweep.run.LARGE_SWEEP", 0)
        spec = load_sweep(sweep)
        summary = run_sweep(spec, tmp / "w")
    return {"spec": spec, "summary": summary, "workdir": tmp / "w"}


@pytest.fixture(scope="module")
def swept_thread(tmp_path_factory):
    return tracked(tmp_path_factory.mktemp("thread"), "thread")


@pytest.fixture(scope="module")
def swept_process(tmp_path_factory):
    return tracked(tmp_path_factory.mktemp("process"), "process")


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_one_parent_and_one_child_run_per_trial_with_full_histories(writer, request,
                                                                    tmp_path):
    """Tracked by the driver's thread, or (as sweeps of more than LARGE_SWEEP trials are)
    by a process of its own: the same record."""
    swept = request.getfixturevalue(f"swept_{writer}")
    summary, workdir = swept["summary"], swept["workdir"]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert summary["mlflow"]["tracking_uri"] == uri
    c, runs = runs_of(uri, "t")
    parents = [r for r in runs if r.data.tags.get("caviar.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("caviar.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.run_id == summary["mlflow"]["parent_run_id"]
    assert parent.info.status == "FINISHED"
    assert {"strategy", "scheduler", "budget", "seed"} <= set(parent.data.params)
    assert parent.data.params["strategy"] == "random" and parent.data.params["budget"] == "4"
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {
        "summary.json", "trials.csv", "sweep.yaml", "plots", "model"}
    plots = {a.path: a.file_size for a in c.list_artifacts(parent.info.run_id, "plots")}
    assert set(plots) == {"plots/learning_curves.png", "plots/axes.png",
                          "plots/importance.png"}  # random search: one round, no boxes
    local = c.download_artifacts(parent.info.run_id, "plots/axes.png", str(tmp_path))
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and plots["plots/axes.png"] > 5000
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "model")} == {
        "model/weights.pt", "model/model.json", "model/fingerprint.json"}
    assert set(summary["importance"]) == {"lr", "hidden_units"}
    assert summary["registered"] == {"name": "tiny-classifier", "version": "1"}
    rows = {r["trial_id"]: r for r in csv.DictReader((workdir / "t" / "trials.csv").open())}
    for run in children:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        row = rows[tags["caviar.trial_id"]]
        assert tags["caviar.status"] == row["status"] and tags["caviar.round"] == row["round"]
        assert run.data.params["lr"] == row["lr"] and run.data.params["seed"] == row["seed"]
        assert tags["caviar.device"] == "cpu" and tags["caviar.node_id"]
        assert tags["caviar.torch"].startswith("2.") and tags["caviar.cpu_model"]
        assert tags["caviar.gpu_count"] == "0"  # no GPU here
        for key in ("train_loss", "val_loss", "val_accuracy"):
            history = c.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [1, 2, 3], key
    best = summary["best"]
    best_run = next(r for r in children if r.data.tags["caviar.trial_id"] == best["trial_id"])
    assert best["mlflow_run_id"] == best_run.info.run_id
    assert min(m.value for m in c.get_metric_history(best_run.info.run_id, "val_loss")) == \
        pytest.approx(best["metrics"]["val_loss"])


class GiveUpSoon(SyncThread):
    """The sweep's MLflow writer, giving up on an unreachable server after 1 s of retries
    at the sweep's end instead of 30."""

    def stop(self, deadline_s: float = 30.0) -> bool:
        return super().stop(deadline_s=1.0)


def test_unreachable_tracking_keeps_records_for_caviar_sync(write_sweep, tmp_path, capsys,
                                                            monkeypatch, fail_fast):
    monkeypatch.setattr("orchestrator.sweep.run.SyncThread", GiveUpSoon)
    sweep = write_sweep(strategy={"kind": "random", "trials": 3}, epochs=2,
                        resources={"cpu": 1, "concurrency": 1})  # one trial process
    workdir = tmp_path / "w"
    down = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_main(capsys, "sweep", sweep, "--workdir", workdir, "--tracking-uri", down)
    assert code == 0, err
    assert "not answering" in err and "caviar sync" in err
    summary = json.loads((workdir / "t" / "summary.json").read_text())
    assert summary["trials"]["completed"] == 3

    target = f"sqlite:///{tmp_path / 'later.db'}"
    said = []
    for _ in range(2):  # the second sync finds nothing new: nothing is written twice
        code, _, err = run_main(capsys, "sync", "--workdir", workdir, "--tracking-uri", target)
        assert code == 0, err
        said.append(err)
    events = read_events(workdir / "t" / "trials.jsonl")  # 3 starts, 6 epochs, 3 ends
    assert len(events) >= 12 and f"t: {len(events)} records written" in said[0], said
    assert "t: 0 records written" in said[1], said
    c, runs = runs_of(target, "t")
    children = [r for r in runs if r.data.tags.get("caviar.kind") == "trial"]
    assert len(children) == 3 and len(runs) == 4
    # the parent run, made in another store than the sweep first tried, is the sweep's
    parent = next(r for r in runs if r.data.tags.get("caviar.kind") == "sweep")
    assert parent.data.params["strategy"] == "random" and parent.data.params["budget"] == "3"
    assert parent.data.tags["mlflow.runName"] == "t" and parent.data.tags["caviar.sweep"] == "t"
    for run in children:
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == [1, 2]  # every epoch, once
        assert run.info.status == "FINISHED"


def test_best_model_is_registered_and_predicts_like_its_trial(swept_thread, tmp_path, capsys):
    import numpy as np
    import torch

    from models.data import load as load_data
    from models.serving import load_model, predict
    from models.train import load_checkpoint
    from orchestrator.sweep.trainable import BEST_FILE

    spec, summary, workdir = (swept_thread[k] for k in ("spec", "summary", "workdir"))
    assert summary["registered"] == {"name": "tiny-classifier", "version": "1"}
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    c = MlflowClient(uri)
    version = c.get_model_version("tiny-classifier", "1")
    assert version.tags["caviar.trial_id"] == summary["best"]["trial_id"]
    assert float(version.tags["metric.val_loss"]) == pytest.approx(
        summary["best"]["metrics"]["val_loss"])

    # The trial's own net at its best epoch, straight from its checkpoint ...
    state = load_checkpoint(workdir / "ray" / "t" / f"trial_{summary['best']['trial_id']}"
                            / BEST_FILE)
    assert state["epoch"] == summary["best"]["epoch"]
    data = load_data(spec.data)
    from models.config import MLPConfig
    from models.net import MLP

    own = MLP(data.n_features, data.n_classes, MLPConfig(**state["model_config"]))
    own.load_state_dict(state["model"])
    expected = own.predict_proba(torch.as_tensor(data.x_test)).argmax(dim=1).numpy()

    # ... and the registered model, through the CLI, on raw (unstandardised) rows.
    raw = data.x_test * data.std + data.mean
    rows = ["x" + ",x".join(str(i) for i in range(data.n_features))]
    rows[0] = ",".join(data.feature_names)
    rows += [",".join(f"{v:.9g}" for v in r) for r in raw]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run_main(capsys, "predict", "models:/tiny-classifier/1",
                              tmp_path / "rows.csv", "--tracking-uri", uri)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == len(raw)
    classes = [data.classes.index(line["class"]) for line in lines]
    assert np.array_equal(classes, expected)
    assert all(abs(sum(line["probabilities"].values()) - 1) < 1e-4 for line in lines)
    # loading the registered folder directly gives the same
    net, meta = load_model(workdir / "t" / "model")
    labels, _ = predict(net, meta, raw)
    assert [data.classes.index(x) for x in labels] == list(expected)


def test_a_line_a_crash_cut_short_is_skipped_and_the_rest_is_written(tmp_path):
    """A driver killed mid-write leaves half a line; the resumed driver's log goes on on
    the next line (records.TrialLog). The export skips the broken line, every sync."""
    from orchestrator.sweep.records import LOG_FILE, TrialLog
    from orchestrator.sweep.sink import MlflowSink

    d = tmp_path / "s"
    d.mkdir()
    t = 1_700_000_000.0

    def result(epoch: int) -> dict:
        return {"event": "result", "trial_id": "a", "epoch": epoch, "time": t + epoch,
                "metrics": {"epoch": epoch, "val_loss": 1.0 / epoch, "train_loss": 1.0}}

    start = {"event": "start", "trial_id": "a", "round": 0, "config": {"lr": 0.1, "_seed": 3},
             "time": t}
    (d / LOG_FILE).write_text(json.dumps(start) + "\n" + json.dumps(result(1)) + "\n"
                              + json.dumps(result(2))[:25])  # the crash
    log = TrialLog(d / LOG_FILE)
    for event in (result(2), result(3), {"event": "end", "trial_id": "a",
                                         "status": "completed", "time": t + 4}):
        log.append(event)
    log.close()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MlflowSink(uri, "cut", d, d / LOG_FILE, tmp_path)
    sink.prepare({"strategy": "random"}, {"mlflow.runName": "cut"})
    assert sink.sync() == 5  # start, 3 results, end: the broken line is not an event
    assert sink.sync() == 0
    c, runs = runs_of(uri, "cut")
    trial = next(r for r in runs if r.data.tags.get("caviar.kind") == "trial")
    steps = [m.step for m in c.get_metric_history(trial.info.run_id, "val_loss")]
    assert sorted(steps) == [1, 2, 3]
    assert trial.info.status == "FINISHED" and trial.data.params == {"lr": "0.1", "seed": "3"}


def _one_trial_log(d, t: float = 1_700_000_000.0) -> None:
    from orchestrator.sweep.records import LOG_FILE

    events = [{"event": "start", "trial_id": "a", "round": 0, "config": {"lr": 0.1, "_seed": 3},
               "time": t}]
    events += [{"event": "result", "trial_id": "a", "epoch": e, "time": t + e,
                "metrics": {"epoch": e, "val_loss": 1.0 / e, "train_loss": 1.0}}
               for e in (1, 2, 3)]
    events.append({"event": "end", "trial_id": "a", "status": "completed", "time": t + 4})
    (d / LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))


def test_a_damaged_mlflow_json_is_rebuilt_from_the_runs_tags(tmp_path, capsys):
    from orchestrator.cli import main
    from orchestrator.sweep.records import LOG_FILE
    from orchestrator.sweep.sink import STATE_FILE, MlflowSink

    d = tmp_path / "w" / "s"
    d.mkdir(parents=True)
    _one_trial_log(d)
    uri = f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}"
    sink = MlflowSink(uri, "s", d, d / LOG_FILE, tmp_path / "w")
    sink.prepare({"strategy": "random"}, {"mlflow.runName": "s", "caviar.sweep": "s"})
    assert sink.sync() == 5
    parent = sink.state["parent_run_id"]
    (d / STATE_FILE).write_text('{"tracking_uri": "sqlite:')  # a full disk cut it
    assert main(["sync", "--workdir", str(tmp_path / "w")]) == 0
    assert "was damaged; rebuilt from MLflow" in capsys.readouterr().err
    state = json.loads((d / STATE_FILE).read_text())
    assert state["parent_run_id"] == parent and list(state["runs"]) == ["a"]
    c, runs = runs_of(uri, "s")
    assert len(runs) == 2  # no second parent, no second trial run
    trial = next(r for r in runs if r.data.tags.get("caviar.kind") == "trial")
    assert [m.step for m in c.get_metric_history(trial.info.run_id, "val_loss")] == [1, 2, 3]


def test_a_damaged_mlflow_json_mlflow_cannot_rebuild_is_refused_with_the_way_out(tmp_path,
                                                                                 capsys):
    from orchestrator.cli import main
    from orchestrator.sweep.sink import STATE_FILE

    d = tmp_path / "w" / "s"
    d.mkdir(parents=True)
    _one_trial_log(d)
    (d / STATE_FILE).write_text("[1, 2")
    other = f"sqlite:///{tmp_path / 'empty.db'}"  # a store that never saw the sweep
    assert main(["sync", "--workdir", str(tmp_path / "w"), "--tracking-uri", other]) == 1
    err = capsys.readouterr().err
    assert f"{d / STATE_FILE}: damaged (not the JSON caviar wrote)" in err
    assert f"mv {d / STATE_FILE} {d / STATE_FILE}.bad" in err and "Traceback" not in err
    from orchestrator.sweep.sink import MlflowSink, StateDamaged
    from searchspaces.errors import EXIT_BAD_INPUT

    with pytest.raises(StateDamaged, match="could not be rebuilt"):  # a resume: exit 2
        MlflowSink(other, "s", d, d / "trials.jsonl", tmp_path / "w")
    assert StateDamaged.exit_code == EXIT_BAD_INPUT


def test_a_sync_process_writes_the_log_beside_the_driver_and_hands_its_state_back(tmp_path):
    """Large sweeps write MLflow from a process of their own (SyncProcess): it writes what
    the log holds as it grows, all of it when told to stop, and the driver's sink then
    knows the runs it made."""
    import time

    from orchestrator.sweep.records import LOG_FILE
    from orchestrator.sweep.sink import MlflowSink
    from orchestrator.tracking.sync import SyncProcess

    d = tmp_path / "w" / "s"
    d.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}"
    sink = MlflowSink(uri, "s", d, d / LOG_FILE, tmp_path / "w")
    sink.prepare({"strategy": "random"}, {"mlflow.runName": "s", "caviar.sweep": "s"})
    writer = SyncProcess(sink, every=0.2).start()
    _one_trial_log(d)  # the log grows while the writer runs
    deadline = time.time() + 120
    while time.time() < deadline and not json.loads((d / "mlflow.json").read_text())["runs"]:
        time.sleep(0.2)
    assert writer.stop() is True
    assert list(sink.state["runs"]) == ["a"] and sink.state["parent_run_id"]
    assert sink.state["cursor"] == (d / LOG_FILE).stat().st_size
    c, runs = runs_of(uri, "s")
    trial = next(r for r in runs if r.data.tags.get("caviar.kind") == "trial")
    assert trial.info.run_id == sink.state["runs"]["a"] and trial.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(trial.info.run_id, "val_loss")] == [1, 2, 3]


def test_a_sync_process_that_cannot_reach_mlflow_says_so_and_keeps_the_log(tmp_path,
                                                                          fail_fast):
    from orchestrator.sweep.records import LOG_FILE
    from orchestrator.sweep.sink import MlflowSink
    from orchestrator.tracking.sync import SyncProcess

    d = tmp_path / "s"
    d.mkdir()
    _one_trial_log(d)
    sink = MlflowSink(f"http://127.0.0.1:{free_port()}", "s", d, d / LOG_FILE, tmp_path)
    sink.prepare({}, {})
    writer = SyncProcess(sink, every=0.2).start()
    assert writer.stop(deadline_s=0.5) is False
    assert sink.state["cursor"] == 0 and sink.state["runs"] == {}


def test_a_state_file_an_earlier_caviar_wrote_resumes_without_writing_twice(tmp_path):
    """mlflow.json as caviar wrote it before its writer was split from the translation
    (the format is unchanged): a driver killed after writing epochs 1 and 2 but before
    saving its cursor past them. The resumed export writes epoch 3 and the end: nothing
    twice, nothing lost."""
    from mlflow.entities import Metric, Param

    from orchestrator.sweep.records import LOG_FILE
    from orchestrator.sweep.sink import STATE_FILE, MlflowSink
    from orchestrator.tracking.store import ensure_sqlite_store

    d = tmp_path / "w" / "s"
    d.mkdir(parents=True)
    _one_trial_log(d)
    uri = f"sqlite:///{tmp_path / 'w' / 'mlflow.db'}"
    ensure_sqlite_store(uri)
    c = MlflowClient(uri)
    exp = c.create_experiment("s")
    parent = c.create_run(exp, run_name="s", tags={
        "caviar.kind": "sweep", "caviar.sweep_uid": "u1", "caviar.sweep": "s"}).info.run_id
    c.log_batch(parent, params=[Param("strategy", "random")])
    trial = c.create_run(exp, run_name="trial-a", tags={
        "mlflow.parentRunId": parent, "caviar.kind": "trial", "caviar.trial_id": "a",
        "caviar.round": "0", "caviar.status": "running"}).info.run_id
    t = 1_700_000_000.0
    c.log_batch(trial, params=[Param("lr", "0.1"), Param("seed", "3")],
                metrics=[Metric(k, v, int((t + e) * 1000), e) for e in (1, 2)
                         for k, v in (("val_loss", 1.0 / e), ("train_loss", 1.0))])
    after_start = len((d / LOG_FILE).read_bytes().split(b"\n")[0]) + 1
    (d / STATE_FILE).write_text(json.dumps({
        "tracking_uri": uri, "experiment": "s", "experiment_id": exp, "parent_run_id": parent,
        "runs": {"a": trial}, "cursor": after_start, "config": {trial: {"lr": "0.1", "seed": "3"}},
        "parent_params": {"strategy": "random"},
        "parent_tags": {"mlflow.runName": "s", "caviar.sweep": "s"}, "sweep_uid": "u1",
        "parent_params_logged": True}, indent=1))

    sink = MlflowSink(uri, "s", d, d / LOG_FILE, tmp_path / "w")
    assert sink.sync() == 4  # three epochs and the end
    assert sorted(m.step for m in c.get_metric_history(trial, "val_loss")) == [1, 2, 3]
    assert sorted(m.step for m in c.get_metric_history(trial, "train_loss")) == [1, 2, 3]
    run = c.get_run(trial)
    assert run.info.status == "FINISHED" and run.data.tags["caviar.status"] == "completed"
    assert run.data.params == {"lr": "0.1", "seed": "3"} and len(c.search_runs([exp])) == 2
    assert json.loads((d / STATE_FILE).read_text())["cursor"] == (d / LOG_FILE).stat().st_size
