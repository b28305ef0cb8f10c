"""The model registry's side of caviar (orchestrator/tracking/registry.py): versions,
production and previous aliases, promote and rollback, the lock, downloads.

Real MLflow on one sqlite store per module; each test registers models of its own
names, so tests that move aliases do not meet.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta

import mlflow
import pytest
from mlflow import MlflowClient

from orchestrator.tracking.registry import (
    LOCK_PREFIX,
    PREVIOUS,
    PRODUCTION,
    Lock,
    Locked,
    RegistryError,
    download_model,
    production,
    promote,
    register_version,
    rollback,
    version_tags,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store with one experiment whose artifacts go under the module's folder."""
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("models", artifact_location=(tmp / "art").as_uri())
    return {"tmp": tmp, "uri": uri, "client": client, "experiment": exp}


def logged_run(store, files: dict[str, str]) -> str:
    """A finished run whose artifacts ``model/`` are ``files`` (name: text); its id."""
    c = store["client"]
    run = c.create_run(store["experiment"])
    folder = store["tmp"] / f"src-{run.info.run_id}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    c.log_artifacts(run.info.run_id, str(folder), "model")
    c.set_terminated(run.info.run_id)
    return run.info.run_id


def new_version(store, name: str, text: str = "w", **tags: str) -> str:
    run_id = logged_run(store, {"model.json": f'{{"name": "{name}"}}', "weights.pt": text})
    return register_version(store["client"], name, run_id, tags)


def aliases(c: MlflowClient, name: str) -> dict:
    return {k: str(v) for k, v in c.get_registered_model(name).aliases.items()}


def assert_utc_now(stamp: str, before: float, after: float) -> None:
    """``stamp`` is ISO 8601 in UTC, to the second, taken between ``before`` and ``after``."""
    t = datetime.fromisoformat(stamp)
    assert t.utcoffset() == timedelta(0) and stamp.endswith("+00:00"), stamp
    assert before - 1 <= t.timestamp() <= after + 1, (stamp, before, after)


def test_version_tags_record_when_how_and_where_a_model_was_made():
    before = time.time()
    tags = version_tags(config={"lr": 0.01, "hidden_units": 32},
                        metrics={"val_loss": 0.25, "val_accuracy": None},
                        hardware={"gpu_count": 0, "gpu_model": ""},
                        tags={"caviar.sweep": "s"})
    assert_utc_now(tags.pop("caviar.tuned_at"), before, time.time())
    assert tags == {"caviar.sweep": "s", "metric.val_loss": "0.25",  # None is left out
                    "hp.lr": "0.01", "hp.hidden_units": "32",
                    "hw.gpu_count": "0", "hw.gpu_model": ""}


def test_register_version_creates_the_model_once_and_numbers_its_versions(store):
    c = store["client"]
    assert not c.search_registered_models("name = 'first'")
    run_id = logged_run(store, {"weights.pt": "one"})
    assert register_version(c, "first", run_id, {"caviar.sweep": "a"}) == "1"
    assert [m.name for m in c.search_registered_models("name = 'first'")] == ["first"]
    assert register_version(c, "first", logged_run(store, {"weights.pt": "two"}), {}) == "2"
    v1 = c.get_model_version("first", "1")
    assert v1.run_id == run_id and v1.tags == {"caviar.sweep": "a"}
    assert v1.source == f"{c.get_run(run_id).info.artifact_uri}/model"
    assert v1.source.endswith("/model")
    assert c.get_model_version("first", "2").tags == {}


def test_promote_moves_production_and_keeps_the_version_it_left_as_previous(store):
    c = store["client"]
    for text in ("a", "b", "c"):
        new_version(store, "promoted", text)
    assert promote(c, "promoted", "1") == (None, "1")
    assert aliases(c, "promoted") == {PRODUCTION: "1"}  # no previous yet
    assert str(production(c, "promoted").version) == "1"
    assert promote(c, "promoted", "2") == ("1", "2")
    assert aliases(c, "promoted") == {PRODUCTION: "2", PREVIOUS: "1"}
    assert promote(c, "promoted", "3") == ("2", "3")
    assert aliases(c, "promoted") == {PRODUCTION: "3", PREVIOUS: "2"}
    assert str(production(c, "promoted").version) == "3"


