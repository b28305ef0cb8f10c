"""Starting a babysat run, and giving one whose worker is gone a new worker.

``prepare`` reads and checks everything a start needs (the sweep file, the starting
hyperparameters, the name, the data, the cluster) and writes nothing: bad input is
refused before a lock is taken or a record made. ``start`` then takes the name (under
the registry's lock, so two starts of one name take turns and the second finds it
taken), makes the record and launches the worker. ``resume`` is ``start --resume``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from orchestrator.panda.channel import (
    BABYSIT,
    NAME_RULE,
    BabysitError,
    Record,
    babysat_runs,
    check_name,
    reached,
)
from orchestrator.panda.launch import LaunchFailed, alive, launch, log_path

LOCK_WAIT_S = 240.0  # another start or resume of the name: wait for it, this long at most


@dataclass(frozen=True)
class Start:
    """A start checked and ready: nothing is taken or written yet."""

    name: str | None  # None: the sweep's next free SWEEP-N, chosen when the start is made
    sweep: str
    source: str  # the sweep file, logged with the run
    experiment: str
    uri: str
    workdir: str
    address: str | None
    config: dict  # what the worker trains: babysit.json
    notes: list[str] = field(default_factory=list)  # for the person starting it


@dataclass(frozen=True)
class Started:
    """A run whose worker has taken it up."""

    name: str
    epochs: int
    address: str | None  # the cluster it trains on as a detached actor
    log: Path | None  # the background process's log when it trains here


def prepare(file: str, values: dict, *, name: str | None, epochs: int | None,
            keep: int | None, delay: float, address: str | None, tracking_uri: str | None,
            workdir: str) -> Start:
    """Checks a start: the name, the sweep file, the starting hyperparameters ``values``
    (parsed ``--set`` items), the data and, with ``address``, the cluster. BabysitError,
    SpecError or DataError on bad input; nothing is written."""
    from models.data import DataSpec, load
    from orchestrator.sweep.spec import load_sweep
    from orchestrator.tracking.store import resolve_uri

    if name is not None:
        check_name(name, "--name")
    spec = load_sweep(file)
    if name is None and not NAME_RULE.match(f"{spec.name}-1"):
        raise BabysitError(f"{spec.source}: the sweep's name {spec.name!r} is too long to "
                           "name its babysat runs (SWEEP-N, at most 63 characters): pass "
                           "--name")
    config = run_config(spec, values, epochs, keep, delay)
    uri = resolve_uri(tracking_uri, spec.tracking.uri, workdir)
    load(DataSpec(**config["data"]), config["base_dir"])  # bad data: refused before anything
    if address:  # a run no node can hold, or a store it cannot reach: refused too
        check_cluster(address, uri, config["resources"], spec.source)
    return Start(name, spec.name, spec.source, spec.tracking.experiment or spec.name, uri,
                 workdir, address, config, _outside(values, spec.space))


def run_config(spec, values: dict, epochs: int | None, keep: int | None,
               delay: float) -> dict:
    """What the worker trains (``babysit.json``): the sweep's net, data and seed with the
    starting hyperparameters, paths made absolute for a worker elsewhere."""
    from models.config import split_config
    from models.data import FILE_SOURCES, resolve_path

    config = spec.trial_config(values)
    try:
        model_config, hparams = split_config(config)
    except ValueError as e:
        raise BabysitError(f"{spec.source}: {e}") from None
    data = spec.data.to_dict()
    if spec.data.source in FILE_SOURCES:
        data["path"] = str(resolve_path(spec.data.path, spec.base_dir))
    return {"sweep": spec.name, "source": spec.source, "data": data,
            "base_dir": str(Path(spec.base_dir).resolve()), "config": config,
            "model_config": asdict(model_config), "hparams": asdict(hparams),
            "epochs": epochs or spec.epochs, "seed": spec.seed,
            "metric": spec.metric.to_dict(), "resources": spec.resources.to_dict(),
            "register": spec.register.name if spec.register else None,
            "keep": keep or spec.babysit.keep, "delay": delay,
            "space": spec.space.to_dict()["parameters"]}


def _outside(values: dict, space) -> list[str]:
    """Starting values that lie outside the sweep's search space (allowed, but said)."""
    return [f"--set {k}={v!r} lies outside the search space {space[k].to_dict()}"
            for k, v in values.items()
            if k in space.names and space[k].is_tuned and not space[k].contains(v)]


