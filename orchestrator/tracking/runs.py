"""MLflow runs written so that nothing is written twice: a parent run, its child runs known
by a key of the caller's, and one record of progress per run.

A caller hands ``RunBatch``es keyed by its own keys (a sweep: trial ids). The writer
creates a child run the first time it meets a key, tagged with the key so that a later
process finds it, and keeps a ``Progress`` per run: its id, the params it holds (MLflow
refuses a changed value), the last step earlier processes wrote and the last it holds,
and the steps this process wrote. A batch that fails midway is handed again: what was
written is known by then, and the caller's translation leaves it out.

Where the writer stands lives in a plain dict (``state``) the caller keeps in a file
(``save``): the experiment, the parent run, its params and tags, key -> run id, run ->
params. The writer saves it once the parent run is made; after a batch, the caller does.
``earlier`` says that dict comes from an earlier process: MLflow may then hold runs and
steps that dict does not know of, so they are looked up before anything is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.tracking.store import artifact_root, ensure_sqlite_store, mlflow_client

BATCH_LIMIT = 1000  # metrics per log_batch: MLflow's per-call limit


@dataclass
class Progress:
    """What MLflow holds of one run, as far as this process knows.

    ``earlier_step`` is fixed once read (a retried batch judges the same steps the same
    way); ``last_step`` grows as this process writes; ``written`` holds the (step,
    milliseconds) of each result this process wrote, so a step written twice on purpose
    (at another time) is told apart from one handed again."""

    run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    earlier_step: int = 0
    last_step: int = 0
    written: set[tuple[int, int]] = field(default_factory=set)
    steps_known: bool = False  # earlier_step and last_step were read from MLflow

    def holds(self, step: int, ms: int, replayed: bool = False) -> bool:
        """Whether a result at ``step`` (taken at ``ms``) is in MLflow already: this process
        wrote it, or an earlier one did, or it was ``replayed`` (read back after a restart)
        and MLflow has that step."""
        if (step, ms) in self.written or step <= self.earlier_step:
            return True
        return replayed and step <= self.last_step

    def wrote(self, batch: RunBatch) -> None:
        """``batch`` is in MLflow now."""
        if batch.params:
            self.params = dict(batch.params)
        self.written |= batch.steps
        self.last_step = max(self.last_step, *(step for step, _ in batch.steps), 0)


@dataclass
class RunBatch:
    """What to write to one run: made with ``create`` (its name and tags) if it has none."""

    name: str = ""
    create: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    steps: set[tuple[int, int]] = field(default_factory=set)  # (step, ms) of the results in it
    end: str | None = None  # the run's terminal status, when it ends


@dataclass(frozen=True)
class RunNames:
    """How a caller's runs are known in MLflow."""

    parent: dict[str, str]  # the parent's tags that say what it is
    uid_tag: str  # the parent's tag holding its unique id, to find it after a lost create
    key_tag: str  # the child's tag holding the caller's key
    step_metric: str  # a metric every step of a child has: the steps it holds are read here


