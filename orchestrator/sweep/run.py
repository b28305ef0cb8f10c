"""Running a sweep: a whole study on Ray Tune, from the sweep file to summary.json.

Embedded default: Ray started in-process on the local cores (dashboard off),
trial storage in ``<workdir>/ray/``. With ``address`` (or ``RAY_ADDRESS``) it
joins an existing cluster instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import datetime, timezone
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
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_SECONDS))

import ray  # noqa: E402
from ray import tune  # noqa: E402

from models.data import load as load_data  # noqa: E402
from orchestrator.cluster.hardware import HARDWARE_KEYS, hardware_fingerprint  # noqa: E402
from orchestrator.strategies import make_strategy  # noqa: E402
from orchestrator.sweep.records import (  # noqa: E402
    LOG_FILE,
    ORPHANS,
    STATE_FILE,
    RecordingCallback,
    prune_checkpoints,
)
from orchestrator.sweep.report import build_summary, print_top, top_table, write_outputs  # noqa: E402
from orchestrator.sweep.spec import SweepSpec  # noqa: E402
from orchestrator.sweep.trainable import BEST_FILE, train_trial  # noqa: E402
from orchestrator.tracking.sink import MlflowSink, SyncThread, resolve_uri, sweep_artifacts  # noqa: E402
from searchspaces import SpecError  # noqa: E402


def trial_dirname(trial) -> str:
    """Short trial folders (Ray's default packs the whole config into the name)."""
    return f"trial_{trial.trial_id}"


class SweepError(Exception):
    """The sweep cannot start or go on; the message says why and what to do (exit 2)."""


class SweepInterrupted(Exception):
    """Ctrl-C (or a stop) ended the sweep before its budget: resume it (exit 130)."""


def sweep_paths(spec: SweepSpec, workdir: str | Path) -> dict[str, Path]:
    workdir = Path(workdir).expanduser().resolve()
    return {"workdir": workdir, "dir": workdir / spec.name, "storage": workdir / "ray",
            "experiment": workdir / "ray" / spec.name}


def connect(address: str | None = None, quiet: bool = True) -> None:
    """Joins a Ray cluster (``address`` / RAY_ADDRESS), else starts Ray in this process."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": "ERROR", "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)


def check_resources(spec: SweepSpec) -> None:
    """Refuses resources no node of the cluster can ever give (instead of pending forever)."""
    cpu, gpu = spec.resources["cpu"], spec.resources["gpu"]
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
        return
    largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    raise SpecError(spec.source, "key 'resources'",
                    f"each trial asks for cpu: {cpu:g}, gpu: {gpu:g}, but no node of the "
                    f"cluster has that much ({len(nodes)} node(s); the largest has "
                    f"{largest.get('CPU', 0):g} CPU and {largest.get('GPU', 0):g} GPU). "
                    "Lower the request, or run on a cluster with such nodes")


def make_scheduler(spec: SweepSpec):
    """fifo, asha or pbt, from the sweep's (checked) ``scheduler:`` section."""
    s = spec.scheduler
    if s["kind"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="training_iteration", max_t=spec.epochs,
                             grace_period=s["grace_epochs"], reduction_factor=s["reduction_factor"])
    if s["kind"] == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        space = spec.space
        names = s["hyperparameters"]

        def resample(name):
            import numpy as np

            rng = np.random.default_rng()
            return lambda: space[name].from_unit(float(rng.random()))

        def clip(config: dict) -> dict:
            # PBT multiplies values by 0.8 or 1.2: bring them back inside the declared space
            # (momentum 0.99 * 1.2 is not a momentum).
            for name in names:
                p = space[name]
                if hasattr(p, "scale"):
                    config[name] = p.from_unit(min(1.0, max(0.0, p.to_unit(
                        min(max(config[name], p.scale.low), p.scale.high)))))
            return config

        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=s["perturbation_interval"],
            hyperparam_mutations={n: resample(n) for n in names},
            quantile_fraction=s["quantile_fraction"], custom_explore_fn=clip,
            synch=False)
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _member(configs: list[dict], key: str, spec) -> object:
    return configs[spec["config"]["_member"]][key]


def population_space(strategy) -> dict:
    """A Tune param_space giving PBT's initial population: the strategy's first points."""
    from functools import partial

    configs = [strategy.suggest(f"member_{i}") for i in range(strategy.budget)]
    strategy.write_state()
    space = {"_member": tune.grid_search(list(range(len(configs))))}
    for key in configs[0]:
        space[key] = tune.sample_from(partial(_member, configs, key))
    return space


