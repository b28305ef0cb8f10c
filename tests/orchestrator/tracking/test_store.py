"""Where MLflow is (orchestrator/tracking/store.py): the tracking URI a command uses, the
embedded sqlite store and its artifacts folder, refusing a store that is not there, and
creating one whole."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.tracking.store import (
    StoreMissing,
    artifact_root,
    check_store,
    embedded_uri,
    ensure_sqlite_store,
    registry_client,
    resolve_uri,
    store_missing,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An embedded store made by ensure_sqlite_store in a folder of its own:
    (the folder, its URI)."""
    workdir = tmp_path_factory.mktemp("store") / "w"
    uri = embedded_uri(workdir)
    ensure_sqlite_store(uri)
    return workdir, uri


def test_the_embedded_store_is_mlflow_db_in_the_absolute_workdir(tmp_path):
    assert embedded_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert embedded_uri(str(tmp_path / "a" / ".." / "w")) == \
        f"sqlite:///{tmp_path.resolve()}/w/mlflow.db"
    assert embedded_uri("w") == f"sqlite:///{Path.cwd().resolve()}/w/mlflow.db"
    assert embedded_uri("~/w") == f"sqlite:///{Path.home().resolve()}/w/mlflow.db"


@pytest.mark.parametrize("explicit, env, from_file, expected", [
    ("http://flag:5000", "http://env:5000", "http://file:5000", "http://flag:5000"),
    (None, "http://env:5000", "http://file:5000", "http://env:5000"),
    (None, None, "http://file:5000", "http://file:5000"),
    (None, "", "http://file:5000", "http://file:5000"),  # set but empty: not a URI
    ("http://flag:5000", None, None, "http://flag:5000"),
    (None, None, None, "embedded"),
], ids=["flag-first", "env-before-file", "file", "empty-env", "flag-alone", "embedded"])
def test_the_tracking_uri_is_the_flag_then_the_environment_then_the_file_then_embedded(
        monkeypatch, tmp_path, explicit, env, from_file, expected):
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    if expected == "embedded":
        expected = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_uri(explicit, from_file, tmp_path) == expected


def test_only_an_embedded_store_without_its_file_is_missing(tmp_path, store):
    _, uri = store
    assert store_missing(f"sqlite:///{tmp_path}/mlflow.db")
    assert not store_missing(uri)
    assert not store_missing("http://127.0.0.1:1")  # a server is not looked for here
    assert not store_missing("postgresql://u@127.0.0.1:1/db")
    assert list(tmp_path.iterdir()) == []  # looking created nothing


@pytest.mark.parametrize("model, message", [
    (None, ": pass --tracking-uri, or the --workdir of the sweep that registered the model"),
    ("m", " (so no model 'm'): pass --tracking-uri, or the --workdir of the sweep that "
          "registered it"),
], ids=["no-model", "model"])
def test_a_missing_store_is_refused_naming_it_and_what_to_pass(tmp_path, model, message):
    uri = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    with pytest.raises(StoreMissing, match=f"^{re.escape(f'no MLflow store at {uri}{message}')}$"):
        check_store(uri, model)


def test_an_existing_store_or_a_server_passes_the_check(store):
    _, uri = store
    assert check_store(uri, "m") is None
    assert check_store("http://127.0.0.1:1", "m") is None


def test_registry_client_refuses_a_missing_store_and_creates_nothing(tmp_path):
    uri = embedded_uri(tmp_path / "nowhere")
    with pytest.raises(StoreMissing, match="so no model 'm'"):
        registry_client(uri, "m")
    assert list(tmp_path.iterdir()) == []


def test_registry_client_works_on_an_existing_store(store):
    _, uri = store
    client = registry_client(uri, "kept")
    client.create_registered_model("kept")
    again = MlflowClient(uri, registry_uri=uri)
    assert [m.name for m in again.search_registered_models("name = 'kept'")] == ["kept"]


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:////elsewhere/mlflow.db", "workdir"),  # embedded: beside it, in the workdir
    ("http://127.0.0.1:5000", None),  # a server decides
    ("postgresql://u@127.0.0.1/db", None),
])
def test_artifacts_of_the_embedded_store_go_to_mlartifacts_and_a_server_decides(
        tmp_path, uri, expected):
    if expected == "workdir":
        expected = f"file://{tmp_path.resolve()}/mlartifacts"
    assert artifact_root(uri, tmp_path) == expected


def _files(workdir) -> list[str]:
    """The store's files but SQLite's WAL companions (mlflow.db-wal, -shm), there while a
    connection is open."""
    return sorted(p.name for p in workdir.iterdir() if not p.name.endswith(("-wal", "-shm")))


def test_ensure_sqlite_store_creates_a_store_mlflow_opens_and_leaves_no_temporary(store):
    workdir, uri = store
    assert _files(workdir) == ["mlflow.db"]  # no .mlflow.db.*.tmp
    assert (workdir / "mlflow.db").stat().st_nlink == 1  # the temporary link is gone
    names = [e.name for e in MlflowClient(uri).search_experiments()]
    assert names == ["Default"]


