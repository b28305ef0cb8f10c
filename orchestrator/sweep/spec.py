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
    storage: s3://my-bucket/caviar   # trial storage (default: WORKDIR/ray): a folder or s3://, gs://

Each section becomes a frozen dataclass (the strategy's is declared by the
strategy itself, in ``orchestrator.strategies``). Every error is a SpecError
naming the file, the key, the rule and the bad value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.config import MODEL_KEYS, RULES
from models.data import DataError, DataSpec
from models.objective import METRICS, Objective
from orchestrator.fields import fail, flag, known, number, only_keys, section, unknown, whole
from orchestrator.strategies import budget, parse_strategy, to_dict
from orchestrator.tracking.registry import MODEL_NAME
from orchestrator.tracking.store import CREDENTIALS_FROM_ENV, password_in, redacted
from searchspaces import SearchSpace, SpecError
from searchspaces.yamlio import load_mapping

BUILTIN_SPACES = Path(__file__).resolve().parents[2] / "searchspaces"

TOP_KEYS = ("name", "description", "data", "model", "space", "strategy", "scheduler", "epochs",
            "metric", "resources", "seed", "register", "tracking", "babysit", "storage")
SCHEDULER_KEYS = {
    "fifo": (),
    "asha": ("grace_epochs", "reduction_factor"),
    "pbt": ("perturbation_interval", "hyperparameters", "quantile_fraction"),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# What the workdir holds besides sweeps: a sweep of one of these names would take its place.
RESERVED_NAMES = ("mlflow.db", "mlartifacts", "ray", "babysit")
MAX_SEED = 2**31 - 1  # torch and numpy take it, and seed + trial stays in range



@dataclass(frozen=True)
class Scheduler:
    """``scheduler:``: fifo, asha (early stopping) or pbt (population based training)."""

    kind: str = "fifo"
    grace_epochs: int | None = None  # asha
    reduction_factor: int | None = None  # asha
    perturbation_interval: int | None = None  # pbt
    hyperparameters: tuple[str, ...] | None = None  # pbt: the ones it perturbs
    quantile_fraction: float | None = None  # pbt

    def to_dict(self) -> dict:
        out = {"kind": self.kind}
        for key in SCHEDULER_KEYS[self.kind]:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class Resources:
    """``resources:``: what each trial holds, and how many run at once (None: Ray decides)."""

    cpu: float = 1.0
    gpu: float = 0.0
    concurrency: int | None = None

    def to_dict(self) -> dict:
        return {"cpu": self.cpu, "gpu": self.gpu, "concurrency": self.concurrency}


@dataclass(frozen=True)
class Register:
    """``register:``: the registered model the best trial becomes a version of."""

    name: str
    promote: bool = False  # also move the alias 'production' to it


@dataclass(frozen=True)
class Tracking:
    """``tracking:``: where MLflow is (None: the embedded store) and the experiment."""

    experiment: str | None = None
    uri: str | None = None
    enabled: bool = True

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class Babysit:
    """``babysit:``: settings of a babysat run of this sweep (``caviar babysit``)."""

    keep: int | None = None  # checkpoints kept per branch (None: every epoch's)


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file. ``space`` is loaded; ``model`` holds the net's fixed settings."""

    name: str
    source: str
    data: DataSpec
    model: dict
    space: SearchSpace
    strategy: object  # the strategy's own frozen settings (orchestrator.strategies)
    scheduler: Scheduler
    epochs: int
    metric: Objective
    resources: Resources
    seed: int
    register: Register | None = None
    tracking: Tracking = field(default_factory=Tracking)
    babysit: Babysit = field(default_factory=Babysit)
    storage: str | None = None  # trial storage: a folder or an object store URI (None: WORKDIR/ray)
    base_dir: str = "."  # the sweep file's folder, where relative paths are also looked for

    @property
    def budget(self) -> int:
        """How many trials the strategy runs."""
        return budget(self.strategy, self.space)

    def trial_config(self, overrides: Mapping | None = None) -> dict:
        """The net's fixed settings, then the space's centre, then ``overrides``."""
        config = dict(self.model)
        config.update(self.space.centre())
        config.update(overrides or {})
        return config

    def to_dict(self) -> dict:
        """The sweep as a sweep file's mapping, its space inline."""
        out = {"name": self.name, "data": self.data.to_dict(),
               "model": dict(self.model), "space": self.space.to_dict()["parameters"],
               "strategy": to_dict(self.strategy), "scheduler": self.scheduler.to_dict(),
               "epochs": self.epochs, "metric": self.metric.to_dict(),
               "resources": self.resources.to_dict(), "seed": self.seed,
               "tracking": self.tracking.to_dict()}
        if self.babysit.keep is not None:
            out["babysit"] = {"keep": self.babysit.keep}
        if self.storage is not None:
            out["storage"] = self.storage
        if self.register is not None:
            out["register"] = {"name": self.register.name, "promote": self.register.promote}
        return out


def resolve_space(value: object, source: str, base_dir: Path) -> SearchSpace:
    """``space:`` as a path (from the working directory, then the sweep's folder),
    a built-in name (``course``, ``adam``, ``lr_vs_eps``), or the parameters inline."""
    if isinstance(value, Mapping):
        data = value if "parameters" in value else {"parameters": dict(value)}
        return SearchSpace.from_dict(data, f"{source}: key 'space'", RULES)
    if not isinstance(value, str) or not value:
        raise fail(source, "space", f"must be a path or the parameters inline, got {value!r}")
    candidates = [Path(value), base_dir / value, BUILTIN_SPACES / value,
                  BUILTIN_SPACES / f"{value}.yaml", BUILTIN_SPACES.parent / value]
    for path in candidates:
        if path.is_file():
            return SearchSpace.from_file(path, RULES)
    builtins = sorted(p.stem for p in BUILTIN_SPACES.glob("*.yaml"))
    raise fail(source, "space", f"no such file {value!r} (looked in the working directory and "
               f"in {base_dir}); built-in spaces are " + ", ".join(builtins))


def _name(raw: Mapping, source: str) -> str:
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(source, "name", "must be 1-100 letters, digits, '.', '_' or '-' "
                   f"(it names a folder and an MLflow experiment), got {name!r}")
    if name in RESERVED_NAMES:
        raise fail(source, "name", f"{name!r} is taken by the workdir's own "
                   f"{', '.join(RESERVED_NAMES)}: its folder would take their place; pick "
                   "another name")
    return name


def parse_data(raw: Mapping, source: str) -> DataSpec:
    """The ``data:`` section (a DataError becomes a SpecError naming the file)."""
    try:
        return DataSpec.from_dict(section(raw, "data", source), where="data")
    except DataError as e:
        raise SpecError(source, "", str(e)) from None


def _model(raw: Mapping, source: str) -> dict:
    model = section(raw, "model", source)
    kind = model.pop("kind", "mlp")
    if kind != "mlp":
        raise fail(source, "model.kind", f"must be 'mlp' (the course's net), got {kind!r}")
    for key, value in model.items():
        if key not in MODEL_KEYS:
            raise unknown(source, "model", key, ("kind",) + tuple(sorted(MODEL_KEYS)))
        problem = RULES[key].check(value)
        if problem:
            raise fail(source, f"model.{key}", f"{problem}, got {value!r}")
    return model


def _space(raw: Mapping, source: str, base: Path, model: dict) -> SearchSpace:
    if "space" not in raw:
        raise fail(source, "", "missing key 'space' (a search space file or the parameters "
                   "inline)")
    space = resolve_space(raw["space"], source, base)
    both = sorted(set(model) & set(space.names))
    if both:
        raise fail(source, f"model.{both[0]}", "is set in 'model' and in the search space; "
                   "keep one (the space's, to tune it)")
    return space


def _pbt(s: dict, source: str, space: SearchSpace, strategy_kind: str) -> dict:
    if strategy_kind not in ("random", "quasi_random"):
        raise fail(source, "scheduler.kind", "pbt evolves a population drawn at random: "
                   f"use strategy random or quasi_random with it, got {strategy_kind!r}")
    interval = whole(source, "scheduler.perturbation_interval", s.get("perturbation_interval", 2))
    quantile = number(source, "scheduler.quantile_fraction", s.get("quantile_fraction", 0.25),
                      0, 0.5, low_open=True)
    tuned = [p.name for p in space.tuned]
    hps = s.get("hyperparameters", [n for n in ("lr", "momentum") if n in tuned])
    if not isinstance(hps, list) or not hps:
        raise fail(source, "scheduler.hyperparameters",
                   f"must be a non-empty list of tuned parameters, got {hps!r}")
    for hp in hps:
        if hp not in tuned:
            raise fail(source, "scheduler.hyperparameters",
                       f"{hp!r} is not a tuned parameter of the space; tuned: " + ", ".join(tuned))
    return {"perturbation_interval": interval, "quantile_fraction": quantile,
            "hyperparameters": tuple(hps)}


def _scheduler(raw: Mapping, source: str, epochs: int, space: SearchSpace,
               strategy_kind: str) -> Scheduler:
    s = section(raw, "scheduler", source, {"kind": "fifo"})
    kind = s.get("kind", "fifo")
    if not known(kind, SCHEDULER_KEYS):
        raise fail(source, "scheduler.kind",
                   f"must be one of {', '.join(SCHEDULER_KEYS)}, got {kind!r}")
    only_keys(source, "scheduler", s, ("kind",) + SCHEDULER_KEYS[kind])
    if kind == "asha":
        grace = whole(source, "scheduler.grace_epochs", s.get("grace_epochs", 1))
        if grace > epochs:
            raise fail(source, "scheduler.grace_epochs",
                       f"must be <= epochs ({epochs}), got {grace}")
        return Scheduler(kind, grace_epochs=grace, reduction_factor=whole(
            source, "scheduler.reduction_factor", s.get("reduction_factor", 3), low=2))
    if kind == "pbt":
        return Scheduler(kind, **_pbt(s, source, space, strategy_kind))
    return Scheduler(kind)


def _metric(raw: Mapping, source: str) -> Objective:
    m = section(raw, "metric", source, {"name": "val_loss"})
    only_keys(source, "metric", m, ("name", "mode"))
    name = m.get("name", "val_loss")
    if not known(name, METRICS):
        raise fail(source, "metric.name", f"the trainer reports {', '.join(METRICS)} each "
                   f"epoch, got {name!r}")
    mode = m.get("mode", METRICS[name])
    if mode not in ("min", "max"):
        raise fail(source, "metric.mode", f"must be 'min' or 'max', got {mode!r}")
    if mode != METRICS[name]:
        raise fail(source, "metric.mode", f"{name} is better when {METRICS[name]}imised, "
                   f"got mode {mode!r}")
    return Objective(name, mode)


def _resources(raw: Mapping, source: str) -> Resources:
    r = section(raw, "resources", source)
    only_keys(source, "resources", r, ("cpu", "gpu", "concurrency"))
    cpu = number(source, "resources.cpu", r.get("cpu", 1), 0, 1024, low_open=True)
    gpu = number(source, "resources.gpu", r.get("gpu", 0), 0, 64)
    if gpu > 1 and not gpu.is_integer():
        raise fail(source, "resources.gpu", f"a fraction of a GPU must be < 1 (gpu: 0.25 packs "
                   f"four trials on one GPU); more than one must be whole, got {gpu:g}")
    concurrency = r.get("concurrency")
    if concurrency is not None:
        concurrency = whole(source, "resources.concurrency", concurrency)
    return Resources(cpu, gpu, concurrency)


def _seed(raw: Mapping, source: str) -> int:
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise fail(source, "seed", f"must be a whole number in [0, {MAX_SEED}], got {seed!r}")
    return seed


def _register(raw: Mapping, source: str) -> Register | None:
    if raw.get("register") is None:
        return None
    r = section(raw, "register", source)
    only_keys(source, "register", r, ("name", "promote"))
    if not isinstance(r.get("name"), str) or not MODEL_NAME.match(r["name"]):
        raise fail(source, "register.name", "must name the registered model: 1-100 letters, "
                   f"digits, spaces, '.', '_' or '-', got {r.get('name')!r}")
    return Register(r["name"], flag(source, "register.promote", r.get("promote", False)))


def _babysit(raw: Mapping, source: str) -> Babysit:
    b = section(raw, "babysit", source)
    only_keys(source, "babysit", b, ("keep",))
    keep = b.get("keep")
    return Babysit(None if keep is None else whole(source, "babysit.keep", keep))


def _storage(raw: Mapping, source: str) -> str | None:
    from orchestrator.cluster.storage import check_location

    value = raw.get("storage")
    if value is None:
        return None
    problem = check_location(value, relative_ok=False)
    if problem:
        raise fail(source, "storage", problem)
    return value


def parse_tracking(raw: Mapping, source: str, allowed=("experiment", "uri", "enabled")) -> Tracking:
    """The ``tracking:`` section (a re-tune file's allows no ``enabled``)."""
    t = section(raw, "tracking", source)
    only_keys(source, "tracking", t, allowed)
    if isinstance(t.get("uri"), str) and password_in(t["uri"]):
        raise fail(source, "tracking.uri", f"{redacted(t['uri'])} carries a password, and a "
                   f"file is no place for one (it ends up in git): {CREDENTIALS_FROM_ENV}")
    return Tracking(t.get("experiment"), t.get("uri"),
                    flag(source, "tracking.enabled", t.get("enabled", True)))


def parse_sweep(raw: Mapping, source: str, base_dir: str | Path = ".") -> SweepSpec:
    """Checks a sweep mapping whole, section by section; returns the frozen SweepSpec.

    Raises:
        SpecError: the first rule the file breaks.
    """
    only_keys(source, "", raw, TOP_KEYS)
    name = _name(raw, source)
    data = parse_data(raw, source)
    model = _model(raw, source)
    space = _space(raw, source, Path(base_dir), model)
    strategy = parse_strategy(section(raw, "strategy", source, {"kind": "coarse_to_fine"}),
                              source, space)
    epochs = whole(source, "epochs", raw.get("epochs", 20))
    scheduler = _scheduler(raw, source, epochs, space, strategy.kind)
    return SweepSpec(name=name, source=source, data=data, model=model, space=space,
                     strategy=strategy, scheduler=scheduler, epochs=epochs,
                     metric=_metric(raw, source), resources=_resources(raw, source),
                     seed=_seed(raw, source), register=_register(raw, source),
                     tracking=parse_tracking(raw, source), babysit=_babysit(raw, source),
                     storage=_storage(raw, source), base_dir=str(Path(base_dir)))


def load_sweep(path: str | Path) -> SweepSpec:
    """Reads and checks a sweep file."""
    raw = load_mapping(path)
    return parse_sweep(raw, str(path), Path(path).resolve().parent)


def job_file(spec: SweepSpec, raw: Mapping) -> tuple[dict, dict[str, Path]]:
    """The sweep file as a cluster job runs it, away from this machine: its search space
    written inline, a local data file named ``data/FILE`` beside it. Returns (the file's
    mapping, the local files it names: a path in the job's folder -> the file here)."""
    from models.data import FILE_SOURCES, resolve_path

    staged = {**raw, "space": spec.space.to_dict()}
    files = {}
    if spec.data.source in FILE_SOURCES:
        src = resolve_path(spec.data.path, spec.base_dir)
        files[f"data/{src.name}"] = src
        staged["data"] = {**raw.get("data", {}), "path": f"data/{src.name}"}
    return staged, files


def file_kind(raw: Mapping) -> str:
    """``space``, ``sweep`` or ``retune``: what a caviar YAML file holds."""
    if "parameters" in raw:
        return "space"
    if "triggers" in raw or "gate" in raw or isinstance(raw.get("model"), str):
        return "retune"
    return "sweep"
