"""What a search hands each trial: a configuration, plus caviar's bookkeeping keys.

A strategy adds ``_round`` (its coarse-to-fine round) and ``_seed`` (the trial's
own seed, so the trial can be re-run) to each configuration it suggests. Keys
starting with ``_`` are never hyperparameters: they are not trained on, logged
as MLflow params or written as columns.
"""

from __future__ import annotations

META_PREFIX = "_"
ROUND_KEY = "_round"
SEED_KEY = "_seed"


def hyperparameters(config: dict) -> dict:
    """A trial's hyperparameters: its configuration without the bookkeeping keys."""
    return {k: v for k, v in config.items() if not k.startswith(META_PREFIX)}
