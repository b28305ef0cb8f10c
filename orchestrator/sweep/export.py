"""What a sweep hands MLflow: its parent run, the best model, and records that waited.

The trials' runs are written by ``sink`` from the event log while the
sweep runs; this module starts that (the parent run's params and tags), and when
the sweep ends exports the best trial's net as a model folder, logs it with the
sweep's files to the parent run, and registers it when the sweep file asks.
``caviar sync`` (``sync_workdir``) writes what waited on disk while MLflow was down.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from orchestrator.cluster.hardware import HARDWARE_KEYS, hardware_fingerprint
from orchestrator.strategies import to_dict
from orchestrator.sweep.records import LOG_FILE
from orchestrator.sweep.report import SUMMARY_FILE, TRIALS_CSV
from orchestrator.sweep.sink import STATE_FILE, MlflowSink, StateDamaged
from orchestrator.sweep.trainable import BEST_FILE
from orchestrator.tracking.registry import register_version, version_tags
from orchestrator.tracking.store import (
    embedded_uri,
    mlflow_settings,
    redacted,
    resolve_uri,
    unredacted,
)

MODEL_DIR, PLOTS_DIR = "model", "plots"


def sweep_artifacts(sweep_dir: str | Path, model: bool = True) -> list[Path]:
    """What the parent run holds from the sweep's folder (the sweep file aside): folders
    are logged under their own names."""
    d = Path(sweep_dir)
    return [d / SUMMARY_FILE, d / TRIALS_CSV, d / PLOTS_DIR, *([d / MODEL_DIR] if model else [])]


def data_params(spec, data) -> dict:
    """What a re-run rebuilds the data from: the data section (a file's path made
    absolute) and the digest of what the trainer saw."""
    from models.data import FILE_SOURCES, resolve_path
    from models.fingerprint import digest

    d = spec.data.to_dict()
    if spec.data.source in FILE_SOURCES:
        d["path"] = str(resolve_path(spec.data.path, spec.base_dir))
    return {"data.spec": json.dumps(d), "data.sha256": digest(data)}


def start_tracking(spec, paths, tracking_uri: str | None, budget: int,
                   data=None) -> MlflowSink | None:
    """The sweep's MLflow sink with its parent run's params and tags, or None when
    tracking is off. The parent run is made by the sync thread (a fresh sqlite store
    takes seconds to create): the sweep does not wait for MLflow, and goes on if it is
    down."""
    if not spec.tracking.enabled:
        return None
    mlflow_settings()  # before the sink's first call, and the sync process it may start
    uri = resolve_uri(tracking_uri, spec.tracking.uri, paths.workdir)
    sink = MlflowSink(uri, spec.tracking.experiment or spec.name, paths.dir,
                      paths.dir / LOG_FILE, paths.workdir)
    params = {"strategy": spec.strategy.kind, "scheduler": spec.scheduler.kind,
              "budget": budget, "seed": spec.seed, "epochs": spec.epochs,
              "metric": spec.metric.name, "data": spec.data.source,
              **{f"strategy.{k}": v for k, v in to_dict(spec.strategy).items() if k != "kind"},
              **{f"model.{k}": v for k, v in spec.model.items()},
              **(data_params(spec, data) if data is not None else {})}
    tags = {"mlflow.runName": spec.name, "caviar.sweep": spec.name,
            **{f"caviar.hw.{k}": str(v) for k, v in hardware_fingerprint().items()}}
    sink.prepare(params, tags)
    return sink


def mlflow_summary(sink: MlflowSink, summary: dict) -> None:
    """summary.json's ``mlflow`` block, and the best trial's run id."""
    summary["mlflow"] = {"tracking_uri": redacted(sink.uri),
                         "experiment_id": sink.state["experiment_id"],
                         "parent_run_id": sink.state["parent_run_id"]}
    if summary.get("best"):
        summary["best"]["mlflow_run_id"] = sink.state["runs"].get(summary["best"]["trial_id"])


def finish_tracking(sink: MlflowSink | None, written: bool, spec, paths, summary: dict,
                    stream) -> None:
    """The parent run's artifacts and status, once every trial's records are written."""
    if sink is None:
        return
    if not written:
        print(f"caviar: MLflow at {redacted(sink.uri)} still not answering: the records wait in "
              f"{paths.dir}; run `caviar sync --workdir {paths.workdir}` later", file=stream)
        return
    try:
        # the model folder went up before it was registered (log_model)
        artifacts = [Path(spec.source), *sweep_artifacts(paths.dir, model=False)]
        if spec.space.source and Path(spec.space.source).is_file():
            artifacts.append(Path(spec.space.source))
        sink.finish(artifacts, "FINISHED" if summary["complete"] else "KILLED",
                    {"caviar.best_trial": (summary.get("best") or {}).get("trial_id", "")})
    except Exception as e:  # noqa: BLE001
        print(f"caviar: could not finish the MLflow parent run ({type(e).__name__}: {e}); "
              "`caviar sync` retries", file=stream)


def export_best(paths, summary: dict, data) -> Path | None:
    """The best trial's net at its best epoch, as ``<workdir>/<name>/model/``, with its
    score on the test split (the holdout no trial was chosen on) among its metrics."""
    best = summary.get("best")
    if not best:
        return None
    trial = paths.experiment / f"trial_{best['trial_id']}"
    if not trial.exists(BEST_FILE):
        return None
    from models.serving import export_model
    from models.train import holdout_scores, load_checkpoint, net_from_checkpoint

    state = trial.read(BEST_FILE, load_checkpoint)
    test_loss, test_accuracy = holdout_scores(net_from_checkpoint(state), data)
    best["metrics"].update(test_loss=test_loss, test_accuracy=test_accuracy)
    out = paths.dir / MODEL_DIR
    if out.exists():
        shutil.rmtree(out)
    return export_model(state, data, out, metrics=best["metrics"])


def log_model(sink: MlflowSink, model_dir: Path, stream) -> bool:
    """The best model's folder as the parent run's ``model/`` artifacts."""
    try:
        sink.client.log_artifacts(sink.state["parent_run_id"], str(model_dir), MODEL_DIR)
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


def register_best(sink: MlflowSink, spec, summary: dict, model_dir: Path, stream,
                  hardware: dict) -> dict | None:
    """Registers the parent run's ``model/`` (see log_model) as a new model version,
    with what the re-tune job measures staleness against; promotes it when asked."""
    name, best = spec.register.name, summary["best"]
    try:
        tags = version_tags(best["config"], best["metrics"], hardware, {
            "caviar.sweep": spec.name, "caviar.trial_id": best["trial_id"]})
        version = register_version(sink.client, name, sink.state["parent_run_id"], tags)
        print(f"caviar: registered {name!r} version {version} (models:/{name}/{version})",
              file=stream)
        out = {"name": name, "version": version}
        if spec.register.promote and _promote(sink.client, spec, version, stream):
            out["promoted"] = True
        return out
    except Exception as e:  # noqa: BLE001 - the sweep's results stand without it
        print(f"caviar: could not register {name!r} ({type(e).__name__}: {e}); the model is "
              f"in {model_dir}", file=stream)
        return None


def _promote(client, spec, version: str, stream) -> bool:
    """``register: {promote: true}``: production moves to the new version, under the
    model's lock (a re-tune job or a hand promotion at the same time is not raced)."""
    from orchestrator.tracking.registry import Lock, Locked, promote

    name = spec.register.name
    try:
        with Lock(client, name, lease_s=60, what=f"sweep {spec.name}"):
            old, _ = promote(client, name, version)
    except Locked as e:
        print(f"caviar: version {version} not promoted: {e}; promote it later "
              f"with `caviar promote {name} --version {version}`", file=stream)
        return False
    print(f"caviar: {name!r} version {version} is now production"
          + (f" (version {old} is previous)" if old else ""), file=stream)
    return True


