"""The re-tune job's file (``RETUNE.yaml``): what to watch and when to act.

```yaml
model: digits-classifier       # the registered model; its `production` version is watched
sweep: digits.yaml             # the sweep that tuned it (beside this file, else the cwd)
data: {source: npz, path: today.npz}   # today's data (default: the sweep's data)
triggers: [age, drift, hardware, decay]  # which make it stale (default: all four)
max_age_days: 90
drift: {psi: 0.25, share: 0.25, classes: 0.1}
decay: {max_drop: 0.05}        # and/or min_metric: 0.9 (holdout accuracy)
search: {rounds: 2, trials_per_round: 6, width: 0.2}   # the warm-started search
seeds: 3                       # retrains per configuration in the gate
margin: 0.005                  # how much better on the holdout (loss, or accuracy) is "better"
cooldown_days: 7               # after a check that kept production, wait before re-tuning
tracking: {uri: ..., experiment: digits-classifier-retune}
lock: {lease_seconds: 600}
```

Checked at load, like every caviar file: an error names the file, the key and the
rule, and nothing runs. Each section becomes a frozen dataclass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.data import DataSpec
from orchestrator.fields import fail, number, only_keys, section, unknown, whole
from orchestrator.sweep.spec import SweepSpec, Tracking, load_sweep, parse_data, parse_tracking
from searchspaces.yamlio import load_mapping

TRIGGERS = ("age", "drift", "hardware", "decay")
TOP_KEYS = ("model", "sweep", "data", "triggers", "max_age_days", "drift", "decay", "search",
            "seeds", "margin", "cooldown_days", "tracking", "lock", "description")


@dataclass(frozen=True)
class Drift:
    """``drift:``: stale when more than ``share`` of the features moved by PSI > ``psi``,
    or the classes' total variation distance exceeds ``classes`` (or a new class came)."""

    psi: float = 0.25
    share: float = 0.25
    classes: float = 0.1


@dataclass(frozen=True)
class Decay:
    """``decay:``: stale when the deployed weights' holdout accuracy fell by more than
    ``max_drop`` from what was recorded, or below ``min_metric``."""

    min_metric: float | None = None
    max_drop: float = 0.05


@dataclass(frozen=True)
class Search:
    """``search:``: the warm-started coarse-to-fine search (its round 0 centred on
    production's hyperparameters, ``width`` wide in unit space)."""

    rounds: int = 2
    trials_per_round: int = 1  # default: a quarter of the cold sweep's budget
    width: float = 0.2
    keep: float = 0.25
    margin: float = 0.05

    @property
    def budget(self) -> int:
        return self.rounds * self.trials_per_round


@dataclass(frozen=True)
class RetuneSpec:
    model: str
    source: str
    sweep: SweepSpec
    data: DataSpec
    triggers: tuple[str, ...]
    max_age_days: float
    drift: Drift
    decay: Decay
    search: Search
    seeds: int
    margin: float
    tracking: Tracking = field(default_factory=Tracking)
    lease_seconds: float = 600.0
    cooldown_days: float = 7.0
    data_base: str = "."  # where a relative data path is looked for after the cwd

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or f"{self.model}-retune"


def _model(raw: Mapping, source: str) -> str:
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise fail(source, "model", f"must name a registered model, got {model!r}")
    return model


def _sweep(raw: Mapping, source: str, base: Path) -> SweepSpec:
    path = raw.get("sweep")
    if not isinstance(path, str) or not path:
        raise fail(source, "sweep", "must be the path of the sweep file that tuned the model "
                   f"(its space, net, epochs and metric), got {path!r}")
    # the re-tune file's folder first: cron's working directory is anybody's guess
    found = base / path if (base / path).exists() else Path(path)
    if not found.exists():
        raise fail(source, "sweep", f"no such file {path!r} (looked in {base} and in the "
                   "working directory)")
    return load_sweep(found)


