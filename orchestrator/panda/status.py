"""A babysat run as one JSON-able object: what `caviar babysit status` shows and
`--json` prints (state, epoch, branch, the hyperparameters in force, the per-epoch
metrics along the current line, every branch and the history)."""

from __future__ import annotations

from dataclasses import asdict

from orchestrator.panda.channel import FINAL_STATES
from orchestrator.panda.launch import alive
from orchestrator.panda.worker import HP_METRICS

SPARKS = "▁▂▃▄▅▆▇█"
STATUS_KEYS = ("train_loss", "val_loss", "val_accuracy", "lr")


def status(record) -> dict:
    """The run as one JSON-able object: state, epoch, branch, hyperparameters in force,
    per-epoch metrics along the current line, every branch and the history."""
    tags, lineage = record.tags(), record.lineage()
    running, why = alive(tags)
    rows = []
    for b, upto in lineage.spans():
        for epoch, m in sorted(record.history(b, (*STATUS_KEYS, *_hp(HP_METRICS))).items()):
            if b.from_epoch < epoch <= upto:
                rows.append({"branch": b.id, **m})
    state = tags.get("caviar.state")
    return {"name": lineage.name,
            "state": state if running or state in FINAL_STATES else "lost", "alive": running,
            "where": why, "epoch": int(tags.get("caviar.epoch", 0)),
            "epochs": lineage.epochs, "branch": lineage.current, "paused": lineage.paused,
            "hyperparameters": lineage.hparams, "metrics": rows,
            "branches": [asdict(b) for b in lineage.branches], "history": lineage.events,
            "pending": [{"request": r, **body} for r, body in record.pending(tags)],
            "mlflow": {"tracking_uri": record.uri, "run_id": record.run_id}}


def _hp(keys) -> tuple[str, ...]:
    return tuple(f"hp_{k}" for k in keys)


def sparkline(values: list[float]) -> str:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(int((v - lo) / span * len(SPARKS)), len(SPARKS) - 1)]
                   if v in finite else "!" for v in values)