def test_ensure_sqlite_store_leaves_an_existing_store_untouched(store):
    workdir, uri = store
    before = os.stat(workdir / "mlflow.db")
    ensure_sqlite_store(uri)
    after = os.stat(workdir / "mlflow.db")
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == \
        (before.st_ino, before.st_mtime_ns, before.st_size)
    assert _files(workdir) == ["mlflow.db"]


def _schema(db: Path) -> tuple:
    """Tables, indexes and columns, the schema's version, the experiments (not the order of
    a table's constraints in its SQL: MLflow's own migrations vary it from store to store)."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        names = sorted(c.execute("SELECT type, name FROM sqlite_master").fetchall())
        columns = {name: c.execute(f'PRAGMA table_info("{name}")').fetchall()
                   for kind, name in names if kind == "table"}
        return (names, columns, c.execute("SELECT version_num FROM alembic_version").fetchall(),
                c.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage "
                          "FROM experiments").fetchall())


def test_a_new_store_is_a_copy_of_the_cached_empty_one_as_mlflow_would_make_it(
        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    ensure_sqlite_store(embedded_uri(tmp_path / "a"))
    template = next((tmp_path / "cache" / "caviar").glob("mlflow-*-empty.db"))
    made = os.stat(template)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the Default experiment's folder follows this process's
    ensure_sqlite_store(embedded_uri(tmp_path / "b"))
    again = os.stat(template)
    assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)  # reused
    MlflowClient(f"sqlite:///{tmp_path / 'direct.db'}").search_experiments()  # MLflow alone
    assert _schema(tmp_path / "b" / "mlflow.db") == _schema(tmp_path / "direct.db")
    assert MlflowClient(embedded_uri(tmp_path / "b")).get_experiment("0").artifact_location \
        == str(elsewhere / "mlruns" / "0")
    assert sorted(p.name for p in template.parent.iterdir()) == [template.name]


def test_without_a_writable_cache_the_store_is_migrated_in_place(tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file, not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ensure_sqlite_store(embedded_uri(tmp_path / "w"))
    assert _files(tmp_path / "w") == ["mlflow.db"]
    assert [e.name for e in MlflowClient(embedded_uri(tmp_path / "w")).search_experiments()] \
        == ["Default"]


def test_the_embedded_store_writes_in_wal_mode_and_a_reader_sees_every_commit(store):
    import sqlite3

    workdir, uri = store
    client = MlflowClient(uri)
    exp = client.create_experiment("wal")
    run = client.create_run(exp).info.run_id
    client.log_param(run, "lr", "0.1")
    with sqlite3.connect(workdir / "mlflow.db") as db:  # another process's view
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT value FROM params WHERE run_uuid = ?", (run,)).fetchone() \
            == ("0.1",)


def test_ensure_sqlite_store_leaves_a_server_alone(tmp_path):
    assert ensure_sqlite_store("http://127.0.0.1:1") is None
    assert ensure_sqlite_store("postgresql://u@127.0.0.1:1/db") is None


@pytest.mark.parametrize(("uri", "shown"), [
    ("http://ann:s3cret@mlflow:5000", "http://ann:***@mlflow:5000"),
    ("postgresql://caviar:pw@db:5432/mlflow", "postgresql://caviar:***@db:5432/mlflow"),
    ("http://mlflow:5000", "http://mlflow:5000"),
    ("http://ann@mlflow:5000", "http://ann@mlflow:5000"),  # a user name is no secret
    (None, None),
])
def test_a_password_in_a_uri_is_never_shown(uri, shown):
    from orchestrator.tracking.store import password_in, redacted

    assert redacted(uri) == shown
    if uri is not None:
        assert password_in(uri) == (shown != uri)


def test_a_tracking_uri_flag_with_a_password_is_refused(tmp_path):
    from searchspaces import SpecError

    with pytest.raises(SpecError, match="MLFLOW_TRACKING_PASSWORD") as e:
        resolve_uri("http://ann:s3cret@mlflow:5000", None, tmp_path)
    assert "s3cret" not in str(e.value)


def test_a_uri_recorded_without_its_password_is_found_again_in_the_environment(monkeypatch):
    from orchestrator.tracking.store import unredacted

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ann:s3cret@mlflow:5000")
    assert unredacted("http://ann:***@mlflow:5000") == "http://ann:s3cret@mlflow:5000"
    assert unredacted("http://bob:***@mlflow:5000") == "http://bob:***@mlflow:5000"
    assert unredacted("http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert unredacted("http://ann:***@mlflow:5000") == "http://ann:***@mlflow:5000"


def test_a_sweeps_mlflow_json_holds_no_password(tmp_path):
    import json

    from orchestrator.sweep.sink import MlflowSink

    sink = MlflowSink("http://ann:s3cret@127.0.0.1:9", "e", tmp_path, tmp_path / "log", tmp_path)
    sink._save()
    assert "s3cret" not in (tmp_path / "mlflow.json").read_text()
    assert json.loads((tmp_path / "mlflow.json").read_text())["tracking_uri"] == \
        "http://ann:***@127.0.0.1:9"
