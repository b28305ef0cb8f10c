"""The re-tune job: is production stale, and if so, is there something really better?

``caviar retune RETUNE.yaml`` (safe to run from cron every night):

1. Takes the model's lock (``tracking.registry.Lock``): a second job for the same
   model exits 3.
2. Fetches the production version (alias ``production``) and measures the triggers
   it enabled (``triggers``) against what the version recorded when it was tuned.
3. When stale (or ``--force``): a coarse-to-fine search whose round 0 is centred on
   the production hyperparameters (they are its first trial), on today's data,
   with a smaller budget than a cold search.
4. The gate (``gate``) decides promoted, refreshed or kept. A promotion registers
   the new model and moves ``production`` (the old version becomes ``previous``).
5. Every job leaves an MLflow run (``caviar.kind=retune``) and prints a report.

Aliases move last, only when everything before succeeded: a tracking server lost
midway fails the job (exit 1) with production where it was.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

from orchestrator.fields import fail
from orchestrator.retune.gate import best_seed, decide, gate
from orchestrator.retune.spec import RetuneSpec
from orchestrator.retune.triggers import check, cooldown, fetch, utcnow
from orchestrator.tracking.registry import (
    Lock,
    RegistryError,
    production,
    promote,
    register_version,
    version_tags,
)
from orchestrator.tracking.store import (
    StoreMissing,
    artifact_root,
    check_store,
    registry_client,
    resolve_uri,
)
from searchspaces.errors import Failure

DECISIONS = ("not_stale", "promoted", "refreshed", "kept", "failed")
__all__ = ["DECISIONS", "RetuneFailed", "StoreMissing", "run_retune"]


class RetuneFailed(Failure):
    """The job could not finish (the tracking server went away, training failed): exit 1."""


def warm_search(spec: RetuneSpec, start: dict, workdir: Path, uri: str, name: str,
                address: str | None, stream, storage: str | None = None) -> dict:
    """Coarse to fine from production's hyperparameters, on today's data; its summary."""
    import yaml

    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import parse_sweep

    sweep = spec.sweep
    tuned = {p.name for p in sweep.space.tuned}
    s = spec.search
    raw = {**sweep.to_dict(), "name": name, "data": spec.data.to_dict(),
           "strategy": {"kind": "coarse_to_fine", "rounds": s.rounds,
                        "trials_per_round": s.trials_per_round, "keep": s.keep,
                        "margin": s.margin, "start": {k: v for k, v in start.items()
                                                      if k in tuned}, "width": s.width},
           "tracking": {"experiment": spec.experiment}}  # the uri goes as tracking_uri:
    # written into the file it would put a password from $MLFLOW_TRACKING_URI on disk
    raw.pop("register", None)  # the gate registers, not the search
    if raw["scheduler"]["kind"] == "pbt":
        raw["scheduler"] = {"kind": "asha"}  # pbt takes no search algorithm; warm start needs one
    path = workdir / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return run_sweep(parse_sweep(raw, str(path), sweep.base_dir), workdir, address=address,
                     tracking_uri=uri, storage=storage, stream=stream)


def register(client, spec: RetuneSpec, run_id: str, model_dir: Path, winner: dict,
             config: dict, decision: str) -> str:
    """The winning retrain as a new version of the model (its run's ``model/``)."""
    client.log_artifacts(run_id, str(model_dir), "model")
    tags = version_tags(config, {"test_accuracy": winner["holdout_accuracy"],
                                 "test_loss": winner["holdout_loss"]}, winner["hardware"],
                        {"caviar.kind": "retune", "caviar.decision": decision})
    return register_version(client, spec.model, run_id, tags)


def report_lines(report: dict) -> list[str]:
    lines = [f"caviar retune {report['model']}: {report['decision'].upper()}"
             + (" (dry run)" if report.get("dry_run") else "")]
    prod = report.get("production_version")
    if prod:
        lines.append(f"  production: version {prod}")
    for name, t in report.get("triggers", {}).items():
        figures = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in t.items() if k != "stale")
        lines.append(f"  {name:9s} {'STALE' if t['stale'] else 'ok':5s}  {figures}")
    if report.get("forced"):
        lines.append("  --force: re-tuned whatever the triggers say")
    if report.get("cooldown"):
        lines.append(f"  stale, but this version was kept (or rolled back to) at "
                     f"{report['cooldown']['checked_at']}: no re-tune before "
                     f"{report['cooldown']['until']} (cooldown_days; --force overrides)")
    g = report.get("gate")
    if g:
        lines.append(f"  gate on today's holdout ({g['metric']}, margin {g['margin']}): "
                     f"production {g['production']['mean']:.4g} ± {g['production']['std']:.2g}"
                     + (f", challenger {g['challenger']['mean']:.4g} ± "
                        f"{g['challenger']['std']:.2g}" if "challenger" in g else
                        ", challenger = production")
                     + f", deployed {g['deployed']:.4g}"
                     + (f", Welch p={g['p_value']:.3g}" if g.get("p_value") is not None else ""))
    if report.get("new_version"):
        lines.append(f"  production is now version {report['new_version']} (previous: "
                     f"{report.get('production_version')}); undo: caviar rollback "
                     f"{report['model']}")
    if report.get("error"):
        lines.append(f"  failed: {report['error']}")
    return lines