def free_name(sweep: str, taken: set[str]) -> str:
    """The first of SWEEP-1, SWEEP-2, ... not in ``taken``."""
    return next(f"{sweep}-{n}" for n in range(1, len(taken) + 2)
                if f"{sweep}-{n}" not in taken)


def start(s: Start) -> Started:
    """Takes the name, makes the run's record and launches its worker. BabysitError when
    the name is taken; LaunchFailed (the record removed again) when the worker fails."""
    with name_lock(s.uri, s.name or s.sweep):
        taken = {r.data.tags.get(BABYSIT) for r in babysat_runs(s.uri)}
        name = s.name or free_name(s.sweep, taken)
        if name in taken:
            raise BabysitError(f"a babysat run named {name!r} exists in {s.uri}: pick another "
                               f"--name, or continue it with `caviar babysit start --resume "
                               f"{name}`")
        record = Record.create(s.uri, s.workdir, s.experiment, {"name": name, **s.config})
        try:
            record.client.log_artifact(record.run_id, s.source)
            return _launch(record, name, s.workdir, s.address, s.config)
        except BaseException:
            record.forget()
            raise


def resume(name: str, *, epochs: int | None, address: str | None, tracking_uri: str | None,
           workdir: str) -> Started:
    """``start --resume``: a new worker for a run whose worker is gone, from its newest
    checkpoint, with ``epochs`` in all when given (more than it has trained)."""
    from orchestrator.tracking.store import resolve_uri

    check_name(name, "--resume")
    uri = resolve_uri(tracking_uri, None, workdir)
    record = Record.find(uri, name)
    config = record.config()
    total = _resumable(record, name, epochs)
    if address:
        check_cluster(address, uri, config["resources"], config["source"])
    with name_lock(uri, name):
        _resumable(record, name, epochs)  # again: another resume may have come first
        if epochs is not None:
            record.post("epochs", epochs=epochs)
        return _launch(record, name, workdir, address, {**config, "epochs": total})


def _resumable(record: Record, name: str, epochs: int | None) -> int:
    """The epochs in all a resumed run trains; BabysitError when its worker runs or
    it has nothing left to train."""
    tags, lineage = record.tags(), record.lineage()
    running, why = alive(tags)
    if running:
        raise BabysitError(f"babysat run {name!r} is still running ({why}): nothing to resume")
    done = reached(tags)
    if epochs is not None and epochs <= done:
        raise BabysitError(f"--epochs {epochs}: run {name!r} has trained {done} epochs "
                           "already; ask for more")
    if epochs is None and done >= lineage.epochs:
        raise BabysitError(f"babysat run {name!r} has trained all its {lineage.epochs} "
                           "epochs: pass --epochs N (more) to go on")
    return epochs or lineage.epochs


def _launch(record: Record, name: str, workdir: str, address: str | None,
            config: dict) -> Started:
    try:
        launch(record, name, workdir, address, config["resources"])
    except LaunchFailed as e:
        raise LaunchFailed(f"babysat run {name!r}: {e}") from None
    return Started(name, config["epochs"], address,
                   None if address else log_path(workdir, name))


def name_lock(uri: str, name: str):
    """Two starts (or resumes) of one name at once: the second waits its turn and then
    finds the name taken (or the worker alive). The registry's lock, as re-tune's."""
    from mlflow import MlflowClient

    from orchestrator.tracking.registry import Lock
    from orchestrator.tracking.store import ensure_sqlite_store

    ensure_sqlite_store(uri)
    return Lock(MlflowClient(uri, registry_uri=uri), f"babysit.{name}", lease_s=300,
                what="babysit start", wait_s=LOCK_WAIT_S)


def check_cluster(address: str, uri: str, resources: dict, source: str) -> None:
    """The cluster can hold one trial, and, for the embedded sqlite store, is this
    machine alone (the worker writes the store: another node would open its own file)."""
    import ray

    from orchestrator.cluster.connect import check_resources, connect

    connect(address)
    check_resources(float(resources["cpu"]), float(resources["gpu"]), source)
    here = ray.util.get_node_ip_address()
    others = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - {here}
    if uri.startswith("sqlite:") and others:
        raise BabysitError(f"--address {address}: the cluster has nodes besides this machine "
                           f"({', '.join(sorted(others))}), and the worker records into "
                           f"{uri}, a file on this machine: pass --tracking-uri of an MLflow "
                           "server every node reaches (see docs/panda.md)")
