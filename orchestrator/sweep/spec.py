"""The sweep file (SWEEP.yaml): read once, checked whole, frozen.

::

    name: digits-c2f
    data: {source: digits}
    model: {kind: mlp, batch_norm: true, activation: relu}
    space: searchspaces/course.yaml   # a path, a built-in name, or the parameters inline
    strategy: {kind: coarse_to_fine, rounds: 3, trials_per_round: 16, keep: 0.25, margin: 0.1}
    scheduler: {kind: asha, grace_epochs: 2}
    epochs: 20
    metric: {name: val_loss, mode: min}
    resources: {cpu: 1, gpu: 0, concurrency: 2}
    seed: 0
    register: {name: digits-classifier}

Every error is a SpecError naming the file, the key, the rule and the bad value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.config import MODEL_KEYS, RULES
from models.data import DataError, DataSpec
from searchspaces import SearchSpace, SpecError
from searchspaces.yamlio import load_mapping

BUILTIN_SPACES = Path(__file__).resolve().parents[2] / "searchspaces"

TOP_KEYS = ("name", "description", "data", "model", "space", "strategy", "scheduler", "epochs",
            "metric", "resources", "seed", "register", "tracking")
# What the trainer reports each epoch, and which way is better.
METRICS = {"val_loss": "min", "val_accuracy": "max", "train_loss": "min"}
STRATEGY_KEYS = {
    "random": ("trials",),
    "quasi_random": ("trials",),
    "grid": ("points",),
    "tpe": ("trials",),
    "coarse_to_fine": ("rounds", "trials_per_round", "keep", "margin", "sampler", "start",
                       "width"),
}
SCHEDULER_KEYS = {
    "fifo": (),
    "asha": ("grace_epochs", "reduction_factor"),
    "pbt": ("perturbation_interval", "hyperparameters", "quantile_fraction"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file. ``space`` is loaded; ``model`` holds the net's fixed settings."""

    name: str
    source: str
    data: DataSpec
    model: dict
    space: SearchSpace
    strategy: dict
    scheduler: dict
    epochs: int
    metric: dict
    resources: dict
    seed: int
    register: dict | None = None
    tracking: dict = field(default_factory=dict)
    base_dir: str = "."  # the sweep file's folder, where relative paths are also looked for

    def trial_config(self, overrides: Mapping | None = None) -> dict:
        """The net's fixed settings, then the space's centre, then ``overrides``."""
        config = dict(self.model)
        config.update(self.space.centre())
        config.update(overrides or {})
        return config


def _fail(source: str, key: str, message: str) -> SpecError:
    return SpecError(source, f"key {key!r}" if key else "", message)


def _unknown(source: str, section: str, key: object, allowed) -> SpecError:
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    dotted = f"{section}.{key}" if section else str(key)
    return _fail(source, dotted, f"unknown key{hint}; allowed keys are " + ", ".join(allowed))


def _section(raw: Mapping, key: str, source: str, default: dict | None = None) -> dict:
    value = raw.get(key, default)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(source, key, f"must be a mapping, got {value!r}")
    return dict(value)


