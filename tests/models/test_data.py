"""Data: the built-in sets, user files, the stratified split, standardisation, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.data import DataError, DataSpec, load, prepare


@pytest.fixture(scope="module")
def digits():
    return load(DataSpec())


def _all_labels(ds) -> np.ndarray:
    return np.concatenate([ds.y_train, ds.y_val, ds.y_test])


# --- digits -----------------------------------------------------------------------------------

def test_digits_has_ten_classes_and_64_features(digits):
    assert digits.n_classes == 10 and digits.classes == list(range(10))
    assert digits.n_features == 64 and len(digits.feature_names) == 64
    assert len(_all_labels(digits)) == 1797  # sklearn's digits: nothing lost, nothing doubled
    for x, y in [(digits.x_train, digits.y_train), (digits.x_val, digits.y_val),
                 (digits.x_test, digits.y_test)]:
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), 64)
    assert digits.mean.shape == digits.std.shape == (64,)


def test_digits_split_is_stratified(digits):
    overall = np.bincount(_all_labels(digits), minlength=10) / len(_all_labels(digits))
    for y, fraction in [(digits.y_train, 0.6), (digits.y_val, 0.2), (digits.y_test, 0.2)]:
        counts = np.bincount(y, minlength=10)
        assert (counts > 0).all()  # every class in every split
        np.testing.assert_allclose(counts / len(y), overall, atol=0.01)
        assert len(y) / 1797 == pytest.approx(fraction, abs=0.01)


def test_digits_training_split_is_standardised(digits):
    mean = digits.x_train.mean(axis=0)
    std = digits.x_train.std(axis=0)
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    # Pixels that never vary in the training split (std 0, kept as 1) stay 0, not NaN.
    constant = std < 1e-6
    assert 0 < constant.sum() < 64
    assert (digits.x_train[:, constant] == 0).all() and (digits.std[constant] == 1).all()
    np.testing.assert_allclose(std[~constant], 1.0, rtol=1e-4)
    assert np.isfinite(digits.x_val).all() and np.isfinite(digits.x_test).all()


def test_same_seed_same_split_other_seed_other_split():
    a = load(DataSpec(seed=3))
    b = load(DataSpec(seed=3))
    c = load(DataSpec(seed=4))
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.y_train, c.y_train)
    assert not np.array_equal(a.mean, c.mean)


# --- prepare: the split and the training split's statistics -----------------------------------

def _identifiable(n_per_class=(10, 12, 8), d=3, seed=0):
    """Rows whose first feature is the row's index, so a split row can be traced back."""
    rng = np.random.default_rng(seed)
    n = sum(n_per_class)
    x = np.column_stack([np.arange(n, dtype=np.float64), rng.normal(5.0, 3.0, size=(n, d - 1))])
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    return x, y


def _row_ids(ds, split):
    raw = getattr(ds, f"x_{split}")[:, 0].astype(np.float64) * ds.std[0] + ds.mean[0]
    return np.rint(raw).astype(int)


def test_prepare_standardises_with_the_training_rows_statistics():
    x, y = _identifiable()
    ds = prepare(x, y, ["id", "a", "b"], seed=1)
    train = _row_ids(ds, "train")
    val, test = _row_ids(ds, "val"), _row_ids(ds, "test")
    # A partition of the rows, labels carried along.
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(x)))
    np.testing.assert_array_equal(ds.y_train, y[train])
    np.testing.assert_array_equal(ds.y_val, y[val])
    # Mean and std are the raw *training* rows' (population std), not all rows'.
    np.testing.assert_allclose(ds.mean, x[train].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ds.std, x[train].std(axis=0), rtol=1e-6)
    assert not np.allclose(ds.mean, x.mean(axis=0), rtol=1e-3)
    # Every split is transformed with those same statistics.
    for split, ids in [("train", train), ("val", val), ("test", test)]:
        expected = (x[ids] - x[train].mean(axis=0)) / x[train].std(axis=0)
        np.testing.assert_allclose(getattr(ds, f"x_{split}"), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, rtol=1e-5)
    assert ds.feature_names == ["id", "a", "b"]


