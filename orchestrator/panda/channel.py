"""A babysat run's record in MLflow, which is also how commands reach its worker.

Why the tracking store and not a named Ray actor: a request written there is durable.
It waits for a worker that is between lives (killed, being resumed), it needs no Ray
connection from the commanding terminal (only the tracking URI every caviar command
already has), and it is on record. The worker reads requests at each epoch boundary
(and every second while paused), which is all the latency a person at a terminal
needs; one ``get_run`` per epoch costs nothing next to an expensive epoch.

The record: one parent run (tag ``caviar.kind=babysit``, ``caviar.babysit=NAME``),
one child run per branch (``caviar.kind=branch``) with its epochs as steps (step =
epoch, so a branch forked at epoch 3 goes on at step 4), per-epoch metrics including
``hp_NAME`` for every hyperparameter in force, and its checkpoints as artifacts
(``checkpoints/epoch_00004.pt``): wherever the worker restarts, it finds them.
The parent holds ``babysit.json`` (what to train), ``lineage.json`` (the branches and
every decision) and ``curve.png``; its tags hold the state, the epoch, where the worker
runs, a heartbeat, and the pending requests (``caviar.request.<id>``, one JSON each).
Only the worker writes the lineage and the state while it runs; commands add requests.
When its worker is gone, ``stop`` and ``register`` (``panda.requests``,
``panda.register``) write what the worker would have.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import time
import uuid
from pathlib import Path

from models.train import load_checkpoint
from orchestrator.panda.lineage import Branch, Lineage
from orchestrator.tracking.store import (
    artifact_root,
    ensure_sqlite_store,
    mlflow_client,
    store_missing,
)
from searchspaces.errors import CaviarError, did_you_mean

CONFIG_FILE, LINEAGE_FILE, CURVE_FILE = "babysit.json", "lineage.json", "curve.png"
CHECKPOINTS = "checkpoints"
REQUEST = "caviar.request."
STATE, EPOCH, BRANCH = "caviar.state", "caviar.epoch", "caviar.branch"
HEARTBEAT, WHERE = "caviar.heartbeat", "caviar.where"
FINAL_STATES = ("stopped", "completed", "failed")
NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KIND, BABYSIT, SWEEP = "caviar.kind", "caviar.babysit", "caviar.sweep"  # the parent's
BRANCH_STATUS, FORKED_FROM = "caviar.status", "caviar.forked_from"  # a branch run's


class BabysitError(CaviarError):
    """A command asks for what the record does not allow (an unknown run, a stopped
    run, an epoch not checkpointed): bad input, exit 2."""


def _client(uri: str):
    return mlflow_client(uri)  # with caviar's MLflow settings: no progress bars in logs


def check_name(name: str, what: str = "NAME") -> str:
    """``name`` when it is a babysat run's name (it names a lock, a folder and a Ray
    actor too); BabysitError naming ``what`` (the flag) and the rule if not."""
    if not NAME_RULE.match(name):
        raise BabysitError(f"{what} {name!r}: a babysat run's name is 1 to 63 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit")
    return name


def reached(tags: dict) -> int:
    """The epochs the run has trained, as its tags say."""
    return int(tags.get(EPOCH, 0))


def _checkpoint_file(epoch: int) -> str:
    return f"epoch_{epoch:05d}.pt"


class Record:
    """One babysat run in the tracking store at ``uri``."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = _client(uri)

    # -- finding and creating ---------------------------------------------------------

    @classmethod
    def find(cls, uri: str, name: str) -> Record:
        """The babysat run named ``name``; BabysitError naming the known ones if none."""
        runs = babysat_runs(uri, f"tags.`{BABYSIT}` = '{check_name(name)}'")
        if not runs:
            known = [r.data.tags[BABYSIT] for r in babysat_runs(uri)]
            raise BabysitError(f"no babysat run {name!r} in {uri}{did_you_mean(name, known)}"
                               + (f"; there are: {', '.join(sorted(known))}" if known else
                                  "; `caviar babysit start SWEEP.yaml` starts one"))
        return cls(uri, runs[0].info.run_id)

    @classmethod
    def create(cls, uri: str, workdir, experiment: str, config: dict) -> Record:
        """The parent run, the first branch's run and the lineage of a new babysat run."""
        ensure_sqlite_store(uri)
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            experiment, artifact_location=artifact_root(uri, workdir))
        name = config["name"]
        parent = client.create_run(exp_id, run_name=name, tags={
            KIND: "babysit", BABYSIT: name, SWEEP: config["sweep"], STATE: "starting",
            EPOCH: "0", BRANCH: "b0"})
        record = cls(uri, parent.info.run_id)
        client.log_batch(record.run_id, params=_params(config))
        client.log_dict(record.run_id, config, CONFIG_FILE)
        b0 = record.new_branch("b0", None, 0)
        lineage = Lineage(name, dict(config["hparams"]), config["epochs"], [b0])
        record.save_lineage(lineage)
        return record

    def new_branch(self, branch_id: str, parent: str | None, from_epoch: int) -> Branch:
        """A child run for a branch (it holds that branch's epochs and checkpoints)."""
        name = self.tags().get(BABYSIT, "")
        run = self.client.create_run(self.experiment_id, run_name=f"{name}/{branch_id}", tags={
            "mlflow.parentRunId": self.run_id, KIND: "branch", BABYSIT: name,
            BRANCH: branch_id, BRANCH_STATUS: "running",
            FORKED_FROM: f"{parent}@{from_epoch}" if parent else ""})
        return Branch(branch_id, run.info.run_id, parent, from_epoch)

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    # -- what it holds ----------------------------------------------------------------

    def tags(self) -> dict:
        return dict(self.client.get_run(self.run_id).data.tags)

    def set_tags(self, **tags) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def read_json(self, name: str) -> dict:
        with tempfile.TemporaryDirectory(prefix="caviar-") as d:
            path = self.client.download_artifacts(self.run_id, name, d)
            return json.loads(Path(path).read_text())

    def config(self) -> dict:
        return self.read_json(CONFIG_FILE)

    def lineage(self) -> Lineage:
        return Lineage.from_dict(self.read_json(LINEAGE_FILE))

    def save_lineage(self, lineage: Lineage) -> None:
        self.client.log_dict(self.run_id, lineage.to_dict(), LINEAGE_FILE)

    # -- requests ---------------------------------------------------------------------

    def post(self, op: str, **values) -> str:
        """Queues a request for the worker; returns its id (ordered by time of asking)."""
        request = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
        body = {"op": op, "asked": time.time(), "by": socket.gethostname(), **values}
        self.client.set_tag(self.run_id, REQUEST + request, json.dumps(body))
        return request

    def pending(self, tags: dict | None = None) -> list[tuple[str, dict]]:
        """The queued requests, oldest first."""
        tags = self.tags() if tags is None else tags
        return sorted((k.removeprefix(REQUEST), json.loads(v)) for k, v in tags.items()
                      if k.startswith(REQUEST))

    def clear(self, request: str) -> None:
        self.client.delete_tag(self.run_id, REQUEST + request)

    # -- checkpoints and epochs -------------------------------------------------------

    def save_checkpoint(self, branch: Branch, run) -> None:
        """The training run's state as ``checkpoints/epoch_NNNNN.pt`` of the branch's run."""
        with tempfile.TemporaryDirectory(prefix="caviar-") as d:
            path = run.save_checkpoint(Path(d) / _checkpoint_file(run.epoch))
            self.client.log_artifact(branch.run_id, str(path), CHECKPOINTS)

    def checkpoint_epochs(self, branch: Branch) -> list[int]:
        files = self.client.list_artifacts(branch.run_id, CHECKPOINTS)
        return sorted(int(f.path.rsplit("_", 1)[1].removesuffix(".pt")) for f in files
                      if f.path.endswith(".pt"))

    def load_checkpoint(self, branch: Branch, epoch: int) -> dict:
        """The checkpoint, read without unpickling code."""
        with tempfile.TemporaryDirectory(prefix="caviar-") as d:
            path = self.client.download_artifacts(
                branch.run_id, f"{CHECKPOINTS}/{_checkpoint_file(epoch)}", d)
            return load_checkpoint(path)

    def newest_checkpoint(self, lineage: Lineage) -> dict | None:
        """The newest checkpoint of the current branch's line: the branch's own, else
        the one it forked from; None for a run that has none yet."""
        branch = lineage.branch()
        held = self.checkpoint_epochs(branch)
        if held:
            return self.load_checkpoint(branch, held[-1])
        if branch.parent is not None:
            return self.load_checkpoint(lineage.owner(branch.from_epoch, branch.parent),
                                        branch.from_epoch)
        return None

    def keep_newest(self, branch: Branch, keep: int, also: set[int]) -> None:
        """Deletes the branch's checkpoints but the newest ``keep``, epoch 0 and ``also``
        (the epochs other branches forked from: any revert on record still works)."""
        for epoch in self.checkpoint_epochs(branch)[:-keep]:
            if epoch not in also and epoch != 0:
                self.delete_checkpoint(branch, epoch)

    def delete_checkpoint(self, branch: Branch, epoch: int) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        run = self.client.get_run(branch.run_id)
        repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
        repo.delete_artifacts(f"{CHECKPOINTS}/{_checkpoint_file(epoch)}")

    def log_epoch(self, branch: Branch, metrics: dict) -> None:
        """One epoch's numbers as step ``epoch`` of the branch's run."""
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(metrics["epoch"])
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
                if k != "epoch" and isinstance(v, (int, float))]
        self.client.log_batch(branch.run_id, metrics=rows)

    def epochs_logged(self, branch: Branch) -> list[int]:
        return sorted(m.step for m in self.client.get_metric_history(branch.run_id, "val_loss"))

    def log_missing_epochs(self, branch: Branch, history: list[dict]) -> None:
        """Logs the epochs of ``history`` (a checkpoint's) on the branch that MLflow lacks:
        a worker killed between writing a checkpoint and logging its epoch."""
        logged = set(self.epochs_logged(branch))
        for m in history:
            if m["epoch"] > branch.from_epoch and m["epoch"] not in logged:
                self.log_epoch(branch, m)

    def history(self, branch: Branch, keys: tuple[str, ...]) -> dict[int, dict]:
        """{epoch: {key: value}} as the branch's run recorded them."""
        out: dict[int, dict] = {}
        for key in keys:
            for m in self.client.get_metric_history(branch.run_id, key):
                out.setdefault(m.step, {"epoch": m.step})[key] = m.value
        return out

    def forget(self) -> None:
        """Deletes a run that never started (its worker failed to): the name is free
        again and no half-made record is left behind."""
        for run in self.client.search_runs(
                [self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}'"):
            self.client.delete_run(run.info.run_id)
        self.client.delete_run(self.run_id)

    def set_branch_status(self, branch: Branch, status: str) -> None:
        branch.status = status
        self.client.set_tag(branch.run_id, BRANCH_STATUS, status)

    def end_branch(self, branch: Branch, status: str) -> None:
        self.set_branch_status(branch, status)
        self.client.set_terminated(branch.run_id, "FINISHED")

    def close(self, lineage: Lineage, state: str) -> None:
        """The run's end on record: its current branch ended as ``state``, the lineage
        saved, then the state (never ahead of the lineage), then the run finished."""
        self.end_branch(lineage.branch(), state)
        self.save_lineage(lineage)
        self.set_tags(**{STATE: state})
        self.client.set_terminated(self.run_id, "FINISHED")


def _params(config: dict) -> list:
    from mlflow.entities import Param

    fixed = {"sweep": config["sweep"], "epochs": config["epochs"], "seed": config["seed"],
             "data": config["data"]["source"], "metric": config["metric"]["name"],
             **{f"model.{k}": v for k, v in config["model_config"].items()},
             # the values it started with; those in force later are the hp_* metrics
             **{f"initial.{k}": v for k, v in config["hparams"].items()}}
    return [Param(k, str(v)) for k, v in fixed.items()]


def babysat_runs(uri: str, where: str = "") -> list:
    """The babysat runs' parent runs in every experiment of the store, newest first."""
    if store_missing(uri):  # nothing babysat yet; creating the store would hide a typo
        return []
    client = _client(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    query = f"tags.`{KIND}` = 'babysit'" + (f" and {where}" if where else "")
    return client.search_runs(ids, query, order_by=["attributes.start_time DESC"])