def _triggers(raw: Mapping, source: str) -> tuple[str, ...]:
    triggers = raw.get("triggers", list(TRIGGERS))
    if not isinstance(triggers, list) or not triggers:
        raise fail(source, "triggers", f"must be a list of {', '.join(TRIGGERS)}, got "
                   f"{triggers!r}")
    for t in triggers:
        if t not in TRIGGERS:
            raise unknown(source, "triggers", t, TRIGGERS)
    return tuple(triggers)


def _drift(raw: Mapping, source: str) -> Drift:
    d = section(raw, "drift", source)
    only_keys(source, "drift", d, ("psi", "share", "classes"))
    return Drift(psi=number(source, "drift.psi", d.get("psi", 0.25), 0, math.inf, low_open=True),
                 share=number(source, "drift.share", d.get("share", 0.25), 0, 1),
                 classes=number(source, "drift.classes", d.get("classes", 0.1), 0, 1))


def _decay(raw: Mapping, source: str) -> Decay:
    d = section(raw, "decay", source)
    only_keys(source, "decay", d, ("min_metric", "max_drop"))
    low = d.get("min_metric")
    return Decay(min_metric=None if low is None else number(source, "decay.min_metric", low, 0, 1),
                 max_drop=number(source, "decay.max_drop", d.get("max_drop", 0.05), 0, 1))


def _search(raw: Mapping, source: str, cold_budget: int) -> Search:
    s = section(raw, "search", source)
    only_keys(source, "search", s, ("rounds", "trials_per_round", "width", "keep", "margin"))
    return Search(
        rounds=whole(source, "search.rounds", s.get("rounds", 2)),
        trials_per_round=whole(source, "search.trials_per_round",
                               s.get("trials_per_round", max(1, cold_budget // 4))),
        width=number(source, "search.width", s.get("width", 0.2), 0, 1, low_open=True),
        keep=number(source, "search.keep", s.get("keep", 0.25), 0, 1, low_open=True),
        margin=number(source, "search.margin", s.get("margin", 0.05), 0, 1))


def _margin(raw: Mapping, source: str, sweep: SweepSpec) -> float:
    margin = raw.get("margin", 0.005)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0 \
            or not math.isfinite(margin):
        raise fail(source, "margin", "must be a number >= 0 (how much better, in the sweep's "
                   f"metric {sweep.metric.name}, the challenger must be), got {margin!r}")
    return float(margin)


def parse_retune(raw: Mapping, source: str, base_dir: str | Path = ".") -> RetuneSpec:
    """Checks a re-tune mapping whole, section by section; returns the frozen RetuneSpec.

    Raises:
        SpecError: the first rule the file (or the sweep file it names) breaks.
    """
    base = Path(base_dir)
    only_keys(source, "", raw, TOP_KEYS)
    model = _model(raw, source)
    sweep = _sweep(raw, source, base)
    data, data_base = sweep.data, sweep.base_dir
    if raw.get("data") is not None:
        data, data_base = parse_data(raw, source), str(base)
    triggers = _triggers(raw, source)
    max_age = number(source, "max_age_days", raw.get("max_age_days", 90), 0, math.inf,
                     low_open=True)
    drift, decay, search = _drift(raw, source), _decay(raw, source), _search(
        raw, source, sweep.budget)
    seeds = whole(source, "seeds", raw.get("seeds", 3))
    margin = _margin(raw, source, sweep)
    tracking = parse_tracking(raw, source, allowed=("uri", "experiment"))
    lock = section(raw, "lock", source)
    only_keys(source, "lock", lock, ("lease_seconds",))
    lease = number(source, "lock.lease_seconds", lock.get("lease_seconds", 600), 10, math.inf)
    cooldown = number(source, "cooldown_days", raw.get("cooldown_days", 7), 0, math.inf)
    return RetuneSpec(model=model, source=source, sweep=sweep, data=data, triggers=triggers,
                      max_age_days=max_age, drift=drift, decay=decay, search=search,
                      seeds=seeds, margin=margin, tracking=tracking, lease_seconds=lease,
                      cooldown_days=cooldown, data_base=data_base)


def load_retune(path: str | Path) -> RetuneSpec:
    return parse_retune(load_mapping(path), str(path), Path(path).resolve().parent)
