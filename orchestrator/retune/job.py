"""The re-tune job: is production stale, and if so, is there something really better?

``caviar retune RETUNE.yaml`` (safe to run from cron every night):

1. Takes the model's lock (registry.Lock): a second job for the same model exits 3.
2. Fetches the production version (alias ``production``) and measures the
   triggers it enabled against what the version recorded when it was tuned:
   age (``caviar.tuned_at``, or the last ``caviar.checked_at``), drift (PSI per
   feature and class distance against ``fingerprint.json``), hardware (the GPU
   model and count a trial would get now against the best trial's ``hw.*``), decay
   (its accuracy on today's holdout against the recorded ``metric.test_accuracy``).
   Any one makes it stale; all are reported.
3. When stale (or ``--force``): a coarse-to-fine search whose round 0 is centred on
   the production hyperparameters (they are its first trial), on today's data,
   with a smaller budget than a cold search.
4. The gate: production's and the challenger's hyperparameters are each retrained
   on today's training split with ``seeds`` seeds and scored on today's holdout
   (the test split). ``promoted`` when the challenger's mean is better by at least
   ``margin`` (and a one-sided Welch t-test agrees at 5 % when seeds >= 3);
   ``refreshed`` when not, but production's hyperparameters retrained today beat the
   deployed weights by ``margin``; else ``kept``. A promotion registers the new
   model and moves ``production`` (the old version becomes ``previous``).
5. Every job leaves an MLflow run (``caviar.kind=retune``) and prints a report.

Aliases move last, only when everything before succeeded: a tracking server lost
midway fails the job (exit 1) with production where it was.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from orchestrator.cluster.hardware import hardware_fingerprint, training_hardware
from orchestrator.retune.spec import RetuneSpec
from orchestrator.tracking.registry import Lock, RegistryError, production, promote
from orchestrator.tracking.sink import (
    artifact_root,
    ensure_sqlite_store,
    resolve_uri,
    store_missing,
)

DECISIONS = ("not_stale", "promoted", "refreshed", "kept", "failed")
P_VALUE = 0.05


class RetuneFailed(Exception):
    """The job could not finish (the tracking server went away, training failed)."""


class StoreMissing(Exception):
    """The embedded store named (by --workdir) does not exist: bad input, not a failure."""


@dataclass
class Production:
    version: object  # mlflow ModelVersion
    dir: Path
    meta: dict
    fingerprint: dict | None

    @property
    def tags(self) -> dict:
        return self.version.tags or {}

    @property
    def config(self) -> dict:
        """Its tuned hyperparameters: the model's config and trainer settings."""
        return {**self.meta["model_config"], **self.meta["hparams"]}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def fetch(client, uri: str, name: str, version, dst: Path) -> Production:
    """A version (production's) with its files (weights, model.json, fingerprint.json)."""
    import mlflow

    from models.serving import FINGERPRINT, META

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # cron mail
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version.version}", dst_path=str(dst), tracking_uri=uri))
    if not (local / META).is_file():
        raise RegistryError(f"models:/{name}/{version.version} is not a caviar model (no {META})")
    fp = local / FINGERPRINT
    return Production(version, local, json.loads((local / META).read_text()),
                      json.loads(fp.read_text()) if fp.is_file() else None)


# -- the triggers ----------------------------------------------------------------------------

def deployed_scores(prod: Production, data) -> dict:
    """The deployed weights on today's holdout (its raw rows through its own mean and std)."""
    from models.serving import load_model, predict

    net, meta = load_model(prod.dir)
    x_raw = data.x_test.astype(np.float64) * data.std + data.mean
    _, probs = predict(net, meta, x_raw)
    index = {str(c): i for i, c in enumerate(meta["classes"])}
    y = np.array([index.get(str(data.classes[i]), -1) for i in data.y_test])
    known = y >= 0  # a class the model never saw counts as wrong, and is left out of the loss
    accuracy = float(np.mean(probs.argmax(axis=1) == y)) if len(y) else 0.0
    picked = probs[np.flatnonzero(known), y[known]]
    loss = float(-np.mean(np.log(np.maximum(picked, 1e-12)))) if known.any() else math.inf
    return {"loss": loss, "accuracy": accuracy}


