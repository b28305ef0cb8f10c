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
rule, and nothing runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from models.data import DataError, DataSpec
from orchestrator.sweep.spec import (
    SweepSpec,
    _fail,
    _number,
    _section,
    _unknown,
    _whole,
    load_sweep,
)
from searchspaces import SpecError
from searchspaces.yamlio import load_mapping

TRIGGERS = ("age", "drift", "hardware", "decay")
TOP_KEYS = ("model", "sweep", "data", "triggers", "max_age_days", "drift", "decay", "search",
            "seeds", "margin", "cooldown_days", "tracking", "lock", "description")
DRIFT_KEYS = ("psi", "share", "classes")
DECAY_KEYS = ("min_metric", "max_drop")
SEARCH_KEYS = ("rounds", "trials_per_round", "width", "keep", "margin")
LOCK_KEYS = ("lease_seconds",)


@dataclass(frozen=True)
class RetuneSpec:
    model: str
    source: str
    sweep: SweepSpec
    data: DataSpec
    triggers: tuple[str, ...]
    max_age_days: float
    drift: dict
    decay: dict
    search: dict
    seeds: int
    margin: float
    tracking: dict = field(default_factory=dict)
    lease_seconds: float = 600.0
    cooldown_days: float = 7.0
    data_base: str = "."  # where a relative data path is looked for after the cwd

    @property
    def experiment(self) -> str:
        return self.tracking.get("experiment") or f"{self.model}-retune"


def _keys(source: str, section: str, d: dict, allowed) -> None:
    for key in d:
        if key not in allowed:
            raise _unknown(source, section, key, allowed)


def parse_retune(raw: dict, source: str, base_dir: str | Path = ".") -> RetuneSpec:
    base = Path(base_dir)
    _keys(source, "", raw, TOP_KEYS)
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise _fail(source, "model", f"must name a registered model, got {model!r}")
    sweep_path = raw.get("sweep")
    if not isinstance(sweep_path, str) or not sweep_path:
        raise _fail(source, "sweep", "must be the path of the sweep file that tuned the model "
                    f"(its space, net, epochs and metric), got {sweep_path!r}")
    # the re-tune file's folder first: cron's working directory is anybody's guess
    found = base / sweep_path if (base / sweep_path).exists() else Path(sweep_path)
    if not found.exists():
        raise _fail(source, "sweep", f"no such file {sweep_path!r} (looked in {base} and in "
                    "the working directory)")
    sweep = load_sweep(found)

    data, data_base = sweep.data, sweep.base_dir
    if raw.get("data") is not None:
        data_base = str(base)
        try:
            data = DataSpec.from_dict(_section(raw, "data", source), where="data")
        except DataError as e:
            raise SpecError(source, "", str(e)) from None

    triggers = raw.get("triggers", list(TRIGGERS))
    if not isinstance(triggers, list) or not triggers:
        raise _fail(source, "triggers", f"must be a list of {', '.join(TRIGGERS)}, got "
                    f"{triggers!r}")
    for t in triggers:
        if t not in TRIGGERS:
            raise _unknown(source, "triggers", t, TRIGGERS)

    max_age = _number(source, "max_age_days", raw.get("max_age_days", 90), 0, math.inf,
                      low_open=True)

    drift = _section(raw, "drift", source)
    _keys(source, "drift", drift, DRIFT_KEYS)
    drift = {"psi": _number(source, "drift.psi", drift.get("psi", 0.25), 0, math.inf,
                            low_open=True),
             "share": _number(source, "drift.share", drift.get("share", 0.25), 0, 1),
             "classes": _number(source, "drift.classes", drift.get("classes", 0.1), 0, 1)}

    decay = _section(raw, "decay", source)
    _keys(source, "decay", decay, DECAY_KEYS)
    min_metric = decay.get("min_metric")
    decay = {"min_metric": None if min_metric is None else _number(
                 source, "decay.min_metric", min_metric, 0, 1),
             "max_drop": _number(source, "decay.max_drop", decay.get("max_drop", 0.05), 0, 1)}

    budget = _cold_budget(sweep)
    search = _section(raw, "search", source)
    _keys(source, "search", search, SEARCH_KEYS)
    search = {
        "rounds": _whole(source, "search.rounds", search.get("rounds", 2)),
        "trials_per_round": _whole(source, "search.trials_per_round", search.get(
            "trials_per_round", max(1, budget // 4))),
        "width": _number(source, "search.width", search.get("width", 0.2), 0, 1,
                         low_open=True),
        "keep": _number(source, "search.keep", search.get("keep", 0.25), 0, 1, low_open=True),
        "margin": _number(source, "search.margin", search.get("margin", 0.05), 0, 1),
    }

    seeds = _whole(source, "seeds", raw.get("seeds", 3))
    margin = raw.get("margin", 0.005)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or margin < 0 \
            or not math.isfinite(margin):
        raise _fail(source, "margin", "must be a number >= 0 (how much better, in the sweep's "
                    f"metric {sweep.metric['name']}, the challenger must be), got {margin!r}")

    tracking = _section(raw, "tracking", source)
    _keys(source, "tracking", tracking, ("uri", "experiment"))
    lock = _section(raw, "lock", source)
    _keys(source, "lock", lock, LOCK_KEYS)
    lease = _number(source, "lock.lease_seconds", lock.get("lease_seconds", 600), 10, math.inf)
    cooldown = _number(source, "cooldown_days", raw.get("cooldown_days", 7), 0, math.inf)
    return RetuneSpec(model=model, source=source, sweep=sweep, data=data,
                      triggers=tuple(triggers), max_age_days=max_age, drift=drift, decay=decay,
                      search=search, seeds=seeds, margin=float(margin), tracking=tracking,
                      lease_seconds=lease, cooldown_days=cooldown, data_base=data_base)


def _cold_budget(sweep: SweepSpec) -> int:
    s = sweep.strategy
    if s["kind"] == "coarse_to_fine":
        return s["rounds"] * s["trials_per_round"]
    if s["kind"] == "grid":
        return s["points"] ** max(1, len(sweep.space.tuned))
    return s["trials"]


def load_retune(path: str | Path) -> RetuneSpec:
    return parse_retune(load_mapping(path), str(path), Path(path).resolve().parent)
