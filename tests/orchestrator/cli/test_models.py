"""``caviar predict``, ``promote`` and ``rollback`` (orchestrator/cli/models.py) on a real
model folder and a real registry in an embedded (sqlite) MLflow store.

A tiny net is trained and exported once for the module, logged to a run, and each
registry test registers two versions of it under a model name of its own.
"""

from __future__ import annotations

import itertools
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import assert_one_paragraph_error, run_main
from mlflow import MlflowClient

from models.config import HParams, MLPConfig
from models.data import DataSpec, load
from models.serving import export_model, load_model, predict
from models.train import TrainingRun, resolve_device
from orchestrator.tracking.registry import PREVIOUS, PRODUCTION, Lock, register_version
from orchestrator.tracking.store import artifact_root, embedded_uri, ensure_sqlite_store

ROWS = 12
_names = itertools.count(1)


pytestmark = pytest.mark.usefixtures("no_outside_services")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model folder from a 2-epoch fit, the raw rows to predict, and a store whose run
    holds the folder as its ``model`` artifacts."""
    tmp = tmp_path_factory.mktemp("models")
    data = load(DataSpec(source="synthetic", size=300, n_features=6, classes=3))
    run = TrainingRun(data, MLPConfig(hidden_units=16), HParams(lr=0.05), 0,
                      resolve_device("cpu"))
    for _ in range(2):
        run.train_epoch()
    model_dir = export_model(run.state_dict(), data, tmp / "model", metrics={"val_loss": 1.0})
    x_raw = data.x_test[:ROWS].astype(np.float64) * data.std + data.mean
    workdir = tmp / "w"
    uri = embedded_uri(workdir)
    ensure_sqlite_store(uri)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("cli-models", artifact_location=artifact_root(uri, workdir))
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    client.set_terminated(run_id)
    return {"tmp": tmp, "model": model_dir, "x": x_raw, "y": data.y_test[:ROWS],
            "names": list(data.feature_names), "workdir": workdir, "uri": uri,
            "client": client, "run_id": run_id}


@pytest.fixture
def registered(trained) -> str:
    """A registered model of the test's own with versions 1 and 2, no alias yet."""
    name = f"m{next(_names)}"
    for _ in range(2):
        register_version(trained["client"], name, trained["run_id"], {"caviar.kind": "test"})
    return name


def aliases(client, name: str) -> dict:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def write_csv(path, x: np.ndarray, columns: list, label=None):
    frame = pd.DataFrame(x, columns=columns)
    if label is not None:
        frame["label"] = label
    frame.to_csv(path, index=False)
    return path


def expected_lines(model_dir, x: np.ndarray) -> list[dict]:
    net, meta = load_model(model_dir)
    labels, probs = predict(net, meta, x)
    return [{"row": i, "class": label, "probabilities": dict(zip(map(str, meta["classes"]), p))}
            for i, (label, p) in enumerate(zip(labels, probs))]


def assert_predictions(out: str, expected: list[dict]) -> None:
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == len(expected) == ROWS
    for got, want in zip(lines, expected):
        assert got["row"] == want["row"] and got["class"] == want["class"]
        assert set(got["probabilities"]) == {"0", "1", "2"}
        assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        for c, p in want["probabilities"].items():
            assert got["probabilities"][c] == pytest.approx(float(p), abs=1e-6)
        top = max(got["probabilities"], key=got["probabilities"].get)
        assert int(top) == got["class"]


# --- predict ------------------------------------------------------------------------------

def test_predict_reads_a_csv_by_column_name_and_ignores_the_label(capsys, trained, tmp_path):
    names = trained["names"]
    shuffled = names[::-1]  # the columns in another order than training's
    x = trained["x"][:, [names.index(c) for c in shuffled]]
    path = write_csv(tmp_path / "rows.csv", x, shuffled, label=trained["y"])
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 0, err
    assert_predictions(out, expected_lines(trained["model"], trained["x"]))


def test_predict_reads_an_npz_with_x(capsys, trained, tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, X=trained["x"])
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 0, err
    assert_predictions(out, expected_lines(trained["model"], trained["x"]))


def test_predict_refuses_columns_it_cannot_match_by_name(capsys, trained, tmp_path):
    path = write_csv(tmp_path / "rows.csv", trained["x"], list("abcdef"))
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "rows.csv: no column is named after a feature",
                               "give the file a header row")
    names = trained["names"]
    path = write_csv(tmp_path / "more.csv", trained["x"], names, label=trained["y"])
    frame = pd.read_csv(path).assign(note=1.0)
    frame.to_csv(path, index=False)
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "column(s) note are not features of the model")