def check(spec: RetuneSpec, prod: Production, data, now: datetime | None = None,
          hardware: dict | None = None, address: str | None = None) -> dict:
    """Every enabled trigger with its figures: ``{"stale": bool, "reasons": [...],
    "triggers": {name: {"stale": bool, ...}}, "deployed": {...}}``."""
    from models.fingerprint import drift, raw_rows

    now = now or utcnow()
    tags = prod.tags
    out: dict = {}
    if "age" in spec.triggers:
        tuned = _parse_time(tags.get("caviar.tuned_at")) or datetime.fromtimestamp(
            prod.version.creation_timestamp / 1000, timezone.utc)
        checked = _parse_time(tags.get("caviar.checked_at"))
        since = max(tuned, checked) if checked else tuned
        days = (now - since).total_seconds() / 86400
        out["age"] = {"stale": days > spec.max_age_days, "days": round(days, 2),
                      "max_age_days": spec.max_age_days, "since": since.isoformat()}
    if "drift" in spec.triggers:
        if prod.fingerprint is None:
            out["drift"] = {"stale": False, "note": "the version has no fingerprint.json"}
        else:
            x, y = raw_rows(data)
            d = drift(prod.fingerprint, x, y, list(data.classes))
            over = sorted(k for k, v in d["psi"].items() if v > spec.drift["psi"])
            share = len(over) / max(len(d["psi"]), 1)
            out["drift"] = {
                "stale": share > spec.drift["share"]
                or d["class_distance"] > spec.drift["classes"] or bool(d["new_classes"]),
                "share": round(share, 4), "features_over": over[:20],
                "max_psi": max(d["psi"].values(), default=0.0),
                "class_distance": d["class_distance"], "new_classes": d["new_classes"],
                "psi_threshold": spec.drift["psi"], "share_threshold": spec.drift["share"]}
    if "hardware" in spec.triggers:
        res = spec.sweep.resources
        hw = hardware or training_hardware(res["cpu"], res["gpu"], address)
        then = {k: tags.get(f"hw.{k}") for k in ("gpu_model", "gpu_count")}
        if then["gpu_count"] is None:
            out["hardware"] = {"stale": False, "note": "the version records no hardware"}
        else:
            now_hw = {"gpu_model": str(hw["gpu_model"]), "gpu_count": str(hw["gpu_count"])}
            out["hardware"] = {"stale": now_hw != {k: str(v or "") for k, v in then.items()},
                               "then": then, "now": now_hw}
    deployed = deployed_scores(prod, data)
    if "decay" in spec.triggers:
        recorded = tags.get("metric.test_accuracy") or tags.get("metric.val_accuracy")
        recorded = float(recorded) if recorded else None
        low = spec.decay["min_metric"] is not None and \
            deployed["accuracy"] < spec.decay["min_metric"]
        drop = recorded is not None and recorded - deployed["accuracy"] > spec.decay["max_drop"]
        out["decay"] = {"stale": bool(low or drop), "accuracy": round(deployed["accuracy"], 4),
                        "recorded": recorded, "min_metric": spec.decay["min_metric"],
                        "max_drop": spec.decay["max_drop"]}
    reasons = [name for name, t in out.items() if t["stale"]]
    return {"stale": bool(reasons), "reasons": reasons, "triggers": out, "deployed": deployed}


def cooldown(spec: RetuneSpec, prod: Production, now: datetime | None = None) -> dict | None:
    """``{"checked_at", "until"}`` while a recent check that kept this version (or a
    rollback to it) holds off the next re-tune; else None."""
    checked = _parse_time(prod.tags.get("caviar.checked_at"))
    if checked is None or spec.cooldown_days <= 0:
        return None
    until = checked + timedelta(days=spec.cooldown_days)
    if (now or utcnow()) >= until:
        return None
    return {"checked_at": checked.isoformat(), "until": until.isoformat(timespec="seconds")}


# -- the warm-started search and the gate ------------------------------------------------------

