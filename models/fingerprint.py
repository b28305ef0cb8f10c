"""A data set's fingerprint, and how far today's data has drifted from it.

The fingerprint is what the re-tune job measures staleness against: per feature
its mean, std and a quantile histogram (the training data's deciles as bin edges,
and the share of rows in each bin), plus the class frequencies. It is JSON, kept
beside the model it describes (``fingerprint.json``).

Drift per feature is the population stability index (PSI) of today's rows over
the stored bins: sum over bins of (today - then) * ln(today / then). The usual
reading: below 0.1 stable, 0.1 to 0.25 some shift, above 0.25 a real shift.
Class drift is the total variation distance between the class frequencies.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

QUANTILES = np.linspace(0.1, 0.9, 9)  # deciles: ten bins
FLOOR = 1e-4  # an empty bin's share, so that ln() stays finite


def digest(data) -> str:
    """A sha256 of exactly what the trainer sees: every split's standardised rows and
    labels, and the class labels. One value changed in the data file changes it (and so
    does another split or normalisation): a re-run compares it before trusting a match."""
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    h.update(repr([str(c) for c in data.classes]).encode())
    return h.hexdigest()


def raw_rows(data) -> tuple[np.ndarray, np.ndarray]:
    """Every row of a Dataset, unstandardised (as the source gave it), and its labels."""
    x = np.concatenate([data.x_train, data.x_val, data.x_test]).astype(np.float64)
    y = np.concatenate([data.y_train, data.y_val, data.y_test])
    return x * data.std + data.mean, y


def _shares(x: np.ndarray, edges: list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(np.asarray(edges), x, side="right"),
                         minlength=len(edges) + 1)
    return np.maximum(counts / max(len(x), 1), FLOOR)


def fingerprint(x: np.ndarray, y: np.ndarray, classes: list, feature_names: list) -> dict:
    """The fingerprint of raw rows ``x`` (n, d) with class indices ``y`` (n,)."""
    features = []
    for j, name in enumerate(feature_names):
        col = x[:, j]
        edges = sorted(set(float(v) for v in np.quantile(col, QUANTILES)))
        features.append({"name": str(name), "mean": float(col.mean()), "std": float(col.std()),
                         "edges": edges, "shares": [float(s) for s in _shares(col, edges)]})
    freq = np.bincount(y, minlength=len(classes)) / max(len(y), 1)
    return {"rows": int(len(x)), "features": features,
            "classes": {str(c): float(f) for c, f in zip(classes, freq)}}


def psi(then: list[float], now: np.ndarray) -> float:
    then = np.maximum(np.asarray(then), FLOOR)
    return float(np.sum((now - then) * np.log(now / then)))


def drift(stored: dict, x: np.ndarray, y: np.ndarray, classes: list) -> dict:
    """How today's raw rows differ from a stored fingerprint.

    Returns ``{"psi": {feature: value}, "class_distance": tv, "new_classes": [...]}``;
    raises ValueError when today's rows have another number of features."""
    features = stored["features"]
    if x.shape[1] != len(features):
        raise ValueError(f"today's data has {x.shape[1]} features, the model's "
                         f"{len(features)}")
    values = {f["name"]: psi(f["shares"], _shares(x[:, j], f["edges"]))
              for j, f in enumerate(features)}
    freq_now = np.bincount(y, minlength=len(classes)) / max(len(y), 1)
    now = {str(c): float(f) for c, f in zip(classes, freq_now)}
    then = stored["classes"]
    labels = set(now) | set(then)
    tv = 0.5 * sum(abs(now.get(c, 0.0) - then.get(c, 0.0)) for c in labels)
    return {"psi": {k: round(v, 4) if math.isfinite(v) else v for k, v in values.items()},
            "class_distance": round(tv, 4),
            "new_classes": sorted(c for c in now if c not in then and now[c] > 0)}
