"""Data fingerprints and drift (PSI per feature, class distance)."""

from __future__ import annotations

import numpy as np
import pytest

from models.fingerprint import drift, fingerprint

CLASSES = ["a", "b", "c"]
NAMES = [f"f{i}" for i in range(6)]


def rows(n: int, seed: int, shift: float = 0.0, scale: float = 1.0, features=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(NAMES)))
    for j in features:
        x[:, j] = x[:, j] * scale + shift
    y = rng.integers(0, 3, size=n)
    return x, y


def test_the_same_population_does_not_drift():
    fp = fingerprint(*rows(5000, 0, features=()), CLASSES, NAMES)
    d = drift(fp, *rows(5000, 1, features=()), CLASSES)
    assert max(d["psi"].values()) < 0.05
    assert d["class_distance"] < 0.05 and d["new_classes"] == []


def test_shifted_and_rescaled_features_drift_and_the_others_do_not():
    fp = fingerprint(*rows(5000, 0, features=()), CLASSES, NAMES)
    d = drift(fp, *rows(5000, 1, shift=1.0, scale=2.0), CLASSES)
    assert all(d["psi"][f"f{j}"] > 0.25 for j in (0, 1, 2))
    assert all(d["psi"][f"f{j}"] < 0.05 for j in (3, 4, 5))


def test_class_frequencies_that_moved_are_measured():
    x, y = rows(3000, 0, features=())
    fp = fingerprint(x, y, CLASSES, NAMES)
    y_now = np.where(np.arange(len(y)) % 2 == 0, 0, y)  # half the rows now class "a"
    d = drift(fp, x, y_now, CLASSES)
    assert d["class_distance"] > 0.25


def test_the_fingerprint_is_plain_json_with_deciles():
    import json

    x, y = rows(1000, 0, features=())
    fp = json.loads(json.dumps(fingerprint(x, y, CLASSES, NAMES)))
    f0 = fp["features"][0]
    assert len(f0["edges"]) == 9 and len(f0["shares"]) == 10
    assert sum(f0["shares"]) == pytest.approx(1.0, abs=1e-3)
    assert f0["mean"] == pytest.approx(x[:, 0].mean())
    assert set(fp["classes"]) == set(CLASSES)


def test_constant_features_and_another_width_are_handled():
    x, y = rows(500, 0, features=())
    x[:, 0] = 3.0
    fp = fingerprint(x, y, CLASSES, NAMES)
    assert drift(fp, x, y, CLASSES)["psi"]["f0"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="6"):
        drift(fp, x[:, :4], y, CLASSES)


def test_the_digest_is_stable_and_changes_with_one_value():
    from models.data import DataSpec, load
    from models.fingerprint import digest

    spec = DataSpec(source="synthetic", size=200, n_features=4, classes=2)
    a, b = load(spec), load(spec)
    assert digest(a) == digest(b) and len(digest(a)) == 64
    b.x_train[3, 1] += 1e-6
    assert digest(a) != digest(b)
    assert digest(load(DataSpec(source="synthetic", size=200, n_features=4, classes=2,
                                seed=1))) != digest(a)
