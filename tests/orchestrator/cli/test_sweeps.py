"""``caviar sweep``, ``sync``, ``ui`` and ``submit`` (orchestrator/cli/sweeps.py): their
bad-input and failure exits in-process, and one real small sweep in a subprocess."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import assert_one_paragraph_error, caviar, free_port, run_main

from orchestrator.tracking.store import embedded_uri, ensure_sqlite_store

TINY_DATA = {"source": "synthetic", "size": 300, "n_features": 6, "classes": 3}


pytestmark = pytest.mark.usefixtures("no_outside_services")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One real ``caviar sweep`` (2 random trials, 2 epochs, no MLflow) in a subprocess."""
    import yaml
    from conftest import sweep_dict

    tmp = tmp_path_factory.mktemp("swept")
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_dict(
        data=TINY_DATA, strategy={"kind": "random", "trials": 2}, epochs=2,
        tracking={"enabled": False})))
    ran = caviar("sweep", path, "--workdir", tmp / "w", timeout=300)
    return {"path": path, "workdir": tmp / "w", "ran": ran}


def test_a_small_sweep_prints_the_best_trial_as_json(swept):
    ran = swept["ran"]
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert len(lines) == 1
    best = json.loads(lines[0])
    assert {"trial_id", "config", "metrics"} <= set(best)
    assert set(best["config"]) == {"lr", "hidden_units"}
    assert 1e-3 <= best["config"]["lr"] <= 0.3 and 16 <= best["config"]["hidden_units"] <= 64
    assert 0 < best["metrics"]["val_loss"] < 5 and 0 <= best["metrics"]["val_accuracy"] <= 1
    summary = json.loads((swept["workdir"] / "t" / "summary.json").read_text())
    assert summary["best"] == best
    assert summary["trials"]["total"] == 2 and summary["complete"] is True
    assert summary["mlflow"]["tracking_uri"] is None  # tracking was off
    assert not (swept["workdir"] / "mlflow.db").exists()
    assert "caviar: sweep 't': random over 2 trials" in ran.stderr


def test_the_same_sweep_again_needs_resume_or_fresh(capsys, swept):
    assert swept["ran"].returncode == 0, swept["ran"].stderr
    code, out, err = run_main(capsys, "sweep", swept["path"], "--workdir", swept["workdir"])
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "sweep 't' already exists in", "--resume to continue it",
                               "--fresh to start over")


def test_sync_after_a_sweep_without_tracking_has_nothing_to_sync(capsys, swept):
    assert swept["ran"].returncode == 0, swept["ran"].stderr
    code, out, err = run_main(capsys, "sync", "--workdir", swept["workdir"])
    assert code == 0 and out == ""
    assert err == f"caviar: nothing to sync in {swept['workdir']}\n"


def test_resume_and_fresh_together_are_refused(capsys, write_sweep, tmp_path):
    code, out, err = run_main(capsys, "sweep", write_sweep(), "--resume", "--fresh",
                              "--workdir", tmp_path / "w")
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "--resume and --fresh exclude each other")
    assert not (tmp_path / "w").exists()


def test_resume_with_nothing_to_resume_is_refused(capsys, write_sweep, tmp_path):
    code, out, err = run_main(capsys, "sweep", write_sweep(), "--resume",
                              "--workdir", tmp_path / "w")
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, "nothing to resume: no sweep 't' in", str(tmp_path / "w"),
                               "run it without --resume")


def test_sync_on_an_empty_workdir_has_nothing_to_sync(capsys, tmp_path):
    code, out, err = run_main(capsys, "sync", "--workdir", tmp_path)
    assert code == 0 and out == ""
    assert err == f"caviar: nothing to sync in {tmp_path}\n"


def test_ui_without_a_store_is_bad_input(capsys, tmp_path):
    code, out, err = run_main(capsys, "ui", "--workdir", tmp_path, "--port", free_port())
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, str(tmp_path), "no MLflow store here (mlflow.db)",
                               "pass the --workdir it used")
    assert not (tmp_path / "mlflow.db").exists()


def test_ui_on_a_taken_port_is_bad_input(capsys, tmp_path):
    ensure_sqlite_store(embedded_uri(tmp_path))
    capsys.readouterr()  # MLflow's own log lines while it created the store
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code, out, err = run_main(capsys, "ui", "--workdir", tmp_path, "--port", port)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, f"port {port} on 127.0.0.1 is taken: pass --port")


def test_submit_to_a_dashboard_nobody_listens_on_fails_with_exit_1(write_sweep):
    # In a process of its own: submit sets RAY_AUTH_MODE for its process before Ray reads
    # it once, which would leave every later in-process Ray of this test run unable to
    # talk to its own GCS.
    address = f"http://127.0.0.1:{free_port()}"
    ran = caviar("submit", write_sweep(), "--address", address)
    assert ran.returncode == 1 and ran.stdout == ""
    err = ran.stderr
    text = err.strip()
    assert len(text.splitlines()) == 1, err
    assert text.startswith(f"caviar: failed: cannot reach the Ray dashboard at {address} (")
    assert text.endswith("is the cluster up, and is its dashboard port (8265) reachable?")


def test_submit_checks_the_sweep_file_before_reaching_out(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nspace: course\nepochs: 0\n")
    code, out, err = run_main(capsys, "submit", bad, "--address", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, str(bad), "key 'epochs'")
