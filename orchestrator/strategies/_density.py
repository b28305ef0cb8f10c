"""TPE's criterion in unit space: how much likelier a point is under the good trials
than under the others (Parzen estimators: one Gaussian kernel per trial, per
parameter a bandwidth from the points' spread by Scott's rule)."""

from __future__ import annotations

import math

import numpy as np

MIN_BANDWIDTH = 0.01  # of the unit interval


def bandwidths(points: np.ndarray) -> np.ndarray:
    """Per parameter: Scott's rule on the points' spread, at least ``MIN_BANDWIDTH``
    (one point, or points that agree, get a tenth of the interval)."""
    n, d = points.shape
    spread = points.std(axis=0) if n > 1 else np.zeros(d)
    spread = np.where(spread > 0, spread, 0.1)
    return np.maximum(MIN_BANDWIDTH, 1.06 * spread * n ** (-1.0 / (4 + d)))


def log_density(points: np.ndarray, at: np.ndarray) -> np.ndarray:
    """log of the kernel density of ``at`` (k, d) under ``points`` (n, d); zeros if n = 0."""
    if len(points) == 0:
        return np.zeros(len(at))
    bw = bandwidths(points)
    z = (at[:, None, :] - points[None, :, :]) / bw
    log_k = -0.5 * (z ** 2).sum(axis=-1) - np.log(bw).sum()
    top = log_k.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(log_k - top).sum(axis=1)) - math.log(len(points))


def best_by_ratio(candidates: np.ndarray, good: np.ndarray, others: np.ndarray) -> int:
    """The index of the candidate with the highest good-to-others density ratio."""
    score = log_density(good, candidates) - log_density(others, candidates)
    return int(np.argmax(score))