def warm_search(spec: RetuneSpec, start: dict, workdir: Path, uri: str, name: str,
                address: str | None, stream) -> dict:
    """Coarse to fine from production's hyperparameters, on today's data; its summary."""
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import parse_sweep

    sweep = spec.sweep
    tuned = {p.name for p in sweep.space.tuned}
    raw = {"name": name, "data": spec.data.to_dict(), "model": dict(sweep.model),
           "space": sweep.space.to_dict()["parameters"], "epochs": sweep.epochs,
           "strategy": {"kind": "coarse_to_fine", "rounds": spec.search["rounds"],
                        "trials_per_round": spec.search["trials_per_round"],
                        "keep": spec.search["keep"], "margin": spec.search["margin"],
                        "start": {k: v for k, v in start.items() if k in tuned},
                        "width": spec.search["width"]},
           "scheduler": dict(sweep.scheduler), "metric": dict(sweep.metric),
           "resources": dict(sweep.resources), "seed": sweep.seed,
           "tracking": {"experiment": spec.experiment, "uri": uri}}
    if raw["scheduler"]["kind"] == "pbt":
        raw["scheduler"] = {"kind": "asha"}  # pbt takes no search algorithm; warm start needs one
    path = workdir / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return run_sweep(parse_sweep(raw, str(path), sweep.base_dir), workdir, address=address,
                     tracking_uri=uri, stream=stream)


def _gate_fit(data, config: dict, epochs: int, seed: int, metric: str) -> dict:
    """One retrain on today's training split, scored on the holdout (Ray task or inline)."""
    import torch

    from models.config import split_config
    from models.train import evaluate, fit

    model_config, hparams = split_config(config)
    last = {}  # the TrainingRun, for its final state
    result = fit(data, model_config, hparams, epochs=epochs, seed=seed, num_threads=1,
                 callback=lambda metrics, run: last.update(run=run) and None)
    loss, acc = evaluate(result.model, torch.as_tensor(data.x_test),
                         torch.as_tensor(data.y_test))
    val = result.metrics.get(metric)
    return {"seed": seed, "status": result.status, "holdout_loss": loss,
            "holdout_accuracy": acc, "val": val if val is not None else math.nan,
            "state": last["run"].state_dict() if last else None,
            "hardware": dict(hardware_fingerprint())}  # where it trained: the new hw.* tags


def holdout_key(metric: str) -> str:
    return "holdout_accuracy" if metric == "val_accuracy" else "holdout_loss"


def gate(spec: RetuneSpec, data, configs: dict[str, dict], stream) -> dict:
    """Each named configuration retrained ``seeds`` times; ``{name: [fit results]}``."""
    import ray

    sweep = spec.sweep
    metric = sweep.metric["name"]
    seeds = [sweep.seed * 1000 + 7919 * (i + 1) for i in range(spec.seeds)]
    jobs = {name: [(config, s) for s in seeds] for name, config in configs.items()}
    print(f"caviar: gate: {len(configs)} configuration(s) x {spec.seeds} seeds on today's data "
          f"({sweep.epochs} epochs each)", file=stream, flush=True)
    if ray.is_initialized():
        remote = ray.remote(num_cpus=sweep.resources["cpu"],
                            num_gpus=sweep.resources["gpu"])(_gate_fit)
        ref = ray.put(data)
        futures = {name: [remote.remote(ref, {**sweep.model, **c}, sweep.epochs, s, metric)
                          for c, s in js] for name, js in jobs.items()}
        return {name: ray.get(fs) for name, fs in futures.items()}
    return {name: [_gate_fit(data, {**sweep.model, **c}, sweep.epochs, s, metric)
                   for c, s in js] for name, js in jobs.items()}


