"""MLflow tracking: the sweep's event log, exported to MLflow by one writer on the driver.

Why not Ray's MLflowLoggerCallback: after ``Tuner.restore`` it opens a second
run for every resumed trial and leaves the first RUNNING (its trial-to-run map
lives in memory), it has no parent run per sweep, and it logs value by value.

Here the driver's event log (``trials.jsonl``; its format is the sweep's,
``orchestrator.sweep.records``) is the source: a background thread reads it from a
cursor and writes what is new with one ``log_batch`` per run (for a sweep of more
than 1,000 trials, a process of its own: ``SyncProcess``). The trial-to-run map
and the cursor live in ``<sweep>/mlflow.json``, so a resumed sweep logs into the
same runs. If the
tracking server cannot be reached, the sweep goes on; the log on disk is the
buffer, written when the server is back or by ``caviar sync``. Steps a
previous process already logged are read back from MLflow and not written again.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

from models.files import atomic_write
from orchestrator.tracking.store import artifact_root, ensure_sqlite_store, redacted
from orchestrator.trial_protocol import ROUND_KEY, SEED_KEY, hyperparameters
from searchspaces.errors import CaviarError

STATE_FILE = "mlflow.json"
SWEEP_KEYS = ("parent_params", "parent_tags", "sweep_uid")  # in STATE_FILE, whatever the store
METRICS = ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds",
           "samples_per_second")
NODE_TAGS = ("node_id", "node_ip", "hostname", "device", "gpu_name", "gpu_model", "gpu_count",
             "cpu_model", "cpu_count", "torch", "cuda", "threads", "numpy", "caviar_version")
RUN_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "diverged": "FINISHED",
              "failed": "FAILED"}


def _events(lines: bytes) -> list[dict]:
    """The events of whole lines; a line a crash cut short (and the writer ended later)
    does not parse and is skipped, as the event log's own reader does."""
    out = []
    for line in lines.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in out if isinstance(e, dict) and "trial_id" in e and "event" in e]


class StateDamaged(CaviarError):
    """The sweep's mlflow.json is damaged and MLflow cannot rebuild it: bad input (exit 2),
    with the way out in the message."""


