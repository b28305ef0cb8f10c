"""Samplers over unit space: random, quasi-random and grid.

Each returns points of ``[0, 1]^d`` (d = the space's tuned parameters);
``SearchSpace.config_from_unit`` turns a point into a configuration, so every
sampler samples each parameter on its own scale without knowing which it is.
The strategies of the same names (``orchestrator.strategies``) draw with them.
"""

from __future__ import annotations

import itertools

import numpy as np

from searchspaces.space import SearchSpace


def random_unit(d: int, n: int, seed: int) -> np.ndarray:
    """``n`` points uniform on ``[0, 1]^d``: shape (n, d)."""
    return np.random.default_rng(seed).random((n, d))


def quasi_random_unit(d: int, n: int, seed: int) -> np.ndarray:
    """``n`` points of a scrambled Halton sequence: covers the cube more evenly than random.

    Halton rather than Sobol: Sobol's balance holds only for powers of two, and
    trial budgets rarely are.
    """
    if d == 0:
        return np.empty((n, 0))
    from scipy.stats import qmc  # here: scipy.stats costs 0.5 s to import, and every
    # process that imports searchspaces (each trial worker) would pay it for nothing

    return qmc.Halton(d=d, scramble=True, seed=seed).random(n)


def grid_points_per_parameter(n: int, d: int) -> int:
    """k = round(n ** (1/d)), at least 1: asked for 25 points over 2 parameters, 5 each."""
    return max(1, round(n ** (1.0 / d))) if d else 1


def grid_unit(space: SearchSpace, k: int) -> np.ndarray:
    """A grid of ``k`` points per tuned parameter, evenly spaced in unit space.

    On a log scale from 1e-4 to 1 with k = 5 that is 1e-4, 1e-3, ..., 1. Points
    that give the same value (an int range or a choice shorter than k) are
    kept once, so the grid has at most k**d points.
    """
    axis = np.array([0.5]) if k == 1 else np.linspace(0.0, 1.0, k)
    per_param = []
    for p in space.tuned:
        seen: dict = {}
        for u in axis:
            seen.setdefault(repr(p.from_unit(float(u))), float(u))
        per_param.append(list(seen.values()))
    if not per_param:
        return np.empty((1, 0))
    return np.array(list(itertools.product(*per_param)), dtype=float)