def sync_workdir(workdir: str | Path, tracking_uri: str | None, stream) -> int:
    """``caviar sync``: writes what each sweep in ``workdir`` recorded while MLflow could
    not be reached (and ends the parent run of a finished one); returns how many failed."""
    workdir = Path(workdir).expanduser()
    dirs = sorted(p.parent for p in workdir.glob(f"*/{STATE_FILE}"))
    if not dirs:
        print(f"caviar: nothing to sync in {workdir}", file=stream)
        return 0
    failed = 0
    mlflow_settings()  # an unreachable server costs seconds, not minutes
    for d in dirs:
        try:
            state = json.loads((d / STATE_FILE).read_text())
        except ValueError:  # damaged: the sink rebuilds it from the store's tags
            state = {}
        uri = tracking_uri or unredacted(state.get("tracking_uri")) or embedded_uri(workdir)
        try:
            sink = MlflowSink(uri, state.get("experiment") or d.name, d, d / LOG_FILE, workdir)
            n = sink.sync()
            summary = d / SUMMARY_FILE
            if summary.exists() and json.loads(summary.read_text()).get("complete"):
                sink.finish(sweep_artifacts(d))
        except StateDamaged as e:
            print(f"caviar: {d.name}: {e}", file=stream)
            failed += 1
            continue
        except Exception as e:  # noqa: BLE001 - report and go on with the next sweep
            print(f"caviar: {d.name}: MLflow at {redacted(uri)} failed ({type(e).__name__}: {e})",
                  file=stream)
            failed += 1
            continue
        print(f"caviar: {d.name}: {n} records written to {redacted(uri)}", file=stream)
    return failed
