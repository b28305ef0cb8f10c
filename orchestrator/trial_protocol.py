"""What a search hands each trial: a configuration, plus caviar's bookkeeping keys.

A strategy adds ``_round`` (its coarse-to-fine round) and ``_seed`` (the trial's
own seed, so the trial can be re-run) to each configuration it suggests. Keys
starting with ``_`` are never hyperparameters: they are not trained on, logged
as MLflow params or written as columns.

What a trial hands back: one result per report, the latest epoch's metrics, with
every epoch since its previous report under ``EPOCHS_KEY`` (a trial with short
epochs reports several at once).
"""

from __future__ import annotations

META_PREFIX = "_"
ROUND_KEY = "_round"
SEED_KEY = "_seed"
EPOCHS_KEY = "caviar_epochs"


def reported_epochs(result: dict) -> list[dict]:
    """Each epoch's metrics a trial's result carries, oldest first."""
    return result.get(EPOCHS_KEY) or [result]


def hyperparameters(config: dict) -> dict:
    """A trial's hyperparameters: its configuration without the bookkeeping keys."""
    return {k: v for k, v in config.items() if not k.startswith(META_PREFIX)}