def _stats(results: list[dict], key: str) -> dict:
    values = [r[key] for r in results]
    finite = [v for v in values if math.isfinite(v)]
    mean = float(np.mean(finite)) if len(finite) == len(values) and values else math.inf
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def welch_p(better: list[float], worse: list[float], mode: str) -> float:
    """One-sided Welch t-test p-value that ``better`` is better than ``worse``."""
    from scipy import stats

    a, b = np.asarray(better), np.asarray(worse)
    if np.std(a) == 0 and np.std(b) == 0:  # no spread at all: the means decide
        return 0.0 if (a.mean() < b.mean() if mode == "min" else a.mean() > b.mean()) else 1.0
    alternative = "less" if mode == "min" else "greater"
    return float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def decide(spec: RetuneSpec, results: dict, deployed: dict, same: bool) -> dict:
    """The gate's decision and the figures behind it."""
    metric, mode = spec.sweep.metric["name"], spec.sweep.metric["mode"]
    key = holdout_key(metric)
    deployed_score = deployed["accuracy" if key == "holdout_accuracy" else "loss"]
    sign = 1.0 if mode == "min" else -1.0

    def beats(a: float, b: float) -> bool:  # a better than b by at least the margin
        return sign * (b - a) >= spec.margin and math.isfinite(a)

    prod = _stats(results["production"], key)
    out = {"metric": key, "margin": spec.margin, "production": prod,
           "deployed": deployed_score, "p_value": None}
    if not same:
        chal = _stats(results["challenger"], key)
        out["challenger"] = chal
        if beats(chal["mean"], prod["mean"]):
            if spec.seeds >= 3:
                out["p_value"] = welch_p(chal["values"], prod["values"], mode)
                if out["p_value"] < P_VALUE:
                    return {**out, "decision": "promoted"}
            else:
                return {**out, "decision": "promoted"}
    if beats(prod["mean"], deployed_score):
        return {**out, "decision": "refreshed"}
    return {**out, "decision": "kept"}


def _best_seed(results: list[dict], key: str, mode: str) -> dict:
    ok = [r for r in results if r["state"] is not None and math.isfinite(r["val"])]
    sign = 1.0 if mode == "min" else -1.0
    # chosen on the validation split; the holdout only scores it
    return min(ok or results, key=lambda r: sign * r["val"])


# -- the job -----------------------------------------------------------------------------------

def _hp_tags(config: dict) -> dict:
    return {f"hp.{k}": str(v) for k, v in config.items()}


def register(client, spec: RetuneSpec, run_id: str, model_dir: Path, winner: dict,
             config: dict, decision: str) -> str:
    """The winning retrain as a new version of the model (its run's ``model/``)."""
    client.log_artifacts(run_id, str(model_dir), "model")
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    tags = {"caviar.kind": "retune", "caviar.decision": decision,
            "caviar.tuned_at": utcnow().isoformat(timespec="seconds"),
            "metric.test_accuracy": str(winner["holdout_accuracy"]),
            "metric.test_loss": str(winner["holdout_loss"]),
            **_hp_tags(config),
            **{f"hw.{k}": str(v) for k, v in winner["hardware"].items()}}
    return str(client.create_model_version(spec.model, source, run_id=run_id,
                                           tags=tags).version)


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