def test_predict_refuses_rows_with_nan_naming_them_or_reports_them_when_asked(
        capsys, trained, tmp_path):
    x = trained["x"].copy()
    x[2, 1], x[7, 0] = np.nan, np.inf
    path = write_csv(tmp_path / "holes.csv", x, trained["names"])
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "2 row(s) hold NaN or infinite values: 2 (x1), 7 (x0)",
                               "--skip-bad-rows")
    code, out, err = run_main(capsys, "predict", trained["model"], path, "--skip-bad-rows")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]  # valid JSON, every line
    assert [r["row"] for r in lines] == list(range(ROWS))
    assert lines[2] == {"row": 2, "error": "NaN or infinite value in 'x1'"}
    assert "error" in lines[7] and "class" in lines[0]
    whole = [i for i in range(ROWS) if i not in (2, 7)]
    want = expected_lines(trained["model"], trained["x"][whole])
    assert [lines[i]["class"] for i in whole] == [w["class"] for w in want]


@pytest.mark.parametrize("damage", ["weights", "hidden_units", "n_features"])
def test_predict_refuses_a_damaged_model_folder_with_exit_2(capsys, trained, tmp_path, damage):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained["model"], model)
    meta = json.loads((model / "model.json").read_text())
    if damage == "weights":
        import torch

        torch.save({"evil": object()}, model / "weights.pt")  # needs unpickling code
        fragments = ["weights.pt: not the weights of this model.json's net"]
    elif damage == "hidden_units":
        meta["model_config"]["hidden_units"] = 10**9  # would allocate before any check
        fragments = ["model.json: not a caviar model description", "hidden_units"]
    else:
        meta["n_features"] = "six"
        fragments = ["model.json: n_features and n_classes must be whole numbers"]
    (model / "model.json").write_text(json.dumps(meta))
    path = tmp_path / "rows.npz"
    np.savez(path, X=trained["x"])
    code, out, err = run_main(capsys, "predict", model, path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, *fragments)
    assert "weights_only=False" not in err


def test_predict_refuses_a_non_numeric_column(capsys, trained, tmp_path):
    path = write_csv(tmp_path / "words.csv", trained["x"], trained["names"])
    frame = pd.read_csv(path)
    frame["x3"] = "tall"
    frame.to_csv(path, index=False)
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "words.csv: column 'x3' is not numeric (e.g. 'tall')")


def test_predicted_classes_mostly_match_the_labels_after_training(capsys, trained, tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, X=trained["x"])
    _, out, _ = run_main(capsys, "predict", trained["model"], path)
    right = sum(json.loads(line)["class"] == int(y)
                for line, y in zip(out.splitlines(), trained["y"]))
    assert right >= ROWS // 2  # 3 balanced classes: chance is a third


def test_predict_with_a_models_uri_fetches_the_version_from_the_registry(capsys, trained,
                                                                        registered, tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, X=trained["x"])
    code, _, _ = run_main(capsys, "promote", registered, "--version", "1", "--tracking-uri",
                          trained["uri"])
    assert code == 0
    before = mlflow.get_tracking_uri()
    for uri in (f"models:/{registered}/2", f"models:/{registered}@production"):
        code, out, err = run_main(capsys, "predict", uri, path, "--tracking-uri", trained["uri"])
        assert code == 0, err
        assert_predictions(out, expected_lines(trained["model"], trained["x"]))
    assert mlflow.get_tracking_uri() == before  # the process's MLflow is left as it was


@pytest.mark.parametrize("case", ["missing", "missing-columns", "npz-without-x", "wrong-width"])
def test_predict_refuses_bad_data_with_exit_2(capsys, trained, tmp_path, case):
    names, x = trained["names"], trained["x"]
    if case == "missing":
        path, fragments = tmp_path / "nope.csv", ["nope.csv: no such file"]
    elif case == "missing-columns":
        path = write_csv(tmp_path / "rows.csv", x[:, 2:], names[2:], label=trained["y"])
        fragments = ["rows.csv: missing feature column(s) x0, x1",
                     "the model was trained on x0, x1, x2"]
    elif case == "npz-without-x":
        path = tmp_path / "rows.npz"
        np.savez(path, features=x)
        fragments = ["rows.npz: no array 'X' (the feature rows)"]
    else:
        path = tmp_path / "rows.npz"
        np.savez(path, X=x[:, :4])
        fragments = ["rows.npz: the model takes rows of 6 features",
                     "got an array of shape (12, 4)"]
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, *fragments)


def test_predict_refuses_a_csv_missing_a_feature_whose_label_makes_up_the_count(
        capsys, trained, tmp_path):
    """Named columns x0..x4 and a label: x5 is missing; the label must not stand in for it."""
    names, x = trained["names"], trained["x"]
    path = write_csv(tmp_path / "rows.csv", x[:, :5], names[:5], label=trained["y"])
    code, out, err = run_main(capsys, "predict", trained["model"], path)
    assert code == 2 and out == "", out[:300]
    assert_one_paragraph_error(err, "missing feature column(s) x5")


def test_predict_a_models_uri_the_store_lacks_is_bad_input(capsys, trained, tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, X=trained["x"])
    code, out, err = run_main(capsys, "predict", "models:/ghost/1", path,
                              "--workdir", trained["workdir"])
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, f"models:/ghost/1: cannot be fetched from {trained['uri']}")


