"""Running a sweep: a whole study on Ray Tune, from the sweep file to summary.json.

Embedded default: Ray started in-process on the local cores (dashboard off),
trial storage in ``<workdir>/ray/``. With ``address`` (or ``RAY_ADDRESS``) it
joins an existing cluster instead; ``storage`` (``--storage``, the sweep's
``storage:``) puts trial storage on a shared folder or an object store
(``orchestrator.cluster.storage``). The sweep's own folder (event log,
summary, plots, model) stays in the workdir, on the driver's machine.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Fast by default: caviar keeps its own records (and MLflow), so Ray's automatic
# JSON/CSV/TensorBoard loggers only cost time. Set before Tune builds its callbacks.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# The experiment snapshot a --resume starts from, every 5 s (Ray's "auto" may stretch it).
# What a killed driver did after its last snapshot is not lost: trials Tune never saw
# are adopted by their re-suggested twins, epochs it never recorded are replayed from
# checkpoints (trainable.py). Checkpoint pruning (records.py) waits many periods.
SNAPSHOT_SECONDS = 5
SNAPSHOT_SET_BY_USER = "TUNE_GLOBAL_CHECKPOINT_S" in os.environ
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_SECONDS))
LARGE_SWEEP = 1000  # trials: past this the snapshot's own cost decides its period


def snapshot_period(spec: SweepSpec, budget: int) -> str:
    """Seconds between Tune's experiment snapshots. A snapshot holds every trial (0.5 s
    of the driver at 1,000 trials here, 5 s at 10,000): every 5 s would take the driver
    from a large sweep, so past LARGE_SWEEP trials it is Ray's "auto" (at least 10 s,
    about 5 % of the driver's time). Not for PBT, whose checkpoint pruning counts on
    5 s (records.PRUNE_AFTER_S)."""
    if budget > LARGE_SWEEP and spec.scheduler.kind != "pbt":
        return "auto"
    return str(SNAPSHOT_SECONDS)

from ray import tune  # noqa: E402

from models.data import load as load_data  # noqa: E402
from models.files import atomic_write  # noqa: E402
from orchestrator.cluster.connect import (  # noqa: E402
    CLIENT_REFUSED,
    check_resources,
    client_address,
    connect,
)
from orchestrator.cluster.storage import Storage  # noqa: E402
from orchestrator.strategies import make_strategy  # noqa: E402
from orchestrator.sweep import export  # noqa: E402
from orchestrator.sweep.records import (  # noqa: E402
    LOG_FILE,
    ORPHANS,
    STATE_FILE,
    RecordingCallback,
    prune_checkpoints,
)
from orchestrator.sweep.report import build_summary, print_top, top_table, write_outputs  # noqa: E402
from orchestrator.sweep.schedulers import (  # noqa: E402
    decision_epochs,
    make_scheduler,
    population_space,
)
from orchestrator.sweep.spec import SweepSpec  # noqa: E402
from orchestrator.sweep.trainable import REPORT_ENV, REPORT_EVERY_S, train_trial  # noqa: E402
from orchestrator.tracking.sync import SyncProcess, SyncThread  # noqa: E402
from searchspaces.errors import SpecError  # noqa: E402

DEFAULT_WORKDIR = "./caviar-runs"


class SweepError(Exception):
    """The sweep cannot start or go on; the message says why and what to do (exit 2)."""


class DiskFull(Exception):
    """The disk holding the workdir filled up mid-sweep: exit 1, with the way on."""


MIN_FREE_BYTES = 16 * 2**20  # below this the workdir's disk is full for a sweep's purposes


def _free(paths: SweepPaths) -> int:
    paths.workdir.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(paths.workdir).free


def check_free_space(spec: SweepSpec, paths: SweepPaths) -> None:
    """A disk already full is refused before anything is written (exit 2)."""
    free = _free(paths)
    if free < MIN_FREE_BYTES:
        raise SweepError(f"{paths.workdir}: its disk has {free / 2**20:.1f} MB free, under the "
                         f"{MIN_FREE_BYTES // 2**20} MB a sweep needs for its records and "
                         "checkpoints: free some space, or pass another --workdir")


def _disk_full(spec: SweepSpec, paths: SweepPaths) -> DiskFull | None:
    """After a sweep failed or lost trials: the reason in one paragraph when it was the
    disk (a full disk shows up as torch's "unexpected pos", sqlite's "disk is full"...)."""
    free = _free(paths)
    if free >= MIN_FREE_BYTES:
        return None
    # no .tmp is left: models.files.atomic_path removes its own when a write fails
    return DiskFull(f"the disk holding {paths.workdir} is full ({free / 2**20:.1f} MB free): "
                    f"sweep {spec.name!r} stopped with what it had recorded; free some space, "
                    f"then `caviar sweep {spec.source} --resume --workdir {paths.workdir}`")


class SweepInterrupted(Exception):
    """Ctrl-C (or a stop) ended the sweep before its budget: resume it (exit 130)."""


@dataclass(frozen=True)
class SweepPaths:
    """Where a sweep keeps what: its own folder, and Ray Tune's trial storage."""

    workdir: Path  # resolved
    dir: Path  # <workdir>/<name>: the event log, summary.json, trials.csv, plots, model
    storage: Storage  # Tune's storage_path: <workdir>/ray, a shared folder or s3://...
    experiment: Storage  # <storage>/<name>: Tune's experiment, a folder per trial

    @classmethod
    def of(cls, name: str, workdir: str | Path, storage: str | None = None) -> SweepPaths:
        workdir = Path(workdir).expanduser().resolve()
        store = Storage(storage or workdir / "ray")
        return cls(workdir, workdir / name, store, store / name)


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default packs the whole config into the name)."""
    return f"trial_{trial.trial_id}"


def check_start(spec: SweepSpec, paths: SweepPaths, resume: bool, fresh: bool) -> None:
    """A resume needs a sweep to resume; a new sweep needs its name free, or ``fresh``
    (then the old one is moved aside by ``move_aside``). Checks only: changes nothing."""
    problem = paths.storage.reachable()
    if problem:
        raise SweepError(f"trial storage {paths.storage} cannot be used: {problem}. Check "
                         "the sweep's 'storage' (or --storage) and, for an object store, "
                         "AWS_ENDPOINT_URL and the credentials in the environment")
    if resume:
        if not tune.Tuner.can_restore(*paths.experiment.tune_location()):
            where = "" if paths.storage.path == paths.workdir / "ray" else \
                f" (trial storage {paths.storage})"
            raise SweepError(f"nothing to resume: no sweep {spec.name!r} in {paths.workdir}"
                             f"{where} (run it without --resume)")
        _check_origin(spec, paths)
        return
    if not (paths.experiment.exists() or (paths.dir / LOG_FILE).exists()):
        return
    if not fresh:
        raise SweepError(f"sweep {spec.name!r} already exists in {paths.workdir}: "
                         "--resume to continue it, --fresh to start over (the old one is "
                         "moved aside), or change 'name'")


ORIGIN_FILE = "origin.json"  # where the sweep was started: Tune's snapshot holds that path


def _check_origin(spec: SweepSpec, paths: SweepPaths) -> None:
    """Refuses to resume a sweep whose workdir was moved or copied: Tune's snapshot
    (a pickle) holds the old paths, so the resumed driver would write its event log and
    strategy state there, into the original of a copy."""
    origin = paths.dir / ORIGIN_FILE
    if not origin.exists():
        return  # started by an earlier caviar, which did not record it
    started_in = json.loads(origin.read_text()).get("workdir")
    if started_in != str(paths.workdir):
        raise SweepError(f"sweep {spec.name!r} was started in {started_in} and has been moved "
                         f"or copied to {paths.workdir}: Ray Tune's snapshot keeps the old "
                         "paths, so a resume here would write into the old place. Resume it "
                         f"in {started_in} (move it back), or start over here with --fresh")


def record_origin(paths: SweepPaths) -> None:
    if not (paths.dir / ORIGIN_FILE).exists():
        atomic_write(paths.dir / ORIGIN_FILE, json.dumps(
            {"workdir": str(paths.workdir), "storage": str(paths.storage)}))


def started_storage(name: str, workdir: str | Path) -> str | None:
    """The trial storage the sweep ``name`` in ``workdir`` was started with (a resume
    goes on there unless told otherwise); None when unknown."""
    origin = Path(workdir).expanduser().resolve() / name / ORIGIN_FILE
    try:
        return json.loads(origin.read_text()).get("storage")
    except (OSError, ValueError):
        return None


def trial_storage(spec: SweepSpec, workdir: str | Path, storage: str | None,
                  resume: bool) -> str | None:
    """The sweep's trial storage: ``storage`` (checked), else the sweep's; on resume the
    one it started with, and nothing else. None: the default, ``<workdir>/ray``."""
    from orchestrator.cluster.storage import check_location

    if storage is not None:
        problem = check_location(storage)
        if problem:
            raise SweepError(f"--storage: {problem}")
    chosen = storage or spec.storage
    started = started_storage(spec.name, workdir) if resume else None
    if started is None:
        return chosen
    if chosen is not None and Storage(chosen) != Storage(started):
        raise SweepError(f"sweep {spec.name!r} was started with its trials in {started}; "
                         f"resuming it with {chosen} (from --storage, $CAVIAR_STORAGE or "
                         f"its file) would find none of them: resume with {started}, or "
                         "start over there with --fresh")
    return started


def move_aside(paths: SweepPaths) -> None:
    """``--fresh``: the earlier sweep of the name moved aside, stamped with the time. Done
    only once the whole input is checked: a bad data file must not cost the old sweep."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if paths.dir.exists():
        shutil.move(str(paths.dir), str(paths.dir.with_name(f"{paths.dir.name}.old-{stamp}")))
    name = paths.experiment.name
    if paths.storage.exists(name):
        paths.storage.move(name, paths.storage / f"{name}.old-{stamp}")