def run_retune(spec: RetuneSpec, workdir: str | Path = "./caviar-runs", *,
               tracking_uri: str | None = None, address: str | None = None,
               dry_run: bool = False, force: bool = False, stream=None) -> dict:
    """Runs the job; returns its report. Raises Locked (exit 3), RegistryError or
    SpecError (exit 2), RetuneFailed (exit 1)."""
    from mlflow import MlflowClient

    from models.data import load as load_data

    stream = stream or sys.stderr
    workdir = Path(workdir).expanduser().resolve()
    uri = resolve_uri(tracking_uri, spec.tracking.get("uri") or spec.sweep.tracking.get("uri"),
                      workdir)
    if store_missing(uri):
        raise StoreMissing(f"no MLflow store at {uri} (so no model {spec.model!r}): pass "
                           "--tracking-uri, or the --workdir of the sweep that registered it")
    data = load_data(spec.data, spec.data_base)  # bad data is bad input: before the lock
    ensure_sqlite_store(uri)
    client = MlflowClient(uri, registry_uri=uri)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    here = workdir / f"retune-{spec.model}" / stamp
    try:
        version = production(client, spec.model)  # unknown model, none: bad input, exit 2
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001 - the tracking server is not answering
        raise RetuneFailed(f"MLflow at {uri} is not answering ({type(e).__name__}: "
                           f"{str(e)[:300]}); nothing was changed") from None
    lock = None if dry_run else Lock(client, spec.model, spec.lease_seconds)
    if lock is not None:
        lock.acquire()  # Locked: exit 3
    report = {"model": spec.model, "decision": "failed", "dry_run": dry_run, "forced": force,
              "started": utcnow().isoformat(timespec="seconds")}
    run_id = None
    try:
        prod = fetch(client, uri, spec.model, version, here / "production")
        report["production_version"] = str(prod.version.version)
        checked = check(spec, prod, data, address=address)
        report.update({"stale": checked["stale"], "reasons": checked["reasons"],
                       "triggers": checked["triggers"], "deployed": checked["deployed"]})
        run_id = _start_run(client, spec, uri, workdir, report)
        resting = cooldown(spec, prod)
        if not (checked["stale"] or force):
            report["decision"] = "not_stale"
        elif resting and not force:  # kept (or rolled back to) lately: let it be a while
            report["decision"], report["cooldown"] = "kept", resting
        elif dry_run:
            report["decision"] = "would_retune"
        else:
            _retune(spec, client, prod, data, report, run_id, here, workdir, uri, address,
                    stream)
    except (RegistryError, RetuneFailed) as e:
        report["error"] = str(e)
        _finish_run(client, run_id, report, stream)
        raise
    except Exception as e:  # noqa: BLE001 - recorded, reported, then exit 1
        report["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        _finish_run(client, run_id, report, stream)
        raise RetuneFailed(report["error"] + "; production was not changed") from e
    finally:
        if lock is not None:
            lock.release()
        shutil.rmtree(here / "production", ignore_errors=True)  # the registry keeps it
    _finish_run(client, run_id, report, stream)
    here.mkdir(parents=True, exist_ok=True)
    (here / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _retune(spec, client, prod, data, report, run_id, here, workdir, uri, address, stream):
    """The warm search, the gate, and the promotion if there is one."""
    from models.serving import export_model

    start = prod.config
    name = f"{spec.model}-retune-{here.name}"
    print(f"caviar: {spec.model} v{prod.version.version} is stale ("
          f"{', '.join(report['reasons']) or 'forced'}): a warm-started search of "
          f"{spec.search['rounds'] * spec.search['trials_per_round']} trials", file=stream,
          flush=True)
    summary = warm_search(spec, start, workdir, uri, name, address, stream)
    report["search"] = {"name": name, "trials": summary["trials"],
                        "parent_run_id": summary["mlflow"]["parent_run_id"]}
    best = (summary.get("best") or {}).get("config")
    if not best:
        raise RetuneFailed("the warm-started search finished no trial; production was not "
                           "changed")
    tuned = [p.name for p in spec.sweep.space.tuned]
    challenger = {k: best[k] for k in tuned}
    current = {k: start[k] for k in tuned if k in start}
    same = all(_same(challenger[k], current.get(k)) for k in tuned)
    configs = {"production": start} if same else {"production": start,
                                                    "challenger": {**start, **challenger}}
    results = gate(spec, data, configs, stream)
    verdict = decide(spec, results, report["deployed"], same)
    report["gate"] = {k: v for k, v in verdict.items() if k != "decision"}
    report["challenger_config"] = challenger
    decision = verdict["decision"]
    if decision in ("promoted", "refreshed"):
        which = "challenger" if decision == "promoted" else "production"
        winner = _best_seed(results[which], verdict["metric"], spec.sweep.metric["mode"])
        out = export_model(winner["state"], data, here / "model", metrics={
            "holdout_loss": winner["holdout_loss"],
            "holdout_accuracy": winner["holdout_accuracy"]})
        config = configs[which]
        version = register(client, spec, run_id, out, winner, config, decision)
        old, new = promote(client, spec.model, version)
        report["new_version"] = new
    else:
        client.set_model_version_tag(spec.model, prod.version.version, "caviar.checked_at",
                                     report["started"])
    report["decision"] = decision


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
        Param("search_budget", str(spec.search["rounds"] * spec.search["trials_per_round"])),
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