def start_tracking(spec: SweepSpec, paths: dict, tracking_uri: str | None, budget: int,
                   stream) -> MlflowSink | None:
    """The sweep's MLflow sink with its parent run, or None when tracking is off."""
    if not spec.tracking.get("enabled", True):
        return None
    uri = resolve_uri(tracking_uri, spec.tracking.get("uri"), paths["workdir"])
    sink = MlflowSink(uri, spec.tracking.get("experiment") or spec.name, paths["dir"],
                      paths["dir"] / LOG_FILE, paths["workdir"])
    params = {"strategy": spec.strategy["kind"], "scheduler": spec.scheduler["kind"],
              "budget": budget, "seed": spec.seed, "epochs": spec.epochs,
              "metric": spec.metric["name"], "data": spec.data.source,
              **{f"strategy.{k}": v for k, v in spec.strategy.items() if k != "kind"},
              **{f"model.{k}": v for k, v in spec.model.items()}}
    tags = {"mlflow.runName": spec.name, "caviar.sweep": spec.name,
            **{f"caviar.hw.{k}": str(v) for k, v in hardware_fingerprint().items()}}
    # The parent run is made by the sync thread (a fresh sqlite store takes seconds to
    # create): the sweep does not wait for MLflow, and goes on if it is down.
    sink.prepare(params, tags)
    return sink


def finish_tracking(sink: MlflowSink | None, written: bool, spec: SweepSpec, paths: dict,
                    summary: dict, stream) -> None:
    """The parent run's artifacts and status, once every trial's records are written."""
    if sink is None:
        return
    if not written:
        print(f"caviar: MLflow at {sink.uri} still not answering: the records wait in "
              f"{paths['dir']}; run `caviar sync --workdir {paths['workdir']}` later",
              file=stream)
        return
    try:
        # the model folder went up before it was registered (log_model)
        artifacts = [Path(spec.source), *sweep_artifacts(paths["dir"], model=False)]
        if spec.space.source and Path(spec.space.source).is_file():
            artifacts.append(Path(spec.space.source))
        sink.finish(artifacts, "FINISHED" if summary["complete"] else "KILLED",
                    {"caviar.best_trial": (summary.get("best") or {}).get("trial_id", "")})
    except Exception as e:  # noqa: BLE001
        print(f"caviar: could not finish the MLflow parent run ({type(e).__name__}: {e}); "
              "`caviar sync` retries", file=stream)


def draw_plots(spec: SweepSpec, paths: dict, summary: dict, rows: list[dict], stream) -> dict:
    """The sweep's PNGs in ``<sweep>/plots/``; returns the measured importances."""
    from orchestrator.sweep.plots import PLOTS_DIR, make_plots

    try:
        _, shares = make_plots(spec.space, rows, summary.get("rounds", []),
                               spec.metric["name"], spec.metric["mode"],
                               paths["dir"] / PLOTS_DIR, seed=spec.seed)
        return shares
    except Exception as e:  # noqa: BLE001 - a plot never costs the sweep its results
        print(f"caviar: could not draw the plots ({type(e).__name__}: {e})", file=stream)
        return {}


def export_best(spec: SweepSpec, paths: dict, summary: dict, data) -> Path | None:
    """The best trial's net at its best epoch, as ``<workdir>/<name>/model/``, with its
    score on the test split (the holdout no trial was chosen on) among its metrics."""
    best = summary.get("best")
    if not best:
        return None
    path = paths["experiment"] / f"trial_{best['trial_id']}" / BEST_FILE
    if not path.exists():
        return None
    import torch

    from models.config import MLPConfig
    from models.net import MLP
    from models.serving import export_model
    from models.train import evaluate, load_checkpoint

    state = load_checkpoint(path)
    net = MLP(*state["shape"], MLPConfig(**state["model_config"]))
    net.load_state_dict(state["model"])
    test_loss, test_accuracy = evaluate(net, torch.as_tensor(data.x_test),
                                        torch.as_tensor(data.y_test))
    best["metrics"].update(test_loss=test_loss, test_accuracy=test_accuracy)
    out = paths["dir"] / "model"
    if out.exists():
        shutil.rmtree(out)
    return export_model(state, data, out, metrics=best["metrics"])


