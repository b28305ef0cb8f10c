"""``caviar retune`` (orchestrator/cli/retune.py): its exits and its one JSON line, on a real
embedded MLflow store holding a production version made from an exported model folder.

Only dry runs and jobs that stop before training: the re-tune itself (search, gate,
promotion) is tests/orchestrator/retune/test_retune_job.py's.
"""

from __future__ import annotations

import itertools
import json

import pytest
import yaml
from conftest import assert_one_paragraph_error, run_main, sweep_dict
from mlflow import MlflowClient

from models.config import HParams, MLPConfig
from models.data import DataSpec, load
from models.serving import FINGERPRINT, export_model
from models.train import TrainingRun, resolve_device
from orchestrator.tracking.registry import PRODUCTION, Lock, register_version
from orchestrator.tracking.store import artifact_root, embedded_uri, ensure_sqlite_store

TINY_DATA = {"source": "synthetic", "size": 300, "n_features": 6, "classes": 3}
OLD = "2020-01-01T00:00:00+00:00"
_names = itertools.count(1)


pytestmark = pytest.mark.usefixtures("no_outside_services")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep file, and an embedded store whose run holds an exported model folder."""
    tmp = tmp_path_factory.mktemp("retune-cli")
    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_dict(data=TINY_DATA, epochs=1)))
    data = load(DataSpec(**TINY_DATA))
    run = TrainingRun(data, MLPConfig(hidden_units=16), HParams(), 0, resolve_device("cpu"))
    run.train_epoch()
    model_dir = export_model(run.state_dict(), data, tmp / "model")
    assert (model_dir / FINGERPRINT).is_file()
    workdir = tmp / "w"
    uri = embedded_uri(workdir)
    ensure_sqlite_store(uri)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.create_experiment("cli-retune", artifact_location=artifact_root(uri, workdir))
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    client.set_terminated(run_id)
    return {"tmp": tmp, "sweep": sweep, "workdir": workdir, "uri": uri, "client": client,
            "run_id": run_id}


def production_model(store, tuned_at: str) -> str:
    """A registered model of the test's own whose version 1 is production."""
    name = f"r{next(_names)}"
    client = store["client"]
    version = register_version(client, name, store["run_id"], {
        "caviar.tuned_at": tuned_at, "hp.lr": "0.01", "metric.test_accuracy": "0.5"})
    client.set_registered_model_alias(name, PRODUCTION, version)
    return name


def retune_file(store, model: str, **extra) -> str:
    raw = {"model": model, "sweep": str(store["sweep"]), "data": TINY_DATA,
           "triggers": ["age"], **extra}
    path = store["tmp"] / f"retune-{model}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def job_runs(store, model: str) -> list:
    exp = store["client"].get_experiment_by_name(f"{model}-retune")
    return [] if exp is None else store["client"].search_runs([exp.experiment_id])


def test_a_dry_run_on_an_old_production_would_retune_for_its_age(capsys, store):
    name = production_model(store, OLD)
    code, out, err = run_main(capsys, "retune", retune_file(store, name), "--dry-run",
                              "--workdir", store["workdir"])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "model": name, "decision": "would_retune", "stale": True, "reasons": ["age"],
        "production_version": "1", "new_version": None, "dry_run": True}
    assert f"caviar retune {name}: WOULD_RETUNE (dry run)" in err
    (job,) = job_runs(store, name)
    assert job.data.tags["caviar.decision"] == "would_retune"
    assert job.data.tags["caviar.kind"] == "retune"
    assert job.data.tags["caviar.dry_run"] == "true"
    assert job.data.tags["caviar.trigger.age"] == "stale"
    assert job.data.metrics["age.days"] > 5 * 365
    assert job.info.status == "FINISHED"
    # a dry run moves nothing and registers nothing
    client = store["client"]
    aliases = client.get_registered_model(name).aliases
    assert {k: str(v) for k, v in aliases.items()} == {PRODUCTION: "1"}
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    (report,) = (store["workdir"] / f"retune-{name}").glob("*/report.json")
    assert json.loads(report.read_text())["decision"] == "would_retune"


def test_a_dry_run_on_a_fresh_production_is_not_stale(capsys, store):
    name = production_model(store, "2999-01-01T00:00:00+00:00")
    code, out, err = run_main(capsys, "retune", retune_file(store, name), "--dry-run",
                              "--tracking-uri", store["uri"], "--workdir", store["workdir"])
    assert code == 0, err
    report = json.loads(out)
    assert report["decision"] == "not_stale" and report["stale"] is False
    assert report["reasons"] == [] and report["dry_run"] is True
    (job,) = job_runs(store, name)
    assert job.data.tags["caviar.decision"] == "not_stale"


def test_a_dry_run_takes_no_lock(capsys, store):
    name = production_model(store, OLD)
    with Lock(store["client"], name, what="test"):
        code, out, err = run_main(capsys, "retune", retune_file(store, name), "--dry-run",
                                  "--workdir", store["workdir"])
    assert code == 0, err
    assert json.loads(out)["decision"] == "would_retune"


def test_a_retune_while_the_model_is_locked_exits_3(capsys, store):
    # not stale: were the lock ignored, the job would end not_stale with exit 0
    name = production_model(store, "2999-01-01T00:00:00+00:00")
    with Lock(store["client"], name, what="test"):
        code, out, err = run_main(capsys, "retune", retune_file(store, name),
                                  "--workdir", store["workdir"])
    assert code == 3 and out == ""
    assert err.startswith(f"caviar: locked: model {name!r} is locked by test pid ")
    assert job_runs(store, name) == []  # stopped before its run was recorded


def test_a_model_the_store_lacks_is_bad_input_naming_the_file(capsys, store):
    path = retune_file(store, "ghost")
    code, out, err = run_main(capsys, "retune", path, "--dry-run", "--workdir", store["workdir"])
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, f"{path}: key 'model': no registered model 'ghost'")
    assert job_runs(store, "ghost") == []


def test_a_production_less_model_is_bad_input(capsys, store):
    name = f"r{next(_names)}"
    register_version(store["client"], name, store["run_id"], {})
    code, out, err = run_main(capsys, "retune", retune_file(store, name), "--dry-run",
                              "--workdir", store["workdir"])
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, f"model {name!r} has no version with the alias "
                               "'production'", f"caviar promote {name} --version N")


def test_a_missing_store_is_bad_input_and_is_not_created(capsys, store, tmp_path):
    path = retune_file(store, "anything")
    code, out, err = run_main(capsys, "retune", path, "--dry-run", "--workdir", tmp_path)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, f"no MLflow store at sqlite:///{tmp_path / 'mlflow.db'} "
                               "(so no model 'anything')")
    assert not (tmp_path / "mlflow.db").exists()


def test_a_bad_retune_file_is_bad_input(capsys, store):
    path = retune_file(store, "anything", triggers=["age", "moon"])
    code, out, err = run_main(capsys, "retune", path, "--workdir", store["workdir"])
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, path, "triggers", "moon", "age, drift, hardware, decay")