class RunWriter:
    """Writes a parent run and its child runs; ``state`` is the caller's to save.

    Args:
        uri: the tracking URI (with its password, if any: it is never saved).
        experiment: the experiment's name, made on first use.
        state: where the writer stands (see the module's docstring); changed in place.
        save: writes ``state`` where the caller keeps it.
        workdir: where the embedded store keeps artifacts.
        names: the tags and the metric the caller's runs are known by.
        earlier: ``state`` comes from an earlier process (see the module's docstring).
    """

    def __init__(self, uri: str, experiment: str, state: dict, save: Callable[[], None],
                 workdir, names: RunNames, earlier: bool = False):
        self.uri, self.experiment, self.state, self.save = uri, experiment, state, save
        self.workdir, self.names = workdir, names
        self.earlier = earlier
        self._client = None
        self._progress: dict[str, Progress] = {}  # key -> its run's record
        self._started = False
        self._doubt = False  # a create may have been made without our knowing: search first

    @property
    def client(self):
        if self._client is None:
            ensure_sqlite_store(self.uri)
            self._client = mlflow_client(self.uri)
        return self._client

    @property
    def started(self) -> bool:
        return self._started

    def forget_progress(self) -> None:
        """Drops what this process learnt of the runs (``state`` changed under it)."""
        self._progress.clear()

    # -- the parent run ------------------------------------------------------------------

    def start(self) -> str:
        """Finds or creates the experiment and the parent run (reused when ``state`` names
        one), logs its params once, and closes (KILLED) child runs a dead writer left
        RUNNING that nothing will log to. Returns the parent run's id."""
        c = self.client
        if self.state["experiment_id"] is None:
            exp = c.get_experiment_by_name(self.experiment)
            self.state["experiment_id"] = exp.experiment_id if exp else c.create_experiment(
                self.experiment, artifact_location=artifact_root(self.uri, self.workdir))
        parent = self.state["parent_run_id"]
        if parent is None:
            self.state["parent_run_id"] = parent = self._create_parent()
            self.save()  # made once, whatever happens next
        elif not self._started:
            c.update_run(parent, status="RUNNING")
            self.close_orphans()
        if not self.state.get("parent_params_logged"):
            from mlflow.entities import Param

            params = self.state.get("parent_params", {})
            c.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
            self.state["parent_params_logged"] = True
        self.save()
        self._started = True
        return parent

    def _create_parent(self) -> str:
        """The parent run, made once: a create whose answer was lost (the server died
        mid-request) may have made it, so after one it is looked for by its uid first."""
        tags = self.state.get("parent_tags", {})
        uid = self.state.setdefault("sweep_uid", uuid.uuid4().hex)  # the file's name for it
        found = self._doubt and self.client.search_runs(
            [self.state["experiment_id"]], filter_string=f"tags.`{self.names.uid_tag}` = '{uid}'",
            max_results=1)
        if found:
            return found[0].info.run_id
        self._doubt = True  # until this create is known to have answered
        run = self.client.create_run(self.state["experiment_id"],
                                     run_name=tags.get("mlflow.runName"),
                                     tags={**self.names.parent, self.names.uid_tag: uid, **tags})
        self._doubt = False
        return run.info.run_id

    def finish(self, artifacts, status: str = "FINISHED", tags: dict | None = None) -> None:
        """Logs the files (a folder goes under its own name), tags, and ends the parent."""
        from pathlib import Path

        parent = self.state["parent_run_id"]
        for path in map(Path, artifacts):
            if path.is_dir():
                self.client.log_artifacts(parent, str(path), path.name)
            elif path.exists():
                self.client.log_artifact(parent, str(path))
        for key, value in (tags or {}).items():
            self.client.set_tag(parent, key, value)
        self.client.set_terminated(parent, status)

    def close_orphans(self) -> None:
        """Child runs a dead writer left RUNNING that no key of ``state`` names: KILLED."""
        from mlflow.entities import ViewType

        mine = set(self.state["runs"].values())
        for run in self.client.search_runs(
                [self.state["experiment_id"]],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.state['parent_run_id']}' "
                              "and attributes.status = 'RUNNING'",
                run_view_type=ViewType.ACTIVE_ONLY):
            if run.info.run_id not in mine:
                self.client.set_terminated(run.info.run_id, "KILLED")

    # -- the child runs ------------------------------------------------------------------

    def progress(self, key: str, find: bool = True, steps: bool = False) -> Progress:
        """The record of ``key``'s run. ``find``: when ``state`` does not name the run and
        MLflow may hold it (``earlier``, or a lost create), look it up by its tag.
        ``steps``: read the steps earlier processes wrote (once per run)."""
        p = self._progress.get(key)
        if p is None:
            run = self.state["runs"].get(key)
            p = self._progress[key] = Progress(run, dict(self.state["config"].get(run) or {}))
        if p.run_id is None and find and (self.earlier or self._doubt):
            found = self.client.search_runs(
                [self.state["experiment_id"]],
                filter_string=f"tags.`{self.names.key_tag}` = '{key}' and "
                              f"tags.`mlflow.parentRunId` = '{self.state['parent_run_id']}'",
                max_results=1)
            if found:
                p.run_id = self.state["runs"][key] = found[0].info.run_id
        if steps and not p.steps_known:
            history = self.client.get_metric_history(p.run_id, self.names.step_metric) \
                if self.earlier and p.run_id else []
            p.earlier_step = p.last_step = max((m.step for m in history), default=0)
            p.steps_known = True
        return p

    def write(self, batches: dict[str, RunBatch]) -> None:
        """Writes the batches key by key; after each run's success, records what MLflow now
        holds of it, so that after a failure midway the same batches handed again (and
        translated again) write the rest, and only it."""
        from mlflow.entities import Metric, Param, RunTag

        for key, b in batches.items():
            p = self.progress(key, find=False, steps=bool(b.steps))  # before this batch's
            run = p.run_id or self._create(key, b)
            metrics = [Metric(*m) for m in b.metrics]
            params = [Param(k, v) for k, v in b.params.items()]
            tags = [RunTag(k, v) for k, v in b.tags.items()]
            for i in range(0, max(len(metrics), 1), BATCH_LIMIT):
                self.client.log_batch(run, metrics=metrics[i:i + BATCH_LIMIT],
                                      params=params if i == 0 else [],
                                      tags=tags if i == 0 else [])
            p.wrote(b)
            if b.params:
                self.state["config"][run] = dict(p.params)
            if b.end:
                self.client.set_terminated(run, b.end)

    def _create(self, key: str, b: RunBatch) -> str:
        """``key``'s run, made under the parent. Saved with the caller's state, not here:
        a process that dies before that leaves ``earlier`` state, so the next one looks
        each unknown key up by its tag first."""
        self._doubt = True  # until this create is known to have answered
        run = self.client.create_run(
            self.state["experiment_id"], run_name=b.name,
            tags={"mlflow.parentRunId": self.state["parent_run_id"], **b.create,
                  self.names.key_tag: key}).info.run_id
        self._doubt = False
        self._progress[key].run_id = self.state["runs"][key] = run
        return run


def find_parent(client, experiment: str, tags: dict[str, str], key_tag: str, keys: set[str]):
    """The newest parent run with ``tags`` whose child runs hold one of ``keys`` (any, when
    ``keys`` is empty), and its children's key -> run id: what a lost state is rebuilt from.
    None when there is no such parent run.

    Raises:
        LookupError: no such experiment.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment {experiment!r}")
    match = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    for parent in client.search_runs([exp.experiment_id], match,
                                     order_by=["attributes.start_time DESC"]):
        children = client.search_runs(
            [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        runs = {c.data.tags[key_tag]: c.info.run_id for c in children if key_tag in c.data.tags}
        if set(runs) & keys or not keys:
            return parent, runs
    return None