def report_every() -> float:
    """Seconds between a short-epoch trial's reports and checkpoints (trainable._Pace):
    ``CAVIAR_REPORT_EVERY_S``, else 2; 0 reports every epoch."""
    raw = os.environ.get(REPORT_ENV)
    if raw is None:
        return REPORT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (0.0 <= value < math.inf):
        raise SpecError("environment", REPORT_ENV, f"{raw!r} is not a number of seconds "
                        ">= 0 (0 reports and checkpoints every epoch; unset: 2)")
    return value



def warn_local_storage(paths: SweepPaths, stream) -> None:
    """On a cluster of several nodes, trial storage on this machine's disk is a mistake
    unless it is a shared mount: trials on other nodes write their checkpoints (and
    best.pt, which the model is exported from) to their own disks."""
    import ray

    if paths.storage.remote or len([n for n in ray.nodes() if n.get("Alive")]) < 2:
        return
    print(f"caviar: warning: trial storage {paths.storage} is a folder, and this cluster has "
          "several nodes: unless it is mounted at that path on every node (NFS), trials "
          "elsewhere keep their checkpoints on their own disks (no resume elsewhere, no "
          "exported model). Use an object store: --storage s3://BUCKET/PREFIX",
          file=stream, flush=True)


def make_tuner(spec: SweepSpec, paths: SweepPaths, strategy, data, resume: bool, stream,
               every: float = REPORT_EVERY_S):
    """Tune's Tuner for the sweep: a new one, or the one a dead driver left (resume).
    ``every``: seconds between a short-epoch trial's reports (``report_every``)."""
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, model=spec.model, epochs=spec.epochs,
                             cpus=spec.resources.cpu, trials_dir=str(paths.experiment),
                             tune_checkpoints=spec.scheduler.kind == "pbt",
                             objective=spec.metric, decisions=decision_epochs(spec),
                             report_every=every),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    search_alg, num_samples, param_space = strategy, strategy.budget, None
    if spec.scheduler.kind == "pbt":
        # Ray's PBT takes no search algorithm: the strategy draws the population up front.
        search_alg, num_samples, param_space = None, 1, population_space(strategy)
    if not SNAPSHOT_SET_BY_USER:  # read by Tune as fit() starts
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = snapshot_period(spec, strategy.budget)
    if resume:
        try:
            path, filesystem = paths.experiment.tune_location()
            return tune.Tuner.restore(path, trainable=trainable, storage_filesystem=filesystem,
                                      resume_unfinished=True, resume_errored=True,
                                      param_space=param_space)
        except (AttributeError, ModuleNotFoundError) as e:  # Tune pickled caviar's classes
            raise SweepError(f"sweep {spec.name!r} in {paths.workdir} was started by an "
                             f"earlier caviar whose code this one cannot load ({e}): resume it "
                             "with that version, or start over with --fresh") from None
    recorder = RecordingCallback(str(paths.dir / LOG_FILE), spec.metric, spec.epochs,
                                 strategy.budget, stream=stream, trials_dir=str(paths.experiment))
    storage_path, filesystem = paths.storage.tune_location()
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=make_scheduler(spec), metric=spec.metric.name,
            mode=spec.metric.mode, num_samples=num_samples,
            max_concurrent_trials=spec.resources.concurrency, reuse_actors=True,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=storage_path, storage_filesystem=filesystem,
            verbose=0,
            # The snapshot reaches storage as it is taken (Ray's default: every 5 min).
            sync_config=tune.SyncConfig(sync_period=SNAPSHOT_SECONDS),
            callbacks=[recorder],
            # All kept while a trial runs; the recorder prunes to 2 (see its docstring).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=2)),
    )


