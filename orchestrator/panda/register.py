"""Any epoch of a babysat run registered as a model version, like a sweep's best: a
model folder (weights and JSON, loadable without unpickling) logged to the parent run
as ``models/<branch>-epoch_NNNNN`` and registered with what the re-tune job reads."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from models.serving import export_model
from models.train import holdout_scores, net_from_checkpoint
from orchestrator.cluster.hardware import HARDWARE_KEYS
from orchestrator.panda.channel import WHERE, Record
from orchestrator.panda.lineage import Branch, Lineage
from orchestrator.tracking.registry import register_version, version_tags

METRICS = ("train_loss", "val_loss", "val_accuracy")


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
        "caviar.babysit": lineage.name, "caviar.sweep": tags.get("caviar.sweep", ""),
        "caviar.branch": owner.id, "caviar.epoch": str(epoch)})
    client = MlflowClient(record.uri, registry_uri=record.uri)
    return register_version(client, model_name, record.run_id, version_info, path=path)
