"""Is production stale? Each trigger measured against what the version recorded at tuning.

- age: days since ``caviar.tuned_at`` (or the last ``caviar.checked_at``).
- drift: PSI per feature and the classes' distance against ``fingerprint.json``.
- hardware: the GPU model and count a trial would get now against the best trial's
  ``hw.*``.
- decay: the deployed weights' accuracy on today's holdout against
  ``metric.test_accuracy``.

Any one makes it stale; all are reported with their figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from orchestrator.cluster.hardware import training_hardware
from orchestrator.retune.spec import RetuneSpec
from orchestrator.tracking.registry import RegistryError, download_model


@dataclass
class Production:
    """The production version with its files (weights, model.json, fingerprint.json)."""

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


def parse_time(text: str | None) -> datetime | None:
    """An ISO time from a tag (UTC when it names no zone); None when absent or bad."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def fetch(uri: str, name: str, version, dst: Path) -> Production:
    """A version (production's) with its files, downloaded into ``dst``."""
    from models.serving import FINGERPRINT, META

    local = download_model(uri, f"models:/{name}/{version.version}", dst)
    if not (local / META).is_file():
        raise RegistryError(f"models:/{name}/{version.version} is not a caviar model (no {META})")
    fp = local / FINGERPRINT
    return Production(version, local, json.loads((local / META).read_text()),
                      json.loads(fp.read_text()) if fp.is_file() else None)


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


def age(spec: RetuneSpec, prod: Production, now: datetime) -> dict:
    tags = prod.tags
    tuned = parse_time(tags.get("caviar.tuned_at")) or datetime.fromtimestamp(
        prod.version.creation_timestamp / 1000, timezone.utc)
    checked = parse_time(tags.get("caviar.checked_at"))
    since = max(tuned, checked) if checked else tuned
    days = (now - since).total_seconds() / 86400
    return {"stale": days > spec.max_age_days, "days": round(days, 2),
            "max_age_days": spec.max_age_days, "since": since.isoformat()}


def drift(spec: RetuneSpec, prod: Production, data) -> dict:
    from models.fingerprint import drift as measure
    from models.fingerprint import raw_rows

    if prod.fingerprint is None:
        return {"stale": False, "note": "the version has no fingerprint.json"}
    x, y = raw_rows(data)
    d = measure(prod.fingerprint, x, y, list(data.classes))
    over = sorted(k for k, v in d["psi"].items() if v > spec.drift.psi)
    share = len(over) / max(len(d["psi"]), 1)
    return {"stale": share > spec.drift.share or d["class_distance"] > spec.drift.classes
            or bool(d["new_classes"]),
            "share": round(share, 4), "features_over": over[:20],
            "max_psi": max(d["psi"].values(), default=0.0),
            "class_distance": d["class_distance"], "new_classes": d["new_classes"],
            "psi_threshold": spec.drift.psi, "share_threshold": spec.drift.share}


def hardware(spec: RetuneSpec, prod: Production, hw: dict | None, address: str | None) -> dict:
    res = spec.sweep.resources
    hw = hw or training_hardware(res.cpu, res.gpu, address)
    then = {k: prod.tags.get(f"hw.{k}") for k in ("gpu_model", "gpu_count")}
    if then["gpu_count"] is None:
        return {"stale": False, "note": "the version records no hardware"}
    now_hw = {"gpu_model": str(hw["gpu_model"]), "gpu_count": str(hw["gpu_count"])}
    return {"stale": now_hw != {k: str(v or "") for k, v in then.items()},
            "then": then, "now": now_hw}


def decay(spec: RetuneSpec, prod: Production, deployed: dict) -> dict:
    recorded = prod.tags.get("metric.test_accuracy") or prod.tags.get("metric.val_accuracy")
    recorded = float(recorded) if recorded else None
    low = spec.decay.min_metric is not None and deployed["accuracy"] < spec.decay.min_metric
    drop = recorded is not None and recorded - deployed["accuracy"] > spec.decay.max_drop
    return {"stale": bool(low or drop), "accuracy": round(deployed["accuracy"], 4),
            "recorded": recorded, "min_metric": spec.decay.min_metric,
            "max_drop": spec.decay.max_drop}


def check(spec: RetuneSpec, prod: Production, data, now: datetime | None = None,
          hw: dict | None = None, address: str | None = None) -> dict:
    """Every enabled trigger with its figures: ``{"stale": bool, "reasons": [...],
    "triggers": {name: {"stale": bool, ...}}, "deployed": {...}}``."""
    out: dict = {}
    if "age" in spec.triggers:
        out["age"] = age(spec, prod, now or utcnow())
    if "drift" in spec.triggers:
        out["drift"] = drift(spec, prod, data)
    if "hardware" in spec.triggers:
        out["hardware"] = hardware(spec, prod, hw, address)
    deployed = deployed_scores(prod, data)
    if "decay" in spec.triggers:
        out["decay"] = decay(spec, prod, deployed)
    reasons = [name for name, t in out.items() if t["stale"]]
    return {"stale": bool(reasons), "reasons": reasons, "triggers": out, "deployed": deployed}


def cooldown(spec: RetuneSpec, prod: Production, now: datetime | None = None) -> dict | None:
    """``{"checked_at", "until"}`` while a recent check that kept this version (or a
    rollback to it) holds off the next re-tune; else None."""
    checked = parse_time(prod.tags.get("caviar.checked_at"))
    if checked is None or spec.cooldown_days <= 0:
        return None
    until = checked + timedelta(days=spec.cooldown_days)
    if (now or utcnow()) >= until:
        return None
    return {"checked_at": checked.isoformat(), "until": until.isoformat(timespec="seconds")}
