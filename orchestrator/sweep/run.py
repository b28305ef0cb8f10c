"""Running a sweep: a whole study on Ray Tune, from the sweep file to summary.json.

Embedded default: Ray started in-process on the local cores (dashboard off). With
``address`` (or ``RAY_ADDRESS``) it joins an existing cluster instead. Where the
sweep's records and Tune's trial storage live, and their checks before a run, are
``orchestrator.sweep.paths``; this module drives Tune: the Tuner, its settings, the
run, and what follows it (the summary, the model, the plots, MLflow).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from ray import tune

from models.data import load as load_data
from orchestrator import DEFAULT_WORKDIR
from orchestrator.cluster.connect import (
    CLIENT_REFUSED,
    check_resources,
    client_address,
    connect,
)
from orchestrator.strategies import make_strategy
from orchestrator.sweep import export
from orchestrator.sweep.paths import (
    SweepError,
    SweepPaths,
    check_free_space,
    check_start,
    disk_full,
    move_aside,
    record_origin,
    trial_storage,
    warn_local_storage,
)
from orchestrator.sweep.records import (
    LOG_FILE,
    ORPHANS,
    STATE_FILE,
    RecordingCallback,
    prune_checkpoints,
)
from orchestrator.sweep.report import build_summary, print_top, top_table, write_outputs
from orchestrator.sweep.schedulers import decision_epochs, make_scheduler, population_space
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.trainable import REPORT_ENV, REPORT_EVERY_S, train_trial
from orchestrator.tracking.sync import SyncProcess, SyncThread
from searchspaces.errors import EXIT_INTERRUPTED, CaviarError, SpecError

__all__ = ["DEFAULT_WORKDIR", "SweepError", "SweepInterrupted", "SweepPaths", "run_sweep"]

LARGE_SWEEP = 1000  # trials: past this the snapshot's own cost decides its period
# The experiment snapshot a --resume starts from, every 5 s (Ray's "auto" may stretch it).
# What a killed driver did after its last snapshot is not lost: trials Tune never saw
# are adopted by their re-suggested twins, epochs it never recorded are replayed from
# checkpoints (trainable.py). Checkpoint pruning (records.py) waits many periods.
SNAPSHOT_SECONDS = 5
SNAPSHOT_ENV = "TUNE_GLOBAL_CHECKPOINT_S"


class SweepInterrupted(CaviarError):
    """Ctrl-C (or a stop) ended the sweep before its budget: resume it (exit 130)."""

    exit_code, label = EXIT_INTERRUPTED, "interrupted"


def snapshot_period(spec: SweepSpec, budget: int) -> str:
    """Seconds between Tune's experiment snapshots. A snapshot holds every trial (0.5 s
    of the driver at 1,000 trials here, 5 s at 10,000): every 5 s would take the driver
    from a large sweep, so past LARGE_SWEEP trials it is Ray's "auto" (at least 10 s,
    about 5 % of the driver's time). Not for PBT, whose checkpoint pruning counts on
    5 s (records.PRUNE_AFTER_S)."""
    if budget > LARGE_SWEEP and spec.scheduler.kind != "pbt":
        return "auto"
    return str(SNAPSHOT_SECONDS)


_SET_HERE: dict[str, str] = {}  # what tune_settings set, to tell it from the user's


def tune_settings(period: str) -> None:
    """caviar's settings of Ray Tune, each unless the user set it: Tune's own JSON, CSV
    and TensorBoard loggers off (caviar keeps its own records, and MLflow: they only
    cost time), its older console output (``verbose=0`` then prints nothing), and the
    snapshot ``period``. Tune reads them from the environment as a Tuner builds its
    callbacks and as ``fit()`` starts, not at import: call this before making one."""
    wanted = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
              SNAPSHOT_ENV: period}
    for name, value in wanted.items():
        if os.environ.get(name, _SET_HERE.get(name)) == _SET_HERE.get(name):
            os.environ[name] = _SET_HERE[name] = value


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default packs the whole config into the name). Tune
    pickles this function by its name into the experiment snapshot: it stays here, or
    sweeps started earlier cannot be resumed."""
    return f"trial_{trial.trial_id}"


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
    tune_settings(snapshot_period(spec, strategy.budget))
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
        full = disk_full(spec, paths)
        if full is not None:
            raise full from e
        raise
    full = disk_full(spec, paths) if results.errors else None
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
