"""The idempotent run writer (orchestrator/tracking/runs.py) on a real embedded MLflow store,
with keys and tags of no sweep: a parent run, child runs known by a key, a record of
progress per run, and what a later process finds of them."""

from __future__ import annotations

import copy
import uuid

import pytest
from mlflow import MlflowClient

from orchestrator.tracking.runs import BATCH_LIMIT, Progress, RunBatch, RunNames, RunWriter
from orchestrator.tracking.store import ensure_sqlite_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ensure_sqlite_store(uri)
    return uri


NAMES = RunNames({"x.kind": "job"}, "x.uid", "x.key", "loss")


def fresh_state() -> dict:
    return {"experiment_id": None, "parent_run_id": None, "runs": {}, "config": {},
            "parent_params": {"p": "1"}, "parent_tags": {"mlflow.runName": "job"}}


def writer(store, tmp_path, state: dict, saved: list, experiment: str, earlier=False):
    return RunWriter(store, experiment, state, lambda: saved.append(copy.deepcopy(state)),
                     tmp_path, NAMES, earlier=earlier)


def batch(*steps: int, **params: str) -> RunBatch:
    return RunBatch(name="child", create={"x.kind": "part"}, params=dict(params),
                    metrics=[("loss", 1.0 / s, 1000 * s, s) for s in steps],
                    steps={(s, 1000 * s) for s in steps})


def test_a_parent_and_its_children_by_key_with_a_record_of_progress_per_run(store, tmp_path):
    experiment, saved = f"runs-{uuid.uuid4().hex[:8]}", []
    state = fresh_state()
    w = writer(store, tmp_path, state, saved, experiment)
    parent = w.start()
    assert saved and saved[0]["parent_run_id"] == parent  # kept before anything else
    w.write({"k1": batch(1, 2, a="1"), "k2": batch(1, a="2")})
    p = w.progress("k1", steps=True)
    assert p.run_id == state["runs"]["k1"] and p.params == {"a": "1"} == state["config"][p.run_id]
    assert p.holds(2, 2000) and not p.holds(3, 3000) and p.last_step == 2
    w.write({"k1": RunBatch(tags={"x.status": "done"}, end="FINISHED")})

    c = MlflowClient(store)
    run = c.get_run(state["runs"]["k1"])
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["x.key"] == "k1"
    assert run.data.tags["x.kind"] == "part" and run.data.tags["x.status"] == "done"
    assert run.info.run_name == "child" and run.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    top = c.get_run(parent)
    assert top.data.params == {"p": "1"} and top.data.tags["x.kind"] == "job"
    assert top.data.tags["x.uid"] == state["sweep_uid"]


def test_a_later_process_finds_the_runs_a_lost_state_did_not_name(store, tmp_path):
    """A process that died before its state was saved: the next one (``earlier``) finds the
    child run by its key and the steps it holds; a RUNNING child nothing names is ended."""
    experiment, saved = f"runs-{uuid.uuid4().hex[:8]}", []
    state = fresh_state()
    w = writer(store, tmp_path, state, saved, experiment)
    w.start()
    w.write({"k1": batch(1, 2, a="1"), "k2": batch(1, a="2")})
    lost = {**copy.deepcopy(state), "runs": {"k1": state["runs"]["k1"]}, "config": {}}

    later = writer(store, tmp_path, lost, [], experiment, earlier=True)
    later.start()  # the parent again; k2's run, named nowhere, is an orphan
    c = MlflowClient(store)
    assert c.get_run(state["runs"]["k2"]).info.status == "KILLED"
    assert c.get_run(state["runs"]["k1"]).info.status == "RUNNING"
    p = later.progress("k2", steps=True)
    assert p.run_id == state["runs"]["k2"] == lost["runs"]["k2"]
    assert p.earlier_step == 1 and p.holds(1, 5000)  # written by the process before
    assert later.progress("k3", steps=True) == Progress(steps_known=True)


def test_a_batch_larger_than_one_call_is_written_whole(store, tmp_path):
    experiment = f"runs-{uuid.uuid4().hex[:8]}"
    state = fresh_state()
    w = writer(store, tmp_path, state, [], experiment)
    w.start()
    steps = range(1, 2 * BATCH_LIMIT + 2)
    w.write({"k": batch(*steps, a="1")})
    history = MlflowClient(store).get_metric_history(state["runs"]["k"], "loss")
    assert sorted(m.step for m in history) == list(steps)