def _whole(source: str, key: str, v: object, low: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise _fail(source, key, f"must be a whole number >= {low}, got {v!r}")
    return v


def _number(source: str, key: str, v: object, low: float, high: float,
            low_open: bool = False, high_open: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _fail(source, key, f"must be a number in {interval}, got {v!r}")
    return float(v)


def resolve_space(value: object, source: str, base_dir: Path) -> SearchSpace:
    """``space:`` as a path (from the working directory, then the sweep's folder),
    a built-in name (``course``, ``adam``, ``lr_vs_eps``), or the parameters inline."""
    if isinstance(value, Mapping):
        data = value if "parameters" in value else {"parameters": dict(value)}
        return SearchSpace.from_dict(data, f"{source}: key 'space'", RULES)
    if not isinstance(value, str) or not value:
        raise _fail(source, "space", f"must be a path or the parameters inline, got {value!r}")
    candidates = [Path(value), base_dir / value, BUILTIN_SPACES / value,
                  BUILTIN_SPACES / f"{value}.yaml", BUILTIN_SPACES.parent / value]
    for path in candidates:
        if path.is_file():
            return SearchSpace.from_file(path, RULES)
    builtins = sorted(p.stem for p in BUILTIN_SPACES.glob("*.yaml"))
    raise _fail(source, "space", f"no such file {value!r} (looked in the working directory and "
                f"in {base_dir}); built-in spaces are " + ", ".join(builtins))


def _start(source: str, start, space) -> dict:
    """A warm start's configuration: known tuned parameters; those missing take the
    space's centre. Values outside the space are kept here and clipped by the strategy."""
    if not isinstance(start, dict):
        raise _fail(source, "strategy.start", f"must be a mapping of parameter values, got "
                    f"{start!r}")
    tuned = {p.name: p for p in space.tuned}
    for name in start:
        if name not in tuned:
            raise _unknown(source, "strategy.start", name, tuple(tuned))
    out = {}
    for name, p in tuned.items():
        value = start.get(name, p.centre())
        try:
            p.to_unit(value)
        except (TypeError, ValueError) as e:
            raise _fail(source, f"strategy.start.{name}",
                        f"is not a value of this parameter ({e}), got {value!r}") from None
        out[name] = value
    return out


def parse_sweep(raw: Mapping, source: str, base_dir: str | Path = ".") -> SweepSpec:
    """Checks a sweep mapping whole; returns the frozen SweepSpec.

    Raises:
        SpecError: the first rule the file breaks.
    """
    base = Path(base_dir)
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(source, "", key, TOP_KEYS)
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(source, "name", "must be 1-100 letters, digits, '.', '_' or '-' "
                    f"(it names a folder and an MLflow experiment), got {name!r}")

    try:
        data = DataSpec.from_dict(_section(raw, "data", source), where="data")
    except DataError as e:
        raise SpecError(source, "", str(e)) from None

    model = _section(raw, "model", source)
    kind = model.pop("kind", "mlp")
    if kind != "mlp":
        raise _fail(source, "model.kind", f"must be 'mlp' (the course's net), got {kind!r}")
    for key, value in model.items():
        if key not in MODEL_KEYS:
            raise _unknown(source, "model", key, ("kind",) + tuple(sorted(MODEL_KEYS)))
        problem = RULES[key].check(value)
        if problem:
            raise _fail(source, f"model.{key}", f"{problem}, got {value!r}")

    if "space" not in raw:
        raise _fail(source, "", "missing key 'space' (a search space file or the parameters "
                    "inline)")
    space = resolve_space(raw["space"], source, base)
    both = sorted(set(model) & set(space.names))
    if both:
        raise _fail(source, f"model.{both[0]}", "is set in 'model' and in the search space; "
                    "keep one (the space's, to tune it)")

    strategy = _section(raw, "strategy", source, {"kind": "coarse_to_fine"})
    skind = strategy.get("kind", "coarse_to_fine")
    if skind not in STRATEGY_KEYS:
        raise _fail(source, "strategy.kind",
                    f"must be one of {', '.join(STRATEGY_KEYS)}, got {skind!r}")
    for key in strategy:
        if key != "kind" and key not in STRATEGY_KEYS[skind]:
            raise _unknown(source, "strategy", key, ("kind",) + STRATEGY_KEYS[skind])
    strategy["kind"] = skind
    if skind == "coarse_to_fine":
        strategy["rounds"] = _whole(source, "strategy.rounds", strategy.get("rounds", 3))
        strategy["trials_per_round"] = _whole(source, "strategy.trials_per_round",
                                              strategy.get("trials_per_round", 16))
        strategy["keep"] = _number(source, "strategy.keep", strategy.get("keep", 0.25), 0, 1,
                                   low_open=True)
        strategy["margin"] = _number(source, "strategy.margin", strategy.get("margin", 0.1), 0, 1)
        sampler = strategy.setdefault("sampler", "random")
        if sampler not in ("random", "quasi_random"):
            raise _fail(source, "strategy.sampler",
                        f"must be 'random' or 'quasi_random', got {sampler!r}")
        if strategy.get("start") is not None:
            strategy["start"] = _start(source, strategy["start"], space)
        strategy["width"] = _number(source, "strategy.width", strategy.get("width", 0.25), 0, 1,
                                    low_open=True)
    elif skind == "grid":
        strategy["points"] = _whole(source, "strategy.points", strategy.get("points", 5))
    else:
        strategy["trials"] = _whole(source, "strategy.trials", strategy.get("trials", 48))

    epochs = _whole(source, "epochs", raw.get("epochs", 20))

    scheduler = _section(raw, "scheduler", source, {"kind": "fifo"})
    hkind = scheduler.get("kind", "fifo")
    if hkind not in SCHEDULER_KEYS:
        raise _fail(source, "scheduler.kind",
                    f"must be one of {', '.join(SCHEDULER_KEYS)}, got {hkind!r}")
    for key in scheduler:
        if key != "kind" and key not in SCHEDULER_KEYS[hkind]:
            raise _unknown(source, "scheduler", key, ("kind",) + SCHEDULER_KEYS[hkind])
    scheduler["kind"] = hkind
    if hkind == "asha":
        grace = _whole(source, "scheduler.grace_epochs", scheduler.get("grace_epochs", 1))
        if grace > epochs:
            raise _fail(source, "scheduler.grace_epochs",
                        f"must be <= epochs ({epochs}), got {grace}")
        scheduler["grace_epochs"] = grace
        scheduler["reduction_factor"] = _whole(
            source, "scheduler.reduction_factor", scheduler.get("reduction_factor", 3), low=2)
    elif hkind == "pbt":
        if skind not in ("random", "quasi_random"):
            raise _fail(source, "scheduler.kind", "pbt evolves a population drawn at random: "
                        f"use strategy random or quasi_random with it, got {skind!r}")
        scheduler["perturbation_interval"] = _whole(
            source, "scheduler.perturbation_interval", scheduler.get("perturbation_interval", 2))
        scheduler["quantile_fraction"] = _number(
            source, "scheduler.quantile_fraction", scheduler.get("quantile_fraction", 0.25),
            0, 0.5, low_open=True)
        tuned = [p.name for p in space.tuned]
        hps = scheduler.setdefault("hyperparameters", [n for n in ("lr", "momentum") if n in tuned])
        if not isinstance(hps, list) or not hps:
            raise _fail(source, "scheduler.hyperparameters",
                        f"must be a non-empty list of tuned parameters, got {hps!r}")
        for hp in hps:
            if hp not in tuned:
                raise _fail(source, "scheduler.hyperparameters",
                            f"{hp!r} is not a tuned parameter of the space; tuned: "
                            + ", ".join(tuned))

    metric = _section(raw, "metric", source, {"name": "val_loss"})
    for key in metric:
        if key not in ("name", "mode"):
            raise _unknown(source, "metric", key, ("name", "mode"))
    mname = metric.get("name", "val_loss")
    if mname not in METRICS:
        raise _fail(source, "metric.name", f"the trainer reports {', '.join(METRICS)} each "
                    f"epoch, got {mname!r}")
    mode = metric.get("mode", METRICS[mname])
    if mode not in ("min", "max"):
        raise _fail(source, "metric.mode", f"must be 'min' or 'max', got {mode!r}")
    if mode != METRICS[mname]:
        raise _fail(source, "metric.mode", f"{mname} is better when {METRICS[mname]}imised, "
                    f"got mode {mode!r}")

    resources = _section(raw, "resources", source)
    for key in resources:
        if key not in ("cpu", "gpu", "concurrency"):
            raise _unknown(source, "resources", key, ("cpu", "gpu", "concurrency"))
    cpu = _number(source, "resources.cpu", resources.get("cpu", 1), 0, 1024, low_open=True)
    gpu = _number(source, "resources.gpu", resources.get("gpu", 0), 0, 64)
    if gpu > 1 and not gpu.is_integer():
        raise _fail(source, "resources.gpu", f"a fraction of a GPU must be < 1 (gpu: 0.25 packs "
                    f"four trials on one GPU); more than one must be whole, got {gpu:g}")
    concurrency = resources.get("concurrency")
    if concurrency is not None:
        concurrency = _whole(source, "resources.concurrency", concurrency)
    resources = {"cpu": cpu, "gpu": gpu, "concurrency": concurrency}

    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _fail(source, "seed", f"must be a whole number >= 0, got {seed!r}")

    register = raw.get("register")
    if register is not None:
        register = _section(raw, "register", source)
        for key in register:
            if key not in ("name", "promote"):
                raise _unknown(source, "register", key, ("name", "promote"))
        if not isinstance(register.get("name"), str) or not register["name"]:
            raise _fail(source, "register.name", "must name the registered model, got "
                        f"{register.get('name')!r}")
        if not isinstance(register.setdefault("promote", False), bool):
            raise _fail(source, "register.promote",
                        f"must be true or false, got {register['promote']!r}")

    tracking = _section(raw, "tracking", source)
    for key in tracking:
        if key not in ("experiment", "uri", "enabled"):
            raise _unknown(source, "tracking", key, ("experiment", "uri", "enabled"))
    if not isinstance(tracking.get("enabled", True), bool):
        raise _fail(source, "tracking.enabled",
                    f"must be true or false, got {tracking['enabled']!r}")

    return SweepSpec(name=name, source=source, data=data, model=model, space=space,
                     strategy=strategy, scheduler=scheduler, epochs=epochs, metric={
                         "name": mname, "mode": mode}, resources=resources, seed=seed,
                     register=register, tracking=tracking, base_dir=str(base))


def load_sweep(path: str | Path) -> SweepSpec:
    """Reads and checks a sweep file."""
    raw = load_mapping(path)
    return parse_sweep(raw, str(path), Path(path).resolve().parent)


def file_kind(raw: Mapping) -> str:
    """``space``, ``sweep`` or ``retune``: what a caviar YAML file holds."""
    if "parameters" in raw:
        return "space"
    if "triggers" in raw or "gate" in raw or isinstance(raw.get("model"), str):
        return "retune"
    return "sweep"