def test_predict_a_models_uri_with_a_workdir_holding_no_store_creates_none(capsys, trained,
                                                                           tmp_path):
    path = tmp_path / "rows.npz"
    np.savez(path, X=trained["x"])
    code, out, err = run_main(capsys, "predict", "models:/m/1", path, "--workdir",
                              tmp_path / "fresh")
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "no MLflow store at sqlite:///", "pass --tracking-uri")
    assert not (tmp_path / "fresh" / "mlflow.db").exists()


# --- promote and rollback -----------------------------------------------------------------

def test_promote_then_rollback_move_production_and_previous(capsys, trained, registered):
    client, uri, name = trained["client"], trained["uri"], registered

    code, _, err = run_main(capsys, "promote", name, "--version", "1", "--tracking-uri", uri)
    assert code == 0
    assert err == f"caviar: {name!r} version 1 is now production\n"
    assert aliases(client, name) == {PRODUCTION: "1"}

    code, out, err = run_main(capsys, "promote", name, "--version", "2", "--tracking-uri", uri)
    assert code == 0 and out == ""
    assert err == (f"caviar: {name!r} version 2 is now production; version 1 is previous "
                   f"(undo: caviar rollback {name})\n")
    assert aliases(client, name) == {PRODUCTION: "2", PREVIOUS: "1"}

    code, _, err = run_main(capsys, "promote", name, "--version", "2", "--tracking-uri", uri)
    assert code == 0
    assert err == f"caviar: {name!r} version 2 is production already\n"
    assert aliases(client, name) == {PRODUCTION: "2", PREVIOUS: "1"}

    code, out, err = run_main(capsys, "rollback", name, "--tracking-uri", uri)
    assert code == 0 and out == ""
    assert err == f"caviar: {name!r} version 1 is production again; version 2 is previous\n"
    assert aliases(client, name) == {PRODUCTION: "1", PREVIOUS: "2"}
    # the re-tune job's cooldown starts at a rollback
    assert client.get_model_version(name, "1").tags.get("caviar.checked_at")
    # no lock is left behind
    assert not client.search_registered_models(filter_string=f"name = 'caviar-lock.{name}'")


def test_promote_finds_the_embedded_store_by_workdir(capsys, trained, registered):
    code, _, err = run_main(capsys, "promote", registered, "--version", "2",
                            "--workdir", trained["workdir"])
    assert code == 0, err
    assert aliases(trained["client"], registered) == {PRODUCTION: "2"}


@pytest.mark.parametrize(("args", "fragments"), [
    (["promote", "{name}", "--version", "9"], ["model '{name}' has no version 9"]),
    (["promote", "ghost", "--version", "1"], ["no registered model 'ghost'", "{name}"]),
    (["rollback", "{name}"], ["model '{name}' has no version with the alias 'production'",
                              "caviar promote {name} --version N"]),
    (["rollback", "ghost"], ["no registered model 'ghost'"]),
])
def test_promote_and_rollback_refuse_what_the_registry_lacks(capsys, trained, registered,
                                                             args, fragments):
    args = [a.format(name=registered) for a in args]
    code, out, err = run_main(capsys, *args, "--tracking-uri", trained["uri"])
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, *(f.format(name=registered) for f in fragments))
    assert aliases(trained["client"], registered) == {}


def test_rollback_without_a_previous_version_is_bad_input(capsys, trained, registered):
    uri = trained["uri"]
    assert run_main(capsys, "promote", registered, "--version", "1", "--tracking-uri", uri)[0] == 0
    code, _, err = run_main(capsys, "rollback", registered, "--tracking-uri", uri)
    assert code == 2
    assert_one_paragraph_error(err, f"model {registered!r} has no version with the alias "
                               "'previous': nothing to roll back to")
    assert aliases(trained["client"], registered) == {PRODUCTION: "1"}


@pytest.mark.parametrize("command", [["promote", "--version", "2"], ["rollback"]])
def test_promote_and_rollback_exit_3_while_the_model_is_locked(capsys, trained, registered,
                                                               command):
    client, uri = trained["client"], trained["uri"]
    client.set_registered_model_alias(registered, PRODUCTION, "1")
    client.set_registered_model_alias(registered, PREVIOUS, "2")
    with Lock(client, registered, what="test"):
        code, out, err = run_main(capsys, command[0], registered, *command[1:],
                                  "--tracking-uri", uri)
    assert code == 3 and out == ""
    assert err.startswith(f"caviar: locked: model {registered!r} is locked by test pid ")
    assert aliases(client, registered) == {PRODUCTION: "1", PREVIOUS: "2"}


def test_promote_on_a_missing_store_is_bad_input_and_creates_nothing(capsys, tmp_path):
    code, out, err = run_main(capsys, "promote", "m", "--version", "1", "--workdir", tmp_path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, f"no MLflow store at sqlite:///{tmp_path / 'mlflow.db'}",
                               "pass --tracking-uri, or the --workdir of the sweep")
    assert not (tmp_path / "mlflow.db").exists()