def run_sweep(spec: SweepSpec, workdir: str | Path = DEFAULT_WORKDIR, *,
              address: str | None = None, resume: bool = False, fresh: bool = False,
              tracking_uri: str | None = None, storage: str | None = None,
              stream=None) -> dict:
    """Runs the sweep; writes summary.json and trials.csv; returns the summary.

    Args:
        spec: the checked sweep file.
        workdir: where the sweep's folder and Ray's trial storage live.
        address: a Ray cluster to join (else RAY_ADDRESS, else a local Ray).
        resume: continue the sweep whose driver died (Tuner.restore).
        fresh: move an earlier sweep of the same name aside and start over.
        tracking_uri: MLflow (else MLFLOW_TRACKING_URI, the sweep's tracking.uri, or the
            embedded ``sqlite:///<workdir>/mlflow.db``).
        storage: trial storage, a folder or ``s3://BUCKET/PREFIX`` (else the sweep's
            ``storage``, else on resume the one it started with, else ``<workdir>/ray``).

    Raises:
        SweepError: nothing to resume, the name is taken, or the storage cannot be used
            (exit 2).
        SweepInterrupted: it stopped before its budget was spent (exit 130).
    """
    stream = stream or sys.stderr
    if client_address(address):
        raise SweepError(CLIENT_REFUSED)
    paths = SweepPaths.of(spec.name, workdir, trial_storage(spec, workdir, storage, resume))
    started = time.time()
    every = report_every()
    data = _prepare(spec, paths, address, resume, fresh, stream)
    strategy = make_strategy(spec.strategy, spec.space, spec.metric.name, spec.metric.mode,
                             spec.seed, state_file=paths.dir / STATE_FILE)
    tuner = make_tuner(spec, paths, strategy, data, resume, stream, every)
    print(f"caviar: sweep {spec.name!r}: {spec.strategy.kind} over {strategy.budget} trials, "
          f"scheduler {spec.scheduler.kind}, {spec.epochs} epochs, metric {spec.metric.name} "
          f"({spec.metric.mode}); {'resuming' if resume else 'records in'} {paths.dir}",
          file=stream, flush=True)
    sink = export.start_tracking(spec, paths, tracking_uri, strategy.budget, data)
    writer = SyncProcess if strategy.budget > LARGE_SWEEP else SyncThread
    thread = writer(sink, stream=stream).start() if sink else None
    try:
        results = _fit(tuner, spec, paths)
    finally:
        if thread is not None:
            thread.stop_soon()
    for trial_dir in paths.experiment.list("trial_*"):  # over: keep the last two of each
        prune_checkpoints(paths.experiment / trial_dir)
    paths.experiment.delete(ORPHANS)
    summary = finish(spec, paths, results, started, strategy.budget, data, sink, thread, stream)
    if not summary["complete"]:
        raise SweepInterrupted(_stopped(spec, paths, summary, strategy.budget))
    return summary