class MlflowSink:
    """Writes a sweep's event log into MLflow: a parent run, one child run per trial."""

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
        self._client = None
        # A state file from an earlier process (a resume, caviar sync): MLflow may hold runs
        # and steps it wrote; look them up before writing. A fresh sweep skips the queries.
        self.earlier = False
        if self.state_path.exists():
            saved = self._read_state()
            if saved.get("tracking_uri") in (uri, redacted(uri)):
                self.state.update(saved)
                self.earlier = True
            else:  # another store (caviar sync --tracking-uri): it holds nothing of this
                # sweep yet, but the parent run's params and tags are the sweep's own
                self.state.update({k: saved[k] for k in SWEEP_KEYS if k in saved})
        self._logged: dict[str, int] = {}  # run -> last step logged (MLflow's view, then ours)
        self._earlier: dict[str, int] = {}  # run -> last step earlier processes wrote
        self._written: dict[str, set] = {}  # run -> (step, time) of results it wrote
        self._started = False
        self._doubt = False  # a create may have been made without our knowing: search first

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            ensure_sqlite_store(self.uri)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

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
        try:
            parent, runs = self._find_parent()
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
                "sweep_uid": parent.data.tags.get("caviar.sweep_uid", uuid.uuid4().hex)}

    def _find_parent(self):
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            raise LookupError(f"no experiment {self.experiment!r}")
        logged = {e["trial_id"] for e in _events(self.log_path.read_bytes())} \
            if self.log_path.exists() else set()
        for parent in self.client.search_runs(
                [exp.experiment_id], f"tags.`caviar.kind` = 'sweep' and tags.`caviar.sweep` = "
                f"'{self.dir.name}'", order_by=["attributes.start_time DESC"]):
            children = self.client.search_runs(
                [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            runs = {c.data.tags["caviar.trial_id"]: c.info.run_id for c in children
                    if "caviar.trial_id" in c.data.tags}
            if set(runs) & logged or not logged:
                return parent, runs
        raise LookupError(f"no parent run of sweep {self.dir.name!r} holds its trials")

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
        params, tags = self.state.get("parent_params", {}), self.state.get("parent_tags", {})
        c = self.client
        if self.state["experiment_id"] is None:
            exp = c.get_experiment_by_name(self.experiment)
            self.state["experiment_id"] = exp.experiment_id if exp else c.create_experiment(
                self.experiment, artifact_location=artifact_root(self.uri, self.workdir))
        from mlflow.entities import Param

        parent = self.state["parent_run_id"]
        if parent is None:
            uid = self.state.setdefault("sweep_uid", uuid.uuid4().hex)
            # A create whose answer was lost (the server died mid-request) may have made
            # the run: look for it by its uid before making another.
            found = self._doubt and c.search_runs(
                [self.state["experiment_id"]],
                filter_string=f"tags.`caviar.sweep_uid` = '{uid}'", max_results=1)
            if found:
                parent = found[0].info.run_id
            else:
                self._doubt = True  # until this create is known to have answered
                parent = c.create_run(self.state["experiment_id"],
                                      run_name=tags.get("mlflow.runName"),
                                      tags={"caviar.kind": "sweep", "caviar.sweep_uid": uid,
                                            **tags}).info.run_id
                self._doubt = False
            self.state["parent_run_id"] = parent
            self._save()
        elif not self._started:
            c.update_run(parent, status="RUNNING")
            self.close_orphans()
        if not self.state.get("parent_params_logged"):
            c.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
            self.state["parent_params_logged"] = True
        self._save()
        return parent

    def finish(self, artifacts: list[Path], status: str = "FINISHED",
               tags: dict | None = None) -> None:
        """Logs the files (a folder goes under its own name), tags, and ends the parent."""
        parent = self.state["parent_run_id"]
        for path in map(Path, artifacts):
            if path.is_dir():
                self.client.log_artifacts(parent, str(path), path.name)
            elif path.exists():
                self.client.log_artifact(parent, str(path))
        for key, value in (tags or {}).items():
            self.client.set_tag(parent, key, value)
        self.client.set_terminated(parent, status)

    # -- the trials ----------------------------------------------------------------------

    def sync(self) -> int:
        """Writes the events after the cursor; returns how many. Raises when MLflow fails
        (the cursor then stays where it was: nothing is lost)."""
        if not self._started:
            self.start()
            self._started = True
        if not self.log_path.exists():
            return 0
        with open(self.log_path, "rb") as f:
            f.seek(self.state["cursor"])
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only: the writer may be mid-line
        if end == 0:
            return 0
        events = _events(chunk[:end])
        pending: dict[str, dict] = {}
        for e in events:
            self._apply(e, pending)
        self._flush(pending)
        self.state["cursor"] += end
        self._save()
        return len(events)

    def _run_for(self, tid: str, event: dict, pending: dict) -> str:
        runs = self.state["runs"]
        if tid not in runs:
            found = (self.earlier or self._doubt) and self.client.search_runs(
                [self.state["experiment_id"]],
                filter_string=f"tags.`caviar.trial_id` = '{tid}' and "
                              f"tags.`mlflow.parentRunId` = '{self.state['parent_run_id']}'",
                max_results=1)
            if found:
                runs[tid] = found[0].info.run_id
            else:
                config = event.get("config", {})
                self._doubt = True  # until this create is known to have answered
                run = self.client.create_run(
                    self.state["experiment_id"], run_name=f"trial-{tid}",
                    tags={"mlflow.parentRunId": self.state["parent_run_id"],
                          "caviar.kind": "trial", "caviar.trial_id": tid,
                          "caviar.round": str(config.get(ROUND_KEY, 0)),
                          "caviar.status": "running"})
                runs[tid] = run.info.run_id
                self._doubt = False
            # Saved with the batch, not here: rewriting the whole map for each new trial
            # cost O(trials) per trial. A process that dies before the batch's save left a
            # state file, so the next one looks each unknown trial up by its tag first.
        return runs[tid]

    def _earlier_steps(self, run: str) -> int:
        """The last step earlier processes wrote to this run: fixed for this process, so
        a retried batch judges the same events the same way."""
        self._last_logged(run)  # the first call reads MLflow and sets it
        return self._earlier.get(run, 0)

    def _last_logged(self, run: str) -> int:
        if run not in self._logged:  # what an earlier process wrote: never write it twice
            history = self.client.get_metric_history(run, "val_loss") if self.earlier else []
            self._logged[run] = self._earlier[run] = max((m.step for m in history), default=0)
        return self._logged[run]

    def _pending(self, pending: dict, run: str) -> dict:
        return pending.setdefault(run, {"metrics": [], "keys": set(), "params": {},
                                        "tags": {}, "hp": {}, "end": None})

    def _apply(self, e: dict, pending: dict) -> None:
        """Adds one event to the pending writes. Nothing here changes what this sink
        believes MLflow holds: that changes in ``_flush``, run by run, once written."""
        tid, kind = e["trial_id"], e["event"]
        if kind == "forget":  # started after Tune's last snapshot; re-run under a new id
            run = self.state["runs"].get(tid)
            if run:
                p = self._pending(pending, run)
                p["tags"]["caviar.status"] = "forgotten"
                p["end"] = "KILLED"
            return
        run = self._run_for(tid, e, pending)
        p = self._pending(pending, run)
        if kind == "start":
            self._apply_start(e["config"], run, p)
        elif kind == "result":
            self._apply_result(e, run, p)
        elif kind == "end":
            p["tags"]["caviar.status"] = e["status"]
            p["end"] = RUN_STATUS.get(e["status"], "FINISHED")

    def _apply_start(self, config: dict, run: str, p: dict) -> None:
        """A trial's hyperparameters as params; changed ones (PBT) as tags and metrics."""
        raw = {**hyperparameters(config), "seed": config.get(SEED_KEY)}
        hps = {k: str(v) for k, v in raw.items()}
        known = self.state["config"].get(run) or p["params"]
        if not known:
            p["params"].update(hps)
        else:  # PBT changed them: MLflow refuses new param values, so tags and metrics
            for k, v in hps.items():
                if v != known.get(k):
                    p["tags"][f"caviar.hp.{k}"] = v
                    if isinstance(raw[k], (int, float)) and not isinstance(raw[k], bool):
                        p["hp"][k] = float(raw[k])
        p["tags"]["caviar.status"] = "running"
        p["end"] = None

    def _apply_result(self, e: dict, run: str, p: dict) -> None:
        """One epoch's metrics (step = epoch), unless MLflow has them already."""
        from mlflow.entities import Metric

        step, ts = int(e["epoch"]), int(e["time"] * 1000)
        if (step, ts) in self._written.get(run, ()):
            return  # written by an attempt of this process whose cursor did not move
        pending_steps = {k[0] for k in p["keys"]}
        if e.get("replayed") and (step <= self._last_logged(run) or step in pending_steps):
            return  # read back from a checkpoint: MLflow has it, or this batch does
        if step <= self._earlier_steps(run):
            return  # an earlier process wrote it (its cursor was not saved yet)
        m = e["metrics"]
        p["metrics"] += [Metric(key, float(m[key]), ts, step) for key in METRICS
                         if m.get(key) is not None]
        p["metrics"] += [Metric(f"hp_{k}", v, ts, step) for k, v in p["hp"].items()]
        p["hp"] = {}
        p["keys"].add((step, ts))
        p["tags"].update({f"caviar.{key}": str(m[key]) for key in NODE_TAGS
                          if m.get(key) is not None})

    def _flush(self, pending: dict) -> None:
        """Writes the pending batches run by run; after each run's success, records what
        MLflow now holds, so a retry after a failure midway writes the rest, and only it."""
        from mlflow.entities import Param, RunTag

        for run, p in pending.items():
            metrics = p["metrics"]
            params = [Param(k, v) for k, v in p["params"].items()]
            tags = [RunTag(k, v) for k, v in p["tags"].items()]
            for i in range(0, max(len(metrics), 1), 1000):  # MLflow's per-call limit
                self.client.log_batch(run, metrics=metrics[i:i + 1000],
                                      params=params if i == 0 else [],
                                      tags=tags if i == 0 else [])
            if p["params"]:
                self.state["config"][run] = dict(p["params"])
            self._written.setdefault(run, set()).update(p["keys"])
            if p["keys"]:
                self._logged[run] = max(self._last_logged(run), *(k[0] for k in p["keys"]))
            if p["end"]:
                self.client.set_terminated(run, p["end"])

    def close_orphans(self) -> None:
        """Runs of this sweep a dead driver left RUNNING that no trial will log to: KILLED."""
        from mlflow.entities import ViewType

        mine = set(self.state["runs"].values())
        for run in self.client.search_runs(
                [self.state["experiment_id"]],
                filter_string=f"tags.`mlflow.parentRunId` = '{self.state['parent_run_id']}' "
                              "and attributes.status = 'RUNNING'",
                run_view_type=ViewType.ACTIVE_ONLY):
            if run.info.run_id not in mine:
                self.client.set_terminated(run.info.run_id, "KILLED")


class SyncThread:
    """Runs ``sink.sync()`` every ``every`` seconds off the Tune loop, retrying on failure."""

    def __init__(self, sink: MlflowSink, every: float = 5.0, stream=None):
        self.sink = sink
        self.every = every
        self.stream = stream
        self.error: Exception | None = None
        self._done = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="caviar-mlflow", daemon=True)

    def start(self) -> SyncThread:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._once()

    def _once(self) -> bool:
        try:
            self.sink.sync()
        except Exception as e:  # noqa: BLE001 - the server is down: keep the log, retry
            if self.error is None and self.stream is not None:
                print(f"caviar: MLflow at {redacted(self.sink.uri)} is not answering "
                      f"({type(e).__name__}: {str(e)[:200]}); the sweep goes on, records "
                      "wait on disk",
                      file=self.stream, flush=True)
            self.error = e
            return False
        if self.error is not None and self.stream is not None:
            print("caviar: MLflow answers again; the records that waited are written",
                  file=self.stream, flush=True)
        self.error = None
        return True

    def stop_soon(self) -> None:
        """Asks the thread to stop after its current sync."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def stop(self, deadline_s: float = 30.0) -> bool:
        """Stops the thread and writes what is left, retrying until ``deadline_s``.

        Returns False when MLflow still did not answer: the records wait on disk."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._done:
            return True
        end = time.monotonic() + deadline_s
        while not self._once():
            if time.monotonic() > end:
                return False
            time.sleep(1.0)
        self._done = True
        return True


class SyncProcess:
    """``SyncThread`` in a process of its own: the MLflow writes of a large sweep (~20 ms
    of CPU a trial on sqlite) run beside the driver's Tune loop instead of taking turns
    with it for one interpreter. The process reads the same event log from the cursor in
    ``mlflow.json``, which it owns until it ends; the driver then reads it back.

    It stops when told (``stop_soon``/``stop``), after writing what is left; when the
    driver is gone (its stdin closes untold) it stops at once, leaving the rest to the
    resumed driver or ``caviar sync`` (two writers would race). Ctrl-C reaches the
    driver, not it.
    """

    def __init__(self, sink: MlflowSink, every: float = 5.0, stream=None):
        self.sink, self.every, self.stream = sink, every, stream
        self._proc = None

    def start(self) -> SyncProcess:
        import subprocess

        args = [self.sink.uri, self.sink.experiment, str(self.sink.dir),
                str(self.sink.log_path), str(self.sink.workdir), str(self.every),
                "earlier" if self.sink.earlier else "fresh"]
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.tracking.sink", *args],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=_fd(self.stream),
            cwd=Path(__file__).resolve().parents[2])
        return self

    def stop_soon(self, deadline_s: float = 30.0) -> None:
        """Asks the process to write what is left (retrying until ``deadline_s``) and end."""
        if self._proc is not None and self._proc.stdin and not self._proc.stdin.closed:
            try:
                self._proc.stdin.write(f"{deadline_s}\n".encode())
                self._proc.stdin.close()
            except OSError:
                pass

    def stop(self, deadline_s: float = 30.0) -> bool:
        """Waits for the process to write what is left (retrying until ``deadline_s``);
        False when MLflow still did not answer (the records wait on disk)."""
        self.stop_soon(deadline_s)
        try:
            code = self._proc.wait(timeout=deadline_s + 60)
        except Exception:  # noqa: BLE001 - hung: the records are on disk for caviar sync
            self._proc.kill()
            code = -1
        self.sink.state.update(self.sink._read_state())  # its runs, cursor, parent run
        return code == 0


def _fd(stream):
    """``stream`` for a child process when it is a real file, else this one's stderr."""
    try:
        stream.fileno()
        return stream
    except (AttributeError, OSError, ValueError):
        return None


def _serve(argv: list[str]) -> int:
    """The process ``SyncProcess`` starts: sync every few seconds until stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when it ends
    uri, experiment, sweep_dir, log_path, workdir, every, earlier = argv
    sink = MlflowSink(uri, experiment, sweep_dir, log_path, workdir)
    sink.earlier = earlier == "earlier"  # its state file is the driver's, made for it
    thread = SyncThread(sink, every=float(every), stream=sys.stderr).start()
    told = sys.stdin.read().strip()  # until the driver closes it (with a deadline), or is gone
    if not told:  # the driver died: its resume (or caviar sync) writes the rest, not two of us
        thread.stop_soon()
        thread.join(60.0)
        return 1
    return 0 if thread.stop(float(told)) else 1


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
