"""The sweep's event log, exported to MLflow by one writer on the driver.

Why not Ray's MLflowLoggerCallback: after ``Tuner.restore`` it opens a second
run for every resumed trial and leaves the first RUNNING (its trial-to-run map
lives in memory), it has no parent run per sweep, and it logs value by value.

Here the driver's event log (``trials.jsonl``, ``records``) is the source: a
background thread (``tracking.sync``) reads it from a cursor, translates what is new
(``mlflow_writes``) and writes it with one ``log_batch`` per run (``tracking.runs``);
for a sweep of more than 1,000 trials, from a process of its own. The trial-to-run
map and the cursor live in ``<sweep>/mlflow.json``, so a resumed sweep logs into the
same runs. If the tracking server cannot be reached, the sweep goes on; the log on
disk is the buffer, written when the server is back or by ``caviar sync``. Steps a
previous process already logged are read back from MLflow and not written again.

``mlflow.json``: ``tracking_uri`` (without its password), ``experiment``,
``experiment_id``, ``parent_run_id``, ``runs`` (trial id -> run id), ``cursor`` (bytes
of the event log written), ``config`` (run id -> the params it holds), the parent run's
``parent_params``, ``parent_tags`` and ``sweep_uid``, and ``parent_params_logged``.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

from models.files import atomic_write
from orchestrator.sweep.mlflow_writes import KEY_TAG, events_of, translate
from orchestrator.tracking.runs import RunNames, RunWriter, find_parent
from orchestrator.tracking.store import redacted
from searchspaces.errors import CaviarError

STATE_FILE = "mlflow.json"
SWEEP_KEYS = ("parent_params", "parent_tags", "sweep_uid")  # in STATE_FILE, whatever the store
# A sweep's parent run, its trials' runs (by trial id), and the metric every epoch has
NAMES = RunNames({"caviar.kind": "sweep"}, "caviar.sweep_uid", KEY_TAG, "val_loss")


class StateDamaged(CaviarError):
    """The sweep's mlflow.json is damaged and MLflow cannot rebuild it: bad input (exit 2),
    with the way out in the message."""


class MlflowSink:
    """Writes a sweep's event log into MLflow: a parent run, one child run per trial.

    ``state`` is ``mlflow.json`` (see the module's docstring); ``earlier`` says it came
    from an earlier process (a resume, ``caviar sync``), so MLflow may hold runs and
    steps it does not name: they are looked up before writing. A fresh sweep skips the
    queries."""

    def __init__(self, uri: str, experiment: str, sweep_dir: str | Path, log_path: str | Path,
                 workdir: str | Path):
        self.uri = uri
        self.experiment = experiment
        self.dir = Path(sweep_dir)
        self.log_path = Path(log_path)
        self.workdir = workdir
        self.state_path = self.dir / STATE_FILE
        # Kept without its password (mlflow.json is a file: no secrets in files)
        self.state = {"tracking_uri": redacted(uri), "experiment": experiment,
                      "experiment_id": None,
                      "parent_run_id": None, "runs": {}, "cursor": 0, "config": {}}
        self.writer = RunWriter(uri, experiment, self.state, self._save, workdir, NAMES)
        if self.state_path.exists():
            saved = self._read_state()
            if saved.get("tracking_uri") in (uri, redacted(uri)):
                self.state.update(saved)
                self.earlier = True
            else:  # another store (caviar sync --tracking-uri): it holds nothing of this
                # sweep yet, but the parent run's params and tags are the sweep's own
                self.state.update({k: saved[k] for k in SWEEP_KEYS if k in saved})

    @property
    def earlier(self) -> bool:
        return self.writer.earlier

    @earlier.setter
    def earlier(self, value: bool) -> None:
        self.writer.earlier = value

    @property
    def client(self):
        return self.writer.client

    def _save(self) -> None:
        atomic_write(self.state_path, json.dumps(self.state, indent=1))

    def _read_state(self) -> dict:
        """The state file; one a crash or a full disk damaged is rebuilt from MLflow."""
        try:
            saved = json.loads(self.state_path.read_text())
            if isinstance(saved, dict) and isinstance(saved.get("runs"), dict):
                return saved
        except (OSError, ValueError):
            pass
        return self._rebuild()

    def _rebuild(self) -> dict:
        """The trial-to-run map read back from the runs' tags: the sweep's parent run (tag
        ``caviar.sweep``, the one whose trials this event log holds) and its trial runs
        (``caviar.trial_id``). The cursor starts over; steps MLflow holds are not written
        again (``earlier``)."""
        trials = {e["trial_id"] for e in events_of(self.log_path.read_bytes())} \
            if self.log_path.exists() else set()
        try:
            found = find_parent(self.client, self.experiment,
                                {**NAMES.parent, "caviar.sweep": self.dir.name}, KEY_TAG, trials)
            if found is None:
                raise LookupError(f"no parent run of sweep {self.dir.name!r} holds its trials")
            parent, runs = found
        except Exception as e:  # noqa: BLE001 - MLflow down, or nothing to rebuild from
            raise StateDamaged(
                f"{self.state_path}: damaged (not the JSON caviar wrote) and it could not be "
                f"rebuilt from MLflow at {redacted(self.uri)} ({e}). Move it aside (`mv "
                f"{self.state_path} {self.state_path}.bad`): the next resume or `caviar sync` "
                "then writes the sweep's records under a new parent run") from None
        print(f"caviar: {self.state_path} was damaged; rebuilt from MLflow (parent run "
              f"{parent.info.run_id}, {len(runs)} trial runs)", file=sys.stderr)
        self.earlier = True
        return {"tracking_uri": redacted(self.uri), "experiment": self.experiment,
                "experiment_id": parent.info.experiment_id, "parent_run_id": parent.info.run_id,
                "runs": runs, "cursor": 0, "config": {}, "parent_params_logged": True,
                "sweep_uid": parent.data.tags.get(NAMES.uid_tag, uuid.uuid4().hex)}

    def reload(self) -> None:
        """Reads the state file back (another process wrote it: its runs, cursor, parent)."""
        self.state.update(self._read_state())
        self.writer.forget_progress()

    def process_argv(self) -> list[str]:
        """The module and arguments of a process that writes as this sink (SyncProcess)."""
        return [__name__, self.uri, self.experiment, str(self.dir), str(self.log_path),
                str(self.workdir), "earlier" if self.earlier else "fresh"]

    # -- the parent run ------------------------------------------------------------------

    def prepare(self, params: dict, tags: dict) -> None:
        """Keeps the parent run's params and tags in the state file: a sweep that began
        with MLflow down gets its parent run at the first sync that reaches MLflow."""
        self.state["parent_params"] = {k: str(v) for k, v in params.items()}
        self.state["parent_tags"] = dict(tags)
        self._save()

    def start(self) -> str:
        """Finds or creates the experiment and the sweep's parent run (reused on resume),
        and closes (KILLED) child runs a dead driver left RUNNING that nothing will log to."""
        return self.writer.start()

    def finish(self, artifacts: list[Path], status: str = "FINISHED",
               tags: dict | None = None) -> None:
        """Logs the files (a folder goes under its own name), tags, and ends the parent."""
        self.writer.finish(artifacts, status, tags)

    # -- the trials ----------------------------------------------------------------------

    def sync(self) -> int:
        """Writes the events after the cursor; returns how many. Raises when MLflow fails
        (the cursor then stays where it was: nothing is lost)."""
        if not self.writer.started:
            self.start()
        if not self.log_path.exists():
            return 0
        with open(self.log_path, "rb") as f:
            f.seek(self.state["cursor"])
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only: the writer may be mid-line
        if end == 0:
            return 0
        events = events_of(chunk[:end])
        self.writer.write(translate(events, self.writer.progress))
        self.state["cursor"] += end
        self._save()
        return len(events)


def _serve(argv: list[str]) -> int:
    """The process ``SyncProcess`` starts: sync every few seconds until stdin closes."""
    from orchestrator.tracking.sync import serve

    every, uri, experiment, sweep_dir, log_path, workdir, earlier = argv
    sink = MlflowSink(uri, experiment, sweep_dir, log_path, workdir)
    sink.earlier = earlier == "earlier"  # its state file is the driver's, made for it
    return serve(sink, float(every))


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