def test_promoting_the_production_version_changes_nothing(store):
    c = store["client"]
    new_version(store, "steady", "a")
    new_version(store, "steady", "b")
    promote(c, "steady", "1")
    promote(c, "steady", "2")
    assert promote(c, "steady", "2") == ("2", "2")
    assert aliases(c, "steady") == {PRODUCTION: "2", PREVIOUS: "1"}  # previous stays 1


@pytest.fixture(scope="module")
def unpromoted(store):
    """A model ``unpromoted`` with one version and no aliases."""
    new_version(store, "unpromoted")
    return store["client"]


@pytest.mark.parametrize("call, message", [
    (lambda c: promote(c, "nowhere", "1"),
     r"no registered model 'nowhere' in the registry \(it holds: [^)]*\bunpromoted\b"),
    (lambda c: promote(c, "unpromoted", "9"), "model 'unpromoted' has no version 9"),
    (lambda c: production(c, "nowhere"), "no registered model 'nowhere' in the registry"),
    (lambda c: production(c, "unpromoted"), re.escape(
        "model 'unpromoted' has no version with the alias 'production': "
        "set one with `caviar promote unpromoted --version N`")),
    (lambda c: rollback(c, "unpromoted"), re.escape("`caviar promote unpromoted --version N`")),
], ids=["unknown-model", "unknown-version", "production-of-unknown-model",
        "no-production", "rollback-without-production"])
def test_asking_for_what_the_registry_does_not_hold_is_a_registry_error(unpromoted, call,
                                                                        message):
    with pytest.raises(RegistryError, match=message):
        call(unpromoted)
    assert aliases(unpromoted, "unpromoted") == {}


def test_the_models_a_registry_error_lists_leave_out_locks(store, unpromoted):
    with Lock(store["client"], "unpromoted"):
        with pytest.raises(RegistryError) as caught:
            promote(store["client"], "nowhere", "1")
    listed = str(caught.value).split("(it holds: ", 1)[1].rstrip(")").split(", ")
    assert "unpromoted" in listed
    assert not [name for name in listed if name.startswith(LOCK_PREFIX)], listed


def test_rollback_swaps_production_and_previous_and_marks_the_restored_version(store):
    c = store["client"]
    new_version(store, "rolled", "a")
    new_version(store, "rolled", "b")
    promote(c, "rolled", "1")
    promote(c, "rolled", "2")
    before = time.time()
    assert rollback(c, "rolled") == ("2", "1")
    after = time.time()
    assert aliases(c, "rolled") == {PRODUCTION: "1", PREVIOUS: "2"}
    assert_utc_now(c.get_model_version("rolled", "1").tags["caviar.checked_at"], before, after)
    assert "caviar.checked_at" not in c.get_model_version("rolled", "2").tags
    assert rollback(c, "rolled") == ("1", "2")  # and back again
    assert aliases(c, "rolled") == {PRODUCTION: "2", PREVIOUS: "1"}


def test_rollback_without_a_previous_version_is_a_registry_error(store):
    c = store["client"]
    new_version(store, "alone")
    promote(c, "alone", "1")
    with pytest.raises(RegistryError, match="model 'alone' has no version with the alias "
                                            "'previous': nothing to roll back to"):
        rollback(c, "alone")
    assert aliases(c, "alone") == {PRODUCTION: "1"}
    assert "caviar.checked_at" not in c.get_model_version("alone", "1").tags


def lock_model(c: MlflowClient, model: str) -> list:
    return c.search_registered_models(f"name = '{LOCK_PREFIX}{model}'")


def test_a_second_taker_is_refused_with_the_holders_name_until_the_lock_is_released(store):
    c = store["client"]
    first = Lock(c, "contended", lease_s=60)
    first.acquire()
    try:
        assert first.mine()
        with pytest.raises(Locked, match=rf"model 'contended' is locked by "
                                         rf"{re.escape(first.holder)} since "):
            Lock(c, "contended", lease_s=60, what="promote").acquire()
        assert first.mine()  # the refused taker broke nothing
    finally:
        first.release()
    assert not lock_model(c, "contended") and not first.mine()
    second = Lock(c, "contended", lease_s=60, what="promote")
    second.acquire()
    try:
        assert second.mine() and second.holder.startswith("promote pid ")
        assert second.holder != first.holder
    finally:
        second.release()
    assert not lock_model(c, "contended")