def log_model(sink: MlflowSink, model_dir: Path, stream) -> bool:
    """The best model's folder as the parent run's ``model/`` artifacts."""
    try:
        sink.client.log_artifacts(sink.state["parent_run_id"], str(model_dir), "model")
        return True
    except Exception as e:  # noqa: BLE001 - the sweep's results stand without it
        print(f"caviar: could not log the model to MLflow ({type(e).__name__}: {e}); it is "
              f"in {model_dir}", file=stream)
        return False


def trial_hardware(rows: list[dict], summary: dict) -> dict:
    """What the best trial trained on, as it reported it (else this driver's machine)."""
    best = next((r["best"] for r in rows if r["trial_id"] == summary["best"]["trial_id"]), {})
    hw = {k: best.get(k) for k in HARDWARE_KEYS}
    return hw if hw["gpu_count"] is not None else dict(hardware_fingerprint())


def register_best(sink: MlflowSink, spec: SweepSpec, summary: dict, model_dir: Path,
                  stream, hardware: dict | None = None) -> dict | None:
    """Registers the parent run's ``model/`` (see log_model) as a new model version.

    MLflow's ``register_model`` wants a logged MLflow model; a plain folder of weights
    and JSON is registered through ``create_model_version`` (see FACTS.md)."""
    name = spec.register["name"]
    best = summary["best"]
    try:
        c = sink.client
        parent = sink.state["parent_run_id"]
        if not c.search_registered_models(filter_string=f"name = '{name}'"):
            c.create_registered_model(name)
        source = f"{c.get_run(parent).info.artifact_uri}/model"
        # what the re-tune job measures staleness against (fingerprint.json is in model/)
        tags = {"caviar.sweep": spec.name, "caviar.trial_id": best["trial_id"],
                "caviar.tuned_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **{f"metric.{k}": str(v) for k, v in best["metrics"].items() if v is not None},
                **{f"hp.{k}": str(v) for k, v in best["config"].items()},
                **{f"hw.{k}": str(v) for k, v in (hardware or hardware_fingerprint()).items()}}
        version = c.create_model_version(name, source, run_id=parent, tags=tags)
        print(f"caviar: registered {name!r} version {version.version} "
              f"(models:/{name}/{version.version})", file=stream)
        out = {"name": name, "version": str(version.version)}
        if spec.register.get("promote"):
            from orchestrator.tracking.registry import Lock, Locked, promote

            try:
                with Lock(c, name, lease_s=60, what=f"sweep {spec.name}"):
                    old, _ = promote(c, name, str(version.version))
            except Locked as e:
                print(f"caviar: version {version.version} not promoted: {e}; promote it later "
                      f"with `caviar promote {name} --version {version.version}`", file=stream)
                return out
            out["promoted"] = True
            print(f"caviar: {name!r} version {version.version} is now production"
                  + (f" (version {old} is previous)" if old else ""), file=stream)
        return out
    except Exception as e:  # noqa: BLE001 - the sweep's results stand without it
        print(f"caviar: could not register {name!r} ({type(e).__name__}: {e}); the model is "
              f"in {model_dir}", file=stream)
        return None