def _prepare(spec: SweepSpec, paths: SweepPaths, address: str | None, resume: bool,
             fresh: bool, stream):
    """Everything checked (bad input changes nothing), Ray joined or started, the old
    sweep moved aside for ``fresh``, the sweep's folder made; returns its data."""
    check_start(spec, paths, resume, fresh)
    check_free_space(spec, paths)
    data = load_data(spec.data, spec.base_dir)  # bad data fails here, before Ray starts
    connect(address)
    check_resources(spec.resources.cpu, spec.resources.gpu, spec.source)
    warn_local_storage(paths, stream)
    if fresh and not resume:
        move_aside(paths)
    paths.dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        record_origin(paths)
    return data


def _fit(tuner, spec: SweepSpec, paths: SweepPaths):
    """Tune's run; a failure or lost trials on a full disk are told as DiskFull."""
    try:
        results = tuner.fit()
    except Exception as e:
        full = _disk_full(spec, paths)
        if full is not None:
            raise full from e
        raise
    full = _disk_full(spec, paths) if results.errors else None
    if full is not None:
        raise full
    return results


def finish(spec: SweepSpec, paths: SweepPaths, results, started: float, budget: int, data,
           sink, thread, stream) -> dict:
    """After Tune: the summary, the best model (exported, logged, registered), the plots,
    summary.json and trials.csv, the parent run's end, and the report on ``stream``."""
    summary, rows = build_summary(spec, paths.dir, results, started, budget)
    written = False
    if sink is not None:
        written = thread.stop()  # every trial's records written (or waiting on disk)
        export.mlflow_summary(sink, summary)
    model_dir = export.export_best(paths, summary, data)
    if model_dir is not None and sink is not None and written and \
            export.log_model(sink, model_dir, stream) and spec.register:
        summary["registered"] = export.register_best(
            sink, spec, summary, model_dir, stream, export.trial_hardware(rows, summary))
    summary["importance"] = draw_plots(spec, paths, summary, rows, stream)
    write_outputs(spec, paths.dir, summary, rows)
    export.finish_tracking(sink, written, spec, paths, summary, stream)
    print_top(summary, top_table(rows, spec.metric), stream=stream)
    return summary


def draw_plots(spec: SweepSpec, paths: SweepPaths, summary: dict, rows: list[dict],
               stream) -> dict:
    """The sweep's PNGs in ``<sweep>/plots/``; returns the measured importances."""
    from orchestrator.sweep.plots import make_plots

    try:
        _, shares = make_plots(spec.space, rows, summary.get("rounds", []), spec.metric,
                               paths.dir / export.PLOTS_DIR, seed=spec.seed)
        return shares
    except Exception as e:  # noqa: BLE001 - a plot never costs the sweep its results
        print(f"caviar: could not draw the plots ({type(e).__name__}: {e})", file=stream)
        return {}


def _stopped(spec: SweepSpec, paths: SweepPaths, summary: dict, budget: int) -> str:
    """What stopped early, where its records are, and the command that goes on."""
    default = paths.workdir == Path(DEFAULT_WORKDIR).resolve()
    return (f"sweep {spec.name!r} stopped before its end ({summary['trials']['total']} of "
            f"{budget} trials started, some unfinished); summary.json so far is in "
            f"{paths.dir}. Go on with: caviar sweep {spec.source} --resume"
            + ("" if default else f" --workdir {paths.workdir}"))
