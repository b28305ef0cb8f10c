"""Any epoch of a babysat run registered as a model version, like a sweep's best: a
model folder (weights and JSON, loadable without unpickling) logged to the parent run
as ``models/<branch>-epoch_NNNNN`` and registered with what the re-tune job reads.

``register`` is ``caviar babysit register``; the worker registers the best epoch when
a stop asks it to, and ``requests.stop`` does for a run whose worker is gone."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from models.serving import export_model
from models.train import holdout_scores, net_from_checkpoint
from orchestrator.cluster.hardware import HARDWARE_KEYS
from orchestrator.panda.channel import (
    BABYSIT,
    BRANCH,
    EPOCH,
    SWEEP,
    WHERE,
    BabysitError,
    Record,
    reached,
)
from orchestrator.panda.lineage import Branch, Lineage
from orchestrator.tracking.registry import register_version, version_tags

METRICS = ("train_loss", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class Registered:
    """A registered epoch: ``models:/<model>/<version>``, epoch ``epoch`` of ``branch``."""

    model: str
    version: str
    epoch: int
    branch: str


def register(record: Record, model: str | None, epoch: int,
             branch: str | None = None) -> Registered:
    """Registers epoch ``epoch`` of ``branch``'s line (default: the current) as a new
    version of ``model`` (default: the sweep's register.name), and puts it in the run's
    history. Bad input (a name, a branch, an epoch without a checkpoint): BabysitError or
    RegistryError before anything is written."""
    from models.data import DataSpec, load
    from orchestrator.tracking.registry import check_model_name

    lineage, config = record.lineage(), record.config()
    name = lineage.name
    if model is None and not config.get("register"):
        raise BabysitError("babysit register needs the model's name: caviar babysit register "
                           f"NAME MODEL --epoch K (the sweep {config['sweep']!r} has no "
                           "register.name to default to)")
    model = check_model_name(model or config["register"], "MODEL")
    try:
        owner = lineage.owner(epoch, branch)
    except KeyError:
        raise BabysitError(f"babysat run {name!r} has no branch {branch!r}") from None
    if epoch not in record.checkpoint_epochs(owner):
        raise BabysitError(f"babysat run {name!r} has no checkpoint of epoch {epoch} "
                           f"on branch {branch or lineage.current}'s line")
    data = load(DataSpec(**config["data"]), config["base_dir"])
    registered = Registered(model, register_epoch(record, lineage, owner, epoch, model, data),
                            epoch, owner.id)
    on_record(record, registered)
    return registered


def register_best(record: Record, lineage: Lineage, model: str, metric: dict,
                  data) -> Registered | None:
    """The current line's best epoch by ``metric`` (among those with a checkpoint) as a
    version of ``model``; None when no epoch of the line has a checkpoint."""
    found = best_epoch(record, lineage, metric)
    if found is None:
        return None
    epoch, owner = found
    return Registered(model, register_epoch(record, lineage, owner, epoch, model, data),
                      epoch, owner.id)


def history_values(r: Registered) -> dict:
    """A registration as its ``register`` event in the run's history holds it."""
    return {"model": r.model, "version": r.version, "epoch_registered": r.epoch,
            "branch_registered": r.branch}


def on_record(record: Record, registered: Registered) -> None:
    """A registration in the run's history: through the worker when it runs (it alone
    writes the lineage then), else written here."""
    from orchestrator.panda.launch import alive

    tags = record.tags()
    if alive(tags)[0]:
        record.post("registered", **history_values(registered))
        return
    lineage = record.lineage()
    lineage.record("register", reached(tags), **history_values(registered))
    record.save_lineage(lineage)


def best_epoch(record: Record, lineage: Lineage, metric: dict) -> tuple[int, Branch] | None:
    """The current line's best epoch by the sweep's metric among those whose checkpoint is
    still there (``keep:`` may have deleted the very best), and the branch holding it."""
    from models.objective import Objective

    objective = Objective(**metric)
    scored = []
    for b, upto in lineage.spans():
        kept = set(record.checkpoint_epochs(b))
        scored += [(m[objective.name], e) for e, m in record.history(b, (objective.name,)).items()
                   if b.from_epoch < e <= upto and e in kept]
    best = objective.best(v for v, _ in scored)
    if best is None:
        return None
    epoch = next(e for v, e in scored if v == best)
    return epoch, lineage.owner(epoch)


def register_epoch(record: Record, lineage: Lineage, owner: Branch, epoch: int,
                   model_name: str, data) -> str:
    """Registers epoch ``epoch`` (whose checkpoint ``owner``'s run holds); returns the
    version. ``data`` is the run's data: the model folder keeps its mean, std, classes
    and fingerprint, and the test split (no epoch was chosen on it) is scored."""
    from mlflow import MlflowClient

    state = record.load_checkpoint(owner, epoch)
    row = next((m for m in state["history"] if m["epoch"] == epoch), {})
    metrics = {k: row[k] for k in METRICS if k in row}
    metrics["test_loss"], metrics["test_accuracy"] = holdout_scores(
        net_from_checkpoint(state), data)
    path = f"models/{owner.id}-epoch_{epoch:05d}"
    with tempfile.TemporaryDirectory(prefix="caviar-") as d:
        export_model(state, data, Path(d) / "model", metrics=metrics)
        record.client.log_artifacts(record.run_id, str(Path(d) / "model"), path)
    tags = record.tags()
    where = json.loads(tags.get(WHERE) or "{}")
    config = {**state["model_config"], **state["hparams"]}
    version_info = version_tags(config, metrics, {k: where.get(k) for k in HARDWARE_KEYS}, {
        BABYSIT: lineage.name, SWEEP: tags.get(SWEEP, ""), BRANCH: owner.id,
        EPOCH: str(epoch)})
    client = MlflowClient(record.uri, registry_uri=record.uri)
    return register_version(client, model_name, record.run_id, version_info, path=path)