def test_prepare_split_sizes_per_class():
    x, y = _identifiable(n_per_class=(10, 20, 3))
    ds = prepare(x, y, ["id", "a", "b"], val_fraction=0.2, test_fraction=0.2)
    for c, n in enumerate((10, 20, 3)):
        sizes = [int((s == c).sum()) for s in (ds.y_train, ds.y_val, ds.y_test)]
        assert sum(sizes) == n
        assert min(sizes) >= 1  # even the 3-row class reaches every split
    assert [int((ds.y_test == c).sum()) for c in range(3)] == [2, 4, 1]


def test_prepare_constant_feature_stays_zero():
    x, y = _identifiable()
    x[:, 2] = 7.0
    ds = prepare(x, y, ["id", "a", "const"])
    assert ds.std[2] == 1.0
    for split in (ds.x_train, ds.x_val, ds.x_test):
        assert (split[:, 2] == 0).all()


def test_prepare_label_order_gives_class_indices():
    x, _ = _identifiable(n_per_class=(5, 5))
    y = np.array(["dog"] * 5 + ["cat"] * 5)
    ds = prepare(x, y, ["id", "a", "b"])
    assert ds.classes == ["cat", "dog"]  # sorted; class index i is classes[i]
    ids = _row_ids(ds, "train")
    np.testing.assert_array_equal(np.array(ds.classes)[ds.y_train], y[ids])


# --- synthetic ----------------------------------------------------------------------------------

def test_synthetic_honours_size_features_classes():
    spec = DataSpec.from_dict({"source": "synthetic", "size": 300, "n_features": 7, "classes": 4,
                               "seed": 5})
    ds = load(spec)
    assert ds.n_features == 7 and ds.n_classes == 4 and ds.classes == [0, 1, 2, 3]
    assert len(_all_labels(ds)) == 300
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert set(np.unique(y)) == {0, 1, 2, 3}


def test_synthetic_is_seeded():
    a = load(DataSpec(source="synthetic", size=200, seed=1))
    b = load(DataSpec(source="synthetic", size=200, seed=1))
    c = load(DataSpec(source="synthetic", size=200, seed=2))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.mean, c.mean)


# --- user files ---------------------------------------------------------------------------------

def _pets(n=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "weight": rng.normal(10, 3, n),
        "age": rng.integers(1, 15, n),
        "kind": ["cat", "dog", "dog"] * (n // 3),
    })


def _check_pets(ds, frame):
    assert ds.classes == ["cat", "dog"]  # the original labels, in class-index order
    assert ds.n_features == 2 and ds.feature_names == ["weight", "age"]
    assert len(_all_labels(ds)) == len(frame)
    counts = np.bincount(_all_labels(ds))
    assert counts.tolist() == [(frame["kind"] == "cat").sum(), (frame["kind"] == "dog").sum()]
    ids_w = ds.x_train[:, 0] * ds.std[0] + ds.mean[0]  # raw weights of the training rows
    for w, label in zip(ids_w, ds.y_train):
        row = frame.iloc[int(np.argmin(np.abs(frame["weight"].to_numpy() - w)))]
        assert row["kind"] == ds.classes[label]


def test_csv_with_string_labels(tmp_path):
    frame = _pets()
    frame.to_csv(tmp_path / "pets.csv", index=False)
    ds = load(DataSpec.from_dict({"source": "csv", "path": str(tmp_path / "pets.csv"),
                                  "label": "kind"}))
    _check_pets(ds, frame)


def test_parquet_with_string_labels(tmp_path):
    frame = _pets()
    frame.to_parquet(tmp_path / "pets.parquet")
    ds = load(DataSpec.from_dict({"source": "parquet", "path": str(tmp_path / "pets.parquet"),
                                  "label": "kind"}))
    _check_pets(ds, frame)


def test_npz_with_named_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4))
    y = np.array(["cat", "dog", "emu"] * 8)
    np.savez(tmp_path / "d.npz", feats=x, target=y)
    ds = load(DataSpec(source="npz", path=str(tmp_path / "d.npz"), features="feats",
                       label="target"))
    assert ds.classes == ["cat", "dog", "emu"] and ds.n_features == 4
    assert len(_all_labels(ds)) == 24


