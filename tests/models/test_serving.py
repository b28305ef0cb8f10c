"""A trained model as files (models/serving.py): export, load, predict, and reading rows to score.

One tiny net is trained once per module (models.train.fit, 2 epochs on synthetic
data with string class labels and scaled features, so the stored normalisation
and the label mapping both matter) and exported to a folder the tests share.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import make_classification

from models.config import HParams, MLPConfig
from models.data import DataError, prepare
from models.serving import FINGERPRINT, META, WEIGHTS, export_model, load_model, predict, read_rows
from models.train import fit

NAMES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
LABELS = np.array(["ant", "bee", "cat"])
CONFIG = MLPConfig(hidden_units=8, layers=1)
HPARAMS = HParams(lr=0.05, batch_size=32)
METRICS = {"val_loss": 0.61, "val_accuracy": 0.8, "test_accuracy": 0.75}


@pytest.fixture(scope="module")
def data():
    x, y = make_classification(n_samples=300, n_features=6, n_informative=3, n_redundant=0,
                               n_classes=3, n_clusters_per_class=1, random_state=0)
    # far from standardised: a model that forgot its mean and std would predict differently
    x = x * np.array([1.0, 10.0, 100.0, 0.1, 5.0, 2.0]) + np.array([0, 50, -300, 1, 7, 0])
    return prepare(x, LABELS[y], NAMES, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    """(the fit's result, the trainer's checkpoint after its last epoch)."""
    states = []
    result = fit(data, CONFIG, HPARAMS, epochs=2, seed=7, device="cpu",
                 callback=lambda metrics, run: states.append(run.state_dict()))
    assert result.status == "completed" and len(states) == 2
    return result, states[-1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data, trained):
    out = tmp_path_factory.mktemp("serving") / "model"
    assert export_model(trained[1], data, out, metrics=METRICS) == out
    return out


def raw(x_standardised, data) -> np.ndarray:
    """Rows as a user has them: the standardisation undone."""
    return x_standardised.astype(np.float64) * data.std + data.mean


# --- export and load -------------------------------------------------------------------

def test_export_writes_weights_meta_and_fingerprint(model_dir):
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([WEIGHTS, META, FINGERPRINT])


def test_model_json_holds_what_serving_needs(model_dir, data):
    meta = json.loads((model_dir / META).read_text())
    assert meta["format"] == 1
    assert meta["model_config"] == asdict(CONFIG)
    assert meta["hparams"] == asdict(HPARAMS)
    assert (meta["n_features"], meta["n_classes"]) == (6, 3)
    assert (meta["epoch"], meta["seed"]) == (2, 7)
    assert meta["classes"] == ["ant", "bee", "cat"]
    assert meta["feature_names"] == NAMES
    assert meta["mean"] == pytest.approx(data.mean.tolist(), rel=1e-6)
    assert meta["std"] == pytest.approx(data.std.tolist(), rel=1e-6)
    assert meta["metrics"] == METRICS


def test_export_without_metrics_stores_an_empty_mapping(tmp_path, data, trained):
    export_model(trained[1], data, tmp_path / "m")
    assert json.loads((tmp_path / "m" / META).read_text())["metrics"] == {}


def test_fingerprint_is_of_the_raw_training_rows(model_dir, data):
    fp = json.loads((model_dir / FINGERPRINT).read_text())
    assert fp["rows"] == len(data.x_train)
    assert [f["name"] for f in fp["features"]] == NAMES
    x_raw = raw(data.x_train, data)
    assert [f["mean"] for f in fp["features"]] == pytest.approx(x_raw.mean(axis=0).tolist(),
                                                                rel=1e-5, abs=1e-5)
    assert set(fp["classes"]) == {"ant", "bee", "cat"}


def test_weights_load_without_unpickling_code(model_dir, trained):
    weights = torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True)
    expected = trained[1]["model"]
    assert weights.keys() == expected.keys()
    for key in expected:
        assert torch.equal(weights[key], expected[key]), key


def test_load_model_gives_the_trained_net_in_eval_mode(model_dir, trained):
    net, meta = load_model(model_dir)
    assert not net.training
    assert net.config == CONFIG
    assert meta["classes"] == ["ant", "bee", "cat"]
    trained_weights = trained[0].model.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, trained_weights[key].cpu()), key


# --- predict ---------------------------------------------------------------------------

def test_predict_on_raw_rows_matches_the_net_on_standardised_rows(model_dir, data, trained):
    net, meta = load_model(model_dir)
    labels, probs = predict(net, meta, raw(data.x_test, data))
    expected = trained[0].model.predict_proba(torch.as_tensor(data.x_test)).numpy()
    assert probs.shape == (len(data.x_test), 3)
    assert probs == pytest.approx(expected, abs=1e-5)
    assert labels == [meta["classes"][i] for i in expected.argmax(axis=1)]
    assert set(labels) <= {"ant", "bee", "cat"}
    assert probs.sum(axis=1) == pytest.approx(np.ones(len(probs)), abs=1e-6)


def test_predict_takes_plain_lists(model_dir, data):
    net, meta = load_model(model_dir)
    rows = raw(data.x_test[:3], data)
    assert predict(net, meta, rows.tolist())[0] == predict(net, meta, rows)[0]


@pytest.mark.parametrize("shape", [(4, 5), (4, 7), (6,), (2, 3, 6)])
def test_predict_refuses_rows_of_the_wrong_shape(model_dir, shape):
    net, meta = load_model(model_dir)
    with pytest.raises(ValueError, match=re.escape(
            f"the model takes rows of 6 features (alpha, beta, gamma, delta, epsilon...), "
            f"got shape {shape}")):
        predict(net, meta, np.zeros(shape))


# --- read_rows -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    return np.random.default_rng(0).normal(size=(5, 6)).round(6)


def test_read_rows_reorders_csv_columns_to_the_models_order(tmp_path, rows):
    frame = pd.DataFrame(rows, columns=NAMES)
    frame["label"] = ["ant"] * 5
    shuffled = frame[["zeta", "label", "beta", "alpha", "epsilon", "delta", "gamma"]]
    path = tmp_path / "today.csv"
    shuffled.to_csv(path, index=False)
    out = read_rows(path, NAMES)
    assert out.shape == (5, 6)
    assert np.array_equal(out, rows)


def test_read_rows_refuses_extra_columns_but_the_label(tmp_path, rows):
    frame = pd.DataFrame(rows, columns=NAMES).assign(label="bee", note=1.5, row_id=range(5))
    path = tmp_path / "extra.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column\(s\) note, row_id are not features of the "
                                        r"model \(nor its label 'label'\)"):
        read_rows(path, NAMES)
    frame.drop(columns=["note", "row_id"]).rename(columns={"label": "kind"}).to_csv(
        path, index=False)
    assert np.array_equal(read_rows(path, NAMES, label="kind"), rows)


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_read_rows_reads_parquet(tmp_path, rows, suffix):
    path = tmp_path / f"today{suffix}"
    pd.DataFrame(rows[:, ::-1], columns=NAMES[::-1]).assign(label="cat").to_parquet(path)
    assert np.array_equal(read_rows(path, NAMES), rows)


def test_read_rows_reads_the_x_array_of_an_npz(tmp_path, rows):
    path = tmp_path / "today.npz"
    np.savez(path, X=rows, y=np.zeros(5))
    assert np.array_equal(read_rows(path, NAMES), rows)


def test_read_rows_never_takes_named_columns_by_position(tmp_path, rows):
    """Columns of the right count but other names (renamed, a headerless file, 5 features
    and a label) were once taken in order: wrong classes with exit 0."""
    path = tmp_path / "unnamed.csv"
    pd.DataFrame(rows, columns=[f"c{i}" for i in range(6)]).to_csv(path, index=False)
    with pytest.raises(DataError, match="no column is named after a feature the model knows"):
        read_rows(path, NAMES)
    np.savetxt(path, rows, delimiter=",")  # no header: its first row becomes the names
    with pytest.raises(DataError, match="give the file a header row with those names"):
        read_rows(path, NAMES)
    renamed = pd.DataFrame(rows, columns=[*NAMES[:5], "zeta2"])
    renamed.to_csv(path, index=False)
    with pytest.raises(DataError, match="missing feature column.s. zeta"):
        read_rows(path, NAMES)


def test_read_rows_takes_an_npz_by_position_only_with_one_column_per_feature(tmp_path, rows):
    path = tmp_path / "narrow.npz"
    np.savez(path, X=rows[:, :5])
    with pytest.raises(DataError, match=r"takes rows of 6 features .*shape \(5, 5\)"):
        read_rows(path, NAMES)


def test_bad_rows_are_named_with_their_first_bad_feature(rows):
    from models.serving import bad_rows

    x = rows.astype(float).copy()
    x[1, 2], x[3, 0], x[3, 4] = np.nan, np.inf, np.nan
    assert bad_rows(x, NAMES) == {1: "gamma", 3: "alpha"}


def test_read_rows_output_feeds_predict(tmp_path, model_dir, data):
    net, meta = load_model(model_dir)
    x = raw(data.x_test, data)
    path = tmp_path / "test.csv"
    pd.DataFrame(x[:, ::-1], columns=NAMES[::-1]).to_csv(path, index=False)
    assert predict(net, meta, read_rows(path, NAMES))[0] == predict(net, meta, x)[0]


def _write_bad(tmp_path, case: str):
    if case == "missing-file":
        return tmp_path / "nowhere.csv"
    if case == "npz-without-x":
        path = tmp_path / "rows.npz"
        np.savez(path, features=np.zeros((2, 6)))
        return path
    if case == "missing-columns":
        path = tmp_path / "rows.csv"
        pd.DataFrame(np.zeros((2, 3)), columns=["alpha", "beta", "other"]).to_csv(path,
                                                                                 index=False)
        return path
    if case == "ragged-csv":
        path = tmp_path / "rows.csv"
        path.write_text("alpha,beta\n1,2\n1,2,3,4,5\n")
        return path
    if case == "binary-csv":
        path = tmp_path / "rows.csv"
        path.write_bytes(b"\xff\xfe\x00\x81\x9c" * 50)
        return path
    if case == "empty-csv":
        path = tmp_path / "rows.csv"
        path.write_text("")
        return path
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "message"), [
    ("missing-file", ": no such file"),
    ("npz-without-x", ": no array 'X' (the feature rows)"),
    ("missing-columns", ": missing feature column(s) gamma, delta, epsilon, zeta; the model "
                        "was trained on alpha, beta, gamma, delta, epsilon, zeta"),
    ("ragged-csv", ": cannot be read as csv (ParserError: "),
    ("binary-csv", ": cannot be read as csv ("),
    ("empty-csv", ": the file is empty"),
])
def test_read_rows_refuses_bad_files_naming_the_path(tmp_path, case, message):
    path = _write_bad(tmp_path, case)
    with pytest.raises(DataError, match="^" + re.escape(f"{path}{message}")):
        read_rows(path, NAMES)


def test_read_rows_errors_are_value_errors(tmp_path):
    # the CLI maps ValueErrors to exit 2: DataError must stay one
    with pytest.raises(ValueError, match="no such file"):
        read_rows(tmp_path / "nowhere.parquet", NAMES)