def run_sweep(spec: SweepSpec, workdir: str | Path = "./caviar-runs", *,
              address: str | None = None, resume: bool = False, fresh: bool = False,
              tracking_uri: str | None = None, stream=None) -> dict:
    """Runs the sweep; writes summary.json and trials.csv; returns the summary.

    Args:
        spec: the checked sweep file.
        workdir: where the sweep's folder and Ray's trial storage live.
        address: a Ray cluster to join (else RAY_ADDRESS, else a local Ray).
        resume: continue the sweep whose driver died (Tuner.restore).
        fresh: move an earlier sweep of the same name aside and start over.
        tracking_uri: MLflow (else MLFLOW_TRACKING_URI, the sweep's tracking.uri, or the
            embedded ``sqlite:///<workdir>/mlflow.db``).
    """
    stream = stream or sys.stderr
    paths = sweep_paths(spec, workdir)
    exp = paths["experiment"]
    started = time.time()
    if resume:
        if not tune.Tuner.can_restore(str(exp)):
            raise SweepError(f"nothing to resume: no sweep {spec.name!r} in {paths['workdir']} "
                             "(run it without --resume)")
    elif exp.exists() or (paths["dir"] / LOG_FILE).exists():
        if not fresh:
            raise SweepError(f"sweep {spec.name!r} already exists in {paths['workdir']}: "
                             "--resume to continue it, --fresh to start over (the old one is "
                             "moved aside), or change 'name'")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for p in (exp, paths["dir"]):
            if p.exists():
                shutil.move(str(p), str(p.with_name(f"{p.name}.old-{stamp}")))

    data = load_data(spec.data, spec.base_dir)  # bad data fails here, before Ray starts
    connect(address)
    check_resources(spec)
    paths["dir"].mkdir(parents=True, exist_ok=True)

    metric, mode = spec.metric["name"], spec.metric["mode"]
    strategy = make_strategy(spec.strategy, spec.space, metric, mode, spec.seed,
                             state_file=paths["dir"] / STATE_FILE)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, model=spec.model, epochs=spec.epochs,
                             cpus=spec.resources["cpu"], trials_dir=str(exp),
                             tune_checkpoints=spec.scheduler["kind"] == "pbt",
                             metric=metric, mode=mode),
        {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]})
    recorder = RecordingCallback(str(paths["dir"] / LOG_FILE), metric, mode, spec.epochs,
                                 strategy.budget, stream=stream, trials_dir=str(exp))
    print(f"caviar: sweep {spec.name!r}: {spec.strategy['kind']} over {strategy.budget} trials, "
          f"scheduler {spec.scheduler['kind']}, {spec.epochs} epochs, metric {metric} ({mode}); "
          f"{'resuming' if resume else 'records in'} {paths['dir']}", file=stream, flush=True)
    search_alg, num_samples, param_space = strategy, strategy.budget, None
    if spec.scheduler["kind"] == "pbt":
        # Ray's PBT takes no search algorithm: the strategy draws the population up front.
        search_alg, num_samples, param_space = None, 1, population_space(strategy)
    if resume:
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=make_scheduler(spec), metric=metric, mode=mode,
                num_samples=num_samples, max_concurrent_trials=spec.resources["concurrency"],
                reuse_actors=True, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=str(paths["storage"]), verbose=0,
                # The snapshot reaches storage as it is taken (Ray's default: every 5 min).
                sync_config=tune.SyncConfig(sync_period=SNAPSHOT_SECONDS),
                callbacks=[recorder],
                # All kept while a trial runs; the recorder prunes to 2 (see its docstring).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                failure_config=tune.FailureConfig(max_failures=2)),
        )
    sink = start_tracking(spec, paths, tracking_uri, strategy.budget, stream)
    thread = SyncThread(sink, stream=stream).start() if sink else None
    try:
        results = tuner.fit()
    finally:
        if thread is not None:
            thread.stop_soon()
    for trial_dir in exp.glob("trial_*"):  # the sweep is over: keep the last two of each
        prune_checkpoints(trial_dir)
    shutil.rmtree(exp / ORPHANS, ignore_errors=True)
    summary, rows = build_summary(spec, paths, results, started, strategy.budget)
    written = False
    if sink is not None:
        written = thread.stop()  # every trial's records written (or waiting on disk)
        summary["mlflow"] = {"tracking_uri": sink.uri,
                             "experiment_id": sink.state["experiment_id"],
                             "parent_run_id": sink.state["parent_run_id"]}
        if summary.get("best"):
            summary["best"]["mlflow_run_id"] = sink.state["runs"].get(summary["best"]["trial_id"])
    model_dir = export_best(spec, paths, summary, data)
    if model_dir is not None and sink is not None and written and \
            log_model(sink, model_dir, stream) and spec.register:
        summary["registered"] = register_best(sink, spec, summary, model_dir, stream,
                                              trial_hardware(rows, summary))
    summary["importance"] = draw_plots(spec, paths, summary, rows, stream)
    write_outputs(spec, paths, summary, rows)
    finish_tracking(sink, written, spec, paths, summary, stream)
    print_top(summary, top_table(rows, metric, mode), stream=stream)
    if not summary["complete"]:
        raise SweepInterrupted(
            f"sweep {spec.name!r} stopped before its end ({summary['trials']['total']} of "
            f"{strategy.budget} trials started, some unfinished); summary.json so far is in "
            f"{paths['dir']}. Go on with: caviar sweep {spec.source} --resume"
            + (f" --workdir {paths['workdir']}" if paths["workdir"] != Path(
                "./caviar-runs").resolve() else ""))
    return summary
