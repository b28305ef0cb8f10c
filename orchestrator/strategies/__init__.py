"""Search strategies, one module each, all Ray Tune Searchers working in unit space.

``KINDS`` is the registry, keyed by a sweep file's ``strategy.kind`` (like
``searchspaces.SCALES``): each strategy declares its own keys with their defaults
and rules (``Settings``), its budget, and how it is built from its settings. Those
whose points do not depend on results (``SAMPLED``) also draw them for ``caviar
sample`` (``sample_unit``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from orchestrator.fields import fail, known
from orchestrator.strategies._base import Strategy
from orchestrator.strategies._coarse_to_fine import CoarseToFineStrategy
from orchestrator.strategies._grid import GridStrategy
from orchestrator.strategies._random import QuasiRandomStrategy, RandomStrategy
from orchestrator.strategies._records import RoundRecord, TrialRecord
from orchestrator.strategies._settings import parse, to_dict
from orchestrator.strategies._tpe import TpeStrategy
from orchestrator.trial_protocol import ROUND_KEY, SEED_KEY
from searchspaces import SearchSpace

__all__ = [
    "DEFAULT_KIND", "KINDS", "ROUND_KEY", "SAMPLED", "SEED_KEY", "CoarseToFineStrategy",
    "GridStrategy", "QuasiRandomStrategy", "RandomStrategy", "RoundRecord", "Strategy",
    "TpeStrategy", "TrialRecord", "budget", "make_strategy", "parse_strategy", "sample",
    "searcher", "to_dict",
]

KINDS: dict[str, type[Strategy]] = {cls.kind: cls for cls in (
    RandomStrategy, QuasiRandomStrategy, GridStrategy, TpeStrategy, CoarseToFineStrategy)}
DEFAULT_KIND = "coarse_to_fine"  # the course's method
SAMPLED = tuple(kind for kind, cls in KINDS.items() if hasattr(cls, "sample_unit"))


def parse_strategy(section: Mapping, source: str, space):
    """A sweep file's ``strategy:`` section as its kind's checked, frozen settings.

    Raises:
        SpecError: an unknown kind or key, or a value that breaks its rule.
    """
    kind = section.get("kind", DEFAULT_KIND)
    if not known(kind, KINDS):
        raise fail(source, "strategy.kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    cls = KINDS[kind]
    return parse(cls.Settings, {**section, "kind": kind}, source, space)


def budget(settings, space) -> int:
    """How many trials a strategy with these settings runs over ``space``."""
    return KINDS[settings.kind].budget_of(settings, space)


def sample(space: SearchSpace, kind: str, n: int, seed: int) -> list[dict]:
    """The configurations a sweep of ``n`` trials with strategy ``kind`` would try,
    fixed parameters included (for grid, ``n`` is the budget that sets its points per
    parameter, and the seed is not used).

    Raises:
        ValueError: a kind not in ``SAMPLED``.
    """
    if kind not in SAMPLED:
        raise ValueError(f"strategy {kind!r} cannot sample ahead of results: expected one "
                         f"of {', '.join(SAMPLED)}")
    return [space.config_from_unit(row) for row in KINDS[kind].sample_unit(space, n, seed)]


def make_strategy(settings, space, metric: str, mode: str, seed: int,
                  state_file=None) -> Strategy:
    """The Strategy for a ``strategy:`` section (its settings, or the section itself)."""
    if isinstance(settings, Mapping):
        settings = parse_strategy(settings, "<strategy>", space)
    return KINDS[settings.kind].from_settings(settings, space, metric, mode, seed, state_file)


def searcher(strategy: str | Mapping = DEFAULT_KIND, space=None, *, metric: str | None = None,
             mode: str | None = None, seed: int = 0) -> Strategy:
    """A caviar strategy as a Ray Tune Searcher, for a plain ``tune.Tuner``::

        tune.TuneConfig(search_alg=searcher("coarse_to_fine", "space.yaml",
                                            metric="val_loss", mode="min"),
                        metric="val_loss", mode="min", num_samples=-1)

    It suggests configurations on the space's own scales (log, reverse_log, ...),
    plus ``_round`` and ``_seed``; a ``param_space`` given to the Tuner must hold
    constants only. ``num_samples=-1`` lets the strategy's budget end the run.

    Args:
        strategy: a kind (``"coarse_to_fine"``) or a sweep file's ``strategy:``
            section (``{"kind": "tpe", "trials": 64}``); keys left out take the sweep
            file's defaults.
        space: a SearchSpace, a search-space mapping (``{"parameters": {...}}``) or
            the path of a search-space YAML file.
        metric, mode: the result key to optimise and "min" or "max"; None leaves them
            to ``TuneConfig``.
        seed: the strategy's draws (the same seed suggests the same trials).

    Raises:
        SpecError: an unknown kind or key, a bad value, or a bad space.
    """
    if space is None:
        raise TypeError("searcher() needs a space: a SearchSpace, a mapping or a YAML path")
    if isinstance(space, (str, os.PathLike)):
        space = SearchSpace.from_file(space)
    elif isinstance(space, Mapping):
        space = SearchSpace.from_dict(space)
    section = {"kind": strategy} if isinstance(strategy, str) else dict(strategy)
    return make_strategy(section, space, metric, mode, seed)