def test_npz_defaults_to_X_and_y(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.savez(tmp_path / "d.npz", X=x, y=np.array([3, 7] * 10))
    ds = load(DataSpec(source="npz", path=str(tmp_path / "d.npz")))
    assert ds.classes == [3, 7] and ds.n_features == 3


def test_relative_path_is_found_from_base_dir(tmp_path):
    _pets().to_csv(tmp_path / "pets.csv", index=False)
    ds = load(DataSpec(source="csv", path="pets.csv", label="kind"), base_dir=tmp_path)
    assert ds.classes == ["cat", "dog"]


# --- bad input: a DataError saying what and where -----------------------------------------------

def _write_csv(path, text: str):
    path.write_text(text)
    return str(path)


def _rows(n=12) -> str:
    return "".join(f"{i},{i * 2.5},{'ab'[i % 2]}\n" for i in range(n))


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        load(DataSpec(source="csv", path=missing, label="y"))


def test_missing_file_relative_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file \(also looked in .*\)"):
        load(DataSpec(source="csv", path="nope.csv", label="y"), base_dir=tmp_path)


def test_missing_label_column_lists_the_columns(tmp_path):
    path = _write_csv(tmp_path / "d.csv", "a,b,kind\n" + _rows())
    with pytest.raises(DataError,
                       match=r"no label column 'y'; the columns are 'a', 'b', 'kind' \(a file"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_missing_label_column_parquet(tmp_path):
    _pets().to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"no label column 'label'.*'weight', 'age', 'kind'"):
        load(DataSpec(source="parquet", path=str(tmp_path / "p.parquet"), label="label"))


def test_non_numeric_feature_is_named(tmp_path):
    text = "a,colour,y\n" + "".join(f"{i},{'red' if i % 2 else 'blue'},{i % 2}\n"
                                     for i in range(12))
    path = _write_csv(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=r"column 'colour' is not numeric \(e\.g\. 'blue'\)"):
        load(DataSpec(source="csv", path=path, label="y"))


@pytest.mark.parametrize("bad", ["", "nan", "inf", "-inf"])
def test_nan_and_inf_features_name_the_feature(tmp_path, bad):
    text = "a,b,y\n" + "".join(f"{i},{bad if i == 5 else i},{i % 2}\n" for i in range(12))
    path = _write_csv(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=r"feature 'b' has 1 NaN or infinite values "
                                        r"\(first at row 5\)"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_nan_feature_in_npz_is_named(tmp_path):
    x = np.ones((12, 3))
    x[4, 2] = np.nan
    np.savez(tmp_path / "d.npz", X=x, y=np.array([0, 1] * 6))
    with pytest.raises(DataError, match=r"feature 'x2' has 1 NaN"):
        load(DataSpec(source="npz", path=str(tmp_path / "d.npz")))


def test_empty_label_is_an_error(tmp_path):
    text = "a,y\n" + "".join(f"{i},{'' if i == 3 else i % 2}\n" for i in range(12))
    path = _write_csv(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=r"label column 'y' has 1 empty values"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_nan_label_in_npz_is_an_error(tmp_path):
    # The CSV path rejects empty labels; a NaN label in an .npz must not become a class "nan".
    y = np.array([0.0, 1.0, 0.0, 1.0, np.nan, np.nan] * 3)
    np.savez(tmp_path / "d.npz", X=np.ones((18, 2)), y=y)
    with pytest.raises(DataError, match=r"(?i)label"):
        load(DataSpec(source="npz", path=str(tmp_path / "d.npz")))


def test_fewer_than_two_classes(tmp_path):
    text = "a,y\n" + "".join(f"{i},same\n" for i in range(12))
    path = _write_csv(tmp_path / "d.csv", text)
    with pytest.raises(DataError, match=r"the labels hold 1 class; a classifier needs at least 2"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_class_too_small_to_split(tmp_path):
    text = "a,y\n" + "".join(f"{i},{'rare' if i < 2 else 'common'}\n" for i in range(12))
    path = _write_csv(tmp_path / "d.csv", text)
    with pytest.raises(DataError,
                       match=r"class 'rare' has 2 row\(s\); each class needs at least 3"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_empty_csv_file(tmp_path):
    path = _write_csv(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_csv_with_header_but_no_rows(tmp_path):
    path = _write_csv(tmp_path / "h.csv", "a,b,y\n")
    with pytest.raises(DataError, match=r"h\.csv: the file has a header but no rows"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_csv_with_only_the_label_column(tmp_path):
    path = _write_csv(tmp_path / "l.csv", "y\n" + "".join(f"{i % 2}\n" for i in range(12)))
    with pytest.raises(DataError, match=r"no feature columns besides the label 'y'"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_unreadable_parquet(tmp_path):
    path = _write_csv(tmp_path / "bad.parquet", "this is not parquet\n")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot be read as parquet"):
        load(DataSpec(source="parquet", path=path, label="y"))


def test_npz_missing_array_lists_the_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((6, 2)), target=np.zeros(6))
    with pytest.raises(DataError, match=r"no array 'y'; the file has X, target"):
        load(DataSpec(source="npz", path=str(tmp_path / "d.npz")))


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"sorce": "digits"}, r"data: unknown key 'sorce'; allowed keys are source, path"),
        ({"source": "excel"}, r"key 'source': must be one of digits, synthetic, csv, parquet, "
                              r"npz, got 'excel'"),
        ({"source": "csv", "path": "d.csv"}, r"source 'csv' needs 'label'"),
        ({"source": "parquet", "path": "d.parquet"}, r"source 'parquet' needs 'label'"),
        ({"source": "csv", "label": "y"}, r"source 'csv' needs 'path'"),
        ({"source": "npz"}, r"source 'npz' needs 'path'"),
        ({"label": 3}, r"key 'label': must be a string, got 3"),
        ({"size": -1}, r"key 'size': must be a whole number >= 0, got -1"),
        ({"seed": True}, r"key 'seed': must be a whole number"),
        ({"val_fraction": 0.5}, r"key 'val_fraction': must be a fraction in \(0, 0\.5\)"),
        ({"test_fraction": 0}, r"key 'test_fraction': must be a fraction"),
    ],
)
def test_bad_spec(d, match):
    with pytest.raises(DataError, match=match):
        DataSpec.from_dict(d)


def test_bad_spec_names_where():
    with pytest.raises(DataError, match=r"^sweep\.yaml: data: unknown key 'colour'"):
        DataSpec.from_dict({"colour": 1}, where="sweep.yaml: data")


def test_spec_round_trips():
    spec = DataSpec.from_dict({"source": "csv", "path": "d.csv", "label": "y", "seed": 4})
    assert DataSpec.from_dict(spec.to_dict()) == spec
    assert DataSpec.from_dict(None) == DataSpec()


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"classes": 1}, r"key 'classes': synthetic data needs at least 2, got 1"),
        ({"n_features": 1}, r"key 'n_features': needs at least 2, got 1"),
        # Both pass DataSpec.from_dict, so load must turn them into DataErrors too.
        ({"size": 0}, r"(?i)size"),
        ({"classes": 10, "n_features": 3}, r"(?i)classes|n_features"),
    ],
)
def test_bad_synthetic_spec(d, match):
    spec = DataSpec.from_dict({"source": "synthetic", **d})
    with pytest.raises(DataError, match=match):
        load(spec)


def test_a_long_or_headerless_first_line_is_not_echoed_whole(tmp_path):
    header = ",".join(f"{0.123456789 * i:.9f}" for i in range(60)) + ",9\n"
    path = _write_csv(tmp_path / "no-header.csv", header + header)
    with pytest.raises(DataError) as e:
        load(DataSpec(source="csv", path=path, label="label"))
    message = str(e.value)
    assert "and 53 more" in message and len(message) < 400
    assert "first row taken as the column names" in message


def test_errors_about_the_rows_name_the_file(tmp_path):
    path = _write_csv(tmp_path / "holes.csv", "a,b,y\n" + "".join(
        f"{i},{'' if i == 4 else i},{i % 2}\n" for i in range(12)))
    with pytest.raises(DataError, match=r"holes.csv: feature 'b' has 1 NaN or infinite"):
        load(DataSpec(source="csv", path=path, label="y"))


def test_a_data_path_that_is_no_regular_file_is_refused(tmp_path):
    folder = tmp_path / "table.csv"
    folder.mkdir()  # a folder named like a table
    with pytest.raises(DataError, match="is not a regular file"):
        load(DataSpec(source="csv", path=str(folder), label="y"))