def _open(spec: RetuneSpec, workdir: Path, tracking_uri: str | None):
    """(the registry client, its URI, today's data, the production version): bad input
    (exit 2) is found here, before the lock is taken."""
    from models.data import load as load_data

    uri = resolve_uri(tracking_uri, spec.tracking.uri or spec.sweep.tracking.uri, workdir)
    check_store(uri, spec.model)
    data = load_data(spec.data, spec.data_base)  # bad data is bad input: before the lock
    client = registry_client(uri, spec.model)
    try:
        version = production(client, spec.model)  # unknown model, none: bad input, exit 2
    except RegistryError as e:
        raise fail(spec.source, "model", str(e)) from None
    except Exception as e:  # noqa: BLE001 - the tracking server is not answering
        raise RetuneFailed(f"MLflow at {uri} is not answering ({type(e).__name__}: "
                           f"{str(e)[:300]}); nothing was changed") from None
    return client, uri, data, version


def run_retune(spec: RetuneSpec, workdir: str | Path = "./caviar-runs", *,
               tracking_uri: str | None = None, address: str | None = None,
               dry_run: bool = False, force: bool = False, storage: str | None = None,
               stream=None) -> dict:
    """Runs the job; returns its report. ``storage``: the search's trial storage (else
    its sweep's). Raises Locked (exit 3), StoreMissing or SpecError (exit 2; a model
    the registry lacks is the file's key 'model'), RetuneFailed (exit 1)."""
    stream = stream or sys.stderr
    workdir = Path(workdir).expanduser().resolve()
    client, uri, data, version = _open(spec, workdir, tracking_uri)
    here = workdir / f"retune-{spec.model}" / time.strftime("%Y%m%d-%H%M%S")
    lock = None if dry_run else Lock(client, spec.model, spec.lease_seconds)
    if lock is not None:
        lock.acquire()  # Locked: exit 3
    report = {"model": spec.model, "decision": "failed", "dry_run": dry_run, "forced": force,
              "started": utcnow().isoformat(timespec="seconds")}
    job = _Job(spec, client, uri, data, report, here, workdir, address, stream)
    job.storage = storage
    try:
        job.run(version, dry_run, force)
    except (RegistryError, RetuneFailed) as e:
        report["error"] = str(e)
        _finish_run(client, job.run_id, report, stream)
        if isinstance(e, RegistryError):
            raise fail(spec.source, "model", str(e)) from None
        raise
    except Exception as e:  # noqa: BLE001 - recorded, reported, then exit 1
        report["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        _finish_run(client, job.run_id, report, stream)
        raise RetuneFailed(report["error"] + "; production was not changed") from e
    finally:
        if lock is not None:
            lock.release()
        shutil.rmtree(here / "production", ignore_errors=True)  # the registry keeps it
    _finish_run(client, job.run_id, report, stream)
    here.mkdir(parents=True, exist_ok=True)
    (here / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


class _Job:
    """One job's state between its steps: what it measured, its run, its report."""

    def __init__(self, spec, client, uri, data, report, here, workdir, address, stream):
        self.spec, self.client, self.uri, self.data = spec, client, uri, data
        self.report, self.here, self.workdir = report, here, workdir
        self.address, self.stream = address, stream
        self.run_id: str | None = None
        self.storage: str | None = None  # the search's trial storage (None: its sweep's)

    def run(self, version, dry_run: bool, force: bool) -> None:
        """Measures the triggers, records the job's run, and re-tunes when it must."""
        report = self.report
        prod = fetch(self.uri, self.spec.model, version, self.here / "production")
        report["production_version"] = str(prod.version.version)
        checked = check(self.spec, prod, self.data, address=self.address)
        report.update({k: checked[k] for k in ("stale", "reasons", "triggers", "deployed")})
        self.run_id = _start_run(self.client, self.spec, self.uri, self.workdir, report)
        resting = cooldown(self.spec, prod)
        if not (checked["stale"] or force):
            report["decision"] = "not_stale"
        elif resting and not force:  # kept (or rolled back to) lately: let it be a while
            report["decision"], report["cooldown"] = "kept", resting
        elif dry_run:
            report["decision"] = "would_retune"
        else:
            self.retune(prod)

    def retune(self, prod) -> None:
        """The warm search, the gate, and the promotion if there is one."""
        spec, report = self.spec, self.report
        start = prod.config
        name = f"{spec.model}-retune-{self.here.name}"
        print(f"caviar: {spec.model} v{prod.version.version} is stale ("
              f"{', '.join(report['reasons']) or 'forced'}): a warm-started search of "
              f"{spec.search.budget} trials", file=self.stream, flush=True)
        summary = warm_search(spec, start, self.workdir, self.uri, name, self.address,
                              self.stream, storage=self.storage)
        report["search"] = {"name": name, "trials": summary["trials"],
                            "parent_run_id": summary["mlflow"]["parent_run_id"]}
        best = (summary.get("best") or {}).get("config")
        if not best:
            raise RetuneFailed("the warm-started search finished no trial; production was "
                               "not changed")
        challenger = {p.name: best[p.name] for p in spec.sweep.space.tuned}
        same = all(_same(v, start.get(k)) for k, v in challenger.items())
        configs = {"production": start} if same else {
            "production": start, "challenger": {**start, **challenger}}
        results = gate(spec, self.data, configs, self.stream)
        verdict = decide(spec, results, report["deployed"], same)
        report["gate"] = {k: v for k, v in verdict.items() if k != "decision"}
        report["challenger_config"] = challenger
        if verdict["decision"] in ("promoted", "refreshed"):
            which = "challenger" if verdict["decision"] == "promoted" else "production"
            report["new_version"] = self.deploy(results[which], configs[which],
                                                verdict["decision"])
        else:
            self.client.set_model_version_tag(spec.model, prod.version.version,
                                              "caviar.checked_at", report["started"])
        report["decision"] = verdict["decision"]

    def deploy(self, results: list[dict], config: dict, decision: str) -> str:
        """The winner's best seed exported, registered and made production; its version."""
        from models.serving import export_model

        winner = best_seed(results, self.spec.sweep.metric)
        out = export_model(winner["state"], self.data, self.here / "model", metrics={
            "holdout_loss": winner["holdout_loss"],
            "holdout_accuracy": winner["holdout_accuracy"]})
        version = register(self.client, self.spec, self.run_id, out, winner, config, decision)
        _, new = promote(self.client, self.spec.model, version)
        return new


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return a == b


def _start_run(client, spec: RetuneSpec, uri: str, workdir: Path, report: dict) -> str:
    exp = client.get_experiment_by_name(spec.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        spec.experiment, artifact_location=artifact_root(uri, workdir))
    run = client.create_run(exp_id, run_name=f"retune {report['started']}", tags={
        "caviar.kind": "retune", "caviar.model": spec.model,
        "caviar.production_version": report["production_version"],
        "caviar.dry_run": str(report["dry_run"]).lower()})
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[
        Param("seeds", str(spec.seeds)), Param("margin", str(spec.margin)),
        Param("triggers", ",".join(spec.triggers)),
        Param("search_budget", str(spec.search.budget)),
        Param("data", spec.data.source)])
    return run.info.run_id


def _finish_run(client, run_id: str | None, report: dict, stream) -> None:
    """The decision, reasons and figures on the job's run; the report on stderr."""
    for line in report_lines(report):
        print(line, file=stream, flush=True)
    if run_id is None:
        return
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    tags = {"caviar.decision": report["decision"], "caviar.stale": str(report.get("stale")),
            "caviar.reasons": ",".join(report.get("reasons", [])) or "-"}
    metrics = {}
    for name, t in report.get("triggers", {}).items():
        tags[f"caviar.trigger.{name}"] = "stale" if t["stale"] else "ok"
        for k, v in t.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None \
                    and math.isfinite(v):
                metrics[f"{name}.{k}"] = float(v)
    for k, v in report.get("deployed", {}).items():
        if math.isfinite(v):
            metrics[f"deployed.{k}"] = v
    g = report.get("gate") or {}
    for who in ("production", "challenger"):
        if who in g:
            metrics[f"{who}.mean"] = g[who]["mean"]
            metrics[f"{who}.std"] = g[who]["std"]
    if g.get("p_value") is not None:
        metrics["p_value"] = g["p_value"]
    if report.get("new_version"):
        tags["caviar.new_version"] = report["new_version"]
    if report.get("error"):
        tags["caviar.error"] = report["error"][:4000]
    try:
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()
                                          if math.isfinite(v)],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        client.log_text(run_id, json.dumps(report, indent=1, default=str), "report.json")
        client.set_terminated(run_id, "FAILED" if report["decision"] == "failed" else "FINISHED")
    except Exception as e:  # noqa: BLE001 - the report above stands
        print(f"caviar: could not record the job's run ({type(e).__name__}: {str(e)[:200]})",
              file=stream)