def test_a_lock_whose_holder_died_is_broken_after_its_lease(store, monkeypatch):
    from orchestrator.tracking import registry

    c = store["client"]
    first = Lock(c, "leased", lease_s=60)
    first.acquire()
    first._stop.set()  # its holder "dies": no more renewals, no release
    first._thread.join(timeout=10)
    with pytest.raises(Locked, match=rf"is locked by {re.escape(first.holder)}"):
        Lock(c, "leased", lease_s=60).acquire()
    now = time.time()
    monkeypatch.setattr(registry, "_now", lambda: now + 61)  # the lease has run out
    second = Lock(c, "leased", lease_s=60)
    second.acquire()
    try:
        assert c.get_registered_model(f"{LOCK_PREFIX}leased").tags["holder"] == second.holder
        assert second.mine() and not first.mine()
    finally:
        second.release()


def test_a_held_lock_renews_its_lease(store, monkeypatch):
    from orchestrator.tracking import registry

    c = store["client"]
    lock = Lock(c, "renewed", lease_s=1.5)  # renewed every 0.5 s
    lock.acquire()
    try:
        first = float(lock_model(c, "renewed")[0].tags["expires"])
        deadline = time.time() + 30
        while float(lock_model(c, "renewed")[0].tags["expires"]) == first:
            assert time.time() < deadline, "the lease was never renewed"
            time.sleep(0.05)  # polling the store for the renewal
        renewed = float(lock_model(c, "renewed")[0].tags["expires"])
        assert renewed > first and lock.mine()
        # a taker after the first lease ran out still finds the lock held, until the renewed
        monkeypatch.setattr(registry, "_now", lambda: (first + renewed) / 2)
        with pytest.raises(Locked, match="model 'renewed' is locked by"):
            Lock(c, "renewed", lease_s=60).acquire()
        assert lock.mine()
    finally:
        monkeypatch.undo()
        lock.release()
    assert not lock_model(c, "renewed")


def test_a_lock_taken_with_with_is_released_on_exit_also_after_an_error(store):
    c = store["client"]
    with Lock(c, "scoped") as lock:
        assert lock.mine() and len(lock_model(c, "scoped")) == 1
    assert not lock_model(c, "scoped")
    with pytest.raises(ZeroDivisionError), Lock(c, "scoped"):
        1 / 0  # noqa: B018 - the error the block ends with
    assert not lock_model(c, "scoped")


def test_a_taker_given_a_wait_takes_the_lock_once_its_holder_lets_go(store):
    from concurrent.futures import ThreadPoolExecutor

    c = store["client"]
    first = Lock(c, "awaited", lease_s=60)
    first.acquire()
    second = Lock(c, "awaited", lease_s=60, what="babysit start", wait_s=120)
    with ThreadPoolExecutor(1) as pool:
        taking = pool.submit(second.acquire)
        try:
            assert second.waiting.wait(60), "the second taker never found the lock held"
            assert not taking.done() and first.mine()
        finally:
            first.release()
        taking.result(timeout=60)
    try:
        assert second.mine()
    finally:
        second.release()
    assert not lock_model(c, "awaited")

@pytest.fixture
def mlflow_globals(monkeypatch):
    """download_model sets MLflow's tracking and registry URIs for the process (and the
    environment, for subprocesses): put both back after the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset-after-the-test")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "unset-after-the-test")
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.mark.usefixtures("mlflow_globals")
def test_download_model_fetches_a_versions_files_by_number_and_by_alias(store, tmp_path):
    c = store["client"]
    new_version(store, "fetched", "weights one")
    new_version(store, "fetched", "weights two")
    promote(c, "fetched", "2")
    by_number = download_model(store["uri"], "models:/fetched/1", tmp_path / "one")
    by_alias = download_model(store["uri"], "models:/fetched@production", tmp_path / "prod")
    for path, weights in ((by_number, "weights one"), (by_alias, "weights two")):
        assert sorted(p.name for p in path.iterdir()) == ["model.json", "weights.pt"]
        assert (path / "weights.pt").read_text() == weights
        assert (path / "model.json").read_text() == '{"name": "fetched"}'
    assert by_number.resolve().is_relative_to((tmp_path / "one").resolve())
    assert by_alias.resolve().is_relative_to((tmp_path / "prod").resolve())
