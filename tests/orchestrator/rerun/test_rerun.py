"""``caviar rerun``: real sweeps on digits (real Ray, a real sqlite MLflow store), each
strategy's best trial trained again from its record and compared to the last digit."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import assert_one_paragraph_error, run_main

STRATEGIES = {
    "random": {"kind": "random", "trials": 2},
    "quasi_random": {"kind": "quasi_random", "trials": 2},
    "grid": {"kind": "grid", "points": 2},
    "tpe": {"kind": "tpe", "trials": 3},
    "coarse_to_fine": {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 2},
}
SPACE = {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
         "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 48}}


def sweep_file(folder, name: str, strategy: dict, data: dict | None = None,
               space: dict | None = None, epochs: int = 3):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "data": data or {"source": "digits"}, "space": space or SPACE,
        "strategy": strategy, "epochs": epochs, "resources": {"cpu": 1}, "seed": 0}))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep per strategy kind in one store (one Ray for them all): kind -> best trial."""
    import ray

    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    folder = tmp_path_factory.mktemp("rerun")
    best = {}
    for kind, strategy in STRATEGIES.items():
        summary = run_sweep(load_sweep(sweep_file(folder, f"rr-{kind}", strategy)),
                            folder / "runs")
        best[kind] = summary["best"]
    yield folder / "runs", best
    ray.shutdown()


@pytest.mark.parametrize("kind", STRATEGIES)
def test_each_strategys_best_trial_reruns_to_the_last_digit(swept, kind, capsys,
                                                             no_outside_services):
    from mlflow import MlflowClient

    from orchestrator.tracking.store import embedded_uri

    workdir, best = swept
    code, out, err = run_main(capsys, "rerun", best[kind]["mlflow_run_id"],
                              "--workdir", workdir)
    assert code == 0, err
    report = json.loads(out)
    assert report["identical"] and report["max_diff"] == 0 and report["differences"] == []
    assert [r["epoch"] for r in report["epochs"]] == [1, 2, 3]
    assert report["epochs"][-1]["rerun_val_loss"] == best[kind]["metrics"]["val_loss"]
    assert "identical: every one of 3 epochs" in err
    rerun = MlflowClient(embedded_uri(workdir)).get_run(report["rerun_run_id"])
    assert rerun.data.tags["caviar.rerun_of"] == best[kind]["mlflow_run_id"]
    assert rerun.data.tags["caviar.identical"] == "true"


def test_another_thread_count_is_named_as_the_difference(swept, capsys, no_outside_services):
    """On a net wide enough that torch splits its products between 2 threads (the digits
    sweeps' nets are small enough that some CPUs' MKL keeps them on one: identical)."""
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    workdir, _ = swept
    wide = sweep_file(workdir.parent, "rr-wide", {"kind": "random", "trials": 1},
                      data={"source": "synthetic", "size": 4000, "n_features": 256,
                            "classes": 10},
                      space={"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                             "hidden_units": {"fixed": 1024}}, epochs=1)
    best = run_sweep(load_sweep(wide), workdir)["best"]
    code, out, err = run_main(capsys, "rerun", best["mlflow_run_id"], "--threads",
                              "2", "--workdir", workdir)
    report = json.loads(out)
    assert code == 1 and not report["identical"] and report["max_diff"] > 0
    assert report["differences"] == ["torch threads: 2 here, 1 recorded (another reduction "
                                     "order)"]


def test_a_trial_is_found_by_its_id_and_sweep(swept, capsys, no_outside_services):
    workdir, best = swept
    code, out, err = run_main(capsys, "rerun", "--trial", best["tpe"]["trial_id"], "--sweep",
                              "rr-tpe", "--workdir", workdir)
    assert code == 0, err
    assert json.loads(out)["run_id"] == best["tpe"]["mlflow_run_id"]


def test_caviar_train_by_hand_with_a_trials_settings_matches_it(swept, capsys,
                                                                no_outside_services):
    """caviar train gives torch one thread per CPU of the sweep's trials, as a trial gets."""
    workdir, best = swept
    trial = best["random"]
    sets = [a for k, v in trial["config"].items() for a in ("--set", f"{k}={v}")]
    code, out, err = run_main(capsys, "train", workdir.parent / "rr-random.yaml", *sets,
                              "--seed", trial["seed"], "--epochs", trial["epoch"])
    assert code == 0, err
    assert json.loads(out)["val_loss"] == trial["metrics"]["val_loss"]


@pytest.mark.usefixtures("no_outside_services")
def test_unknown_runs_and_runs_that_are_not_trials_are_bad_input(swept, capsys):
    from mlflow import MlflowClient

    from orchestrator.tracking.store import embedded_uri

    workdir, best = swept
    code, _, err = run_main(capsys, "rerun", "0" * 32, "--workdir", workdir)
    assert code == 2
    assert_one_paragraph_error(err, "no run '00000000", "--trial ID --sweep NAME")
    parent = MlflowClient(embedded_uri(workdir)).get_run(
        best["grid"]["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
    code, _, err = run_main(capsys, "rerun", parent, "--workdir", workdir)
    assert code == 2
    assert_one_paragraph_error(err, "is not a sweep's trial (caviar.kind='sweep')")
    code, _, err = run_main(capsys, "rerun", "--trial", "x", "--workdir", workdir)
    assert code == 2
    assert_one_paragraph_error(err, "needs a trial's RUN_ID, or --trial ID --sweep NAME")
    code, _, err = run_main(capsys, "rerun", "--workdir", workdir.parent / "nowhere")
    assert code == 2  # what is missing first, not the store it would have looked in
    assert_one_paragraph_error(err, "needs a trial's RUN_ID")
    run = best["grid"]["mlflow_run_id"]
    for args, fragment in ((("--device", "tpu"), "--device 'tpu': this machine has cpu"),
                           (("--threads", "0"), "--threads must be >= 1, got 0")):
        code, out, err = run_main(capsys, "rerun", run, *args, "--workdir", workdir)
        assert code == 2 and out == ""
        assert_one_paragraph_error(err, fragment)


def test_a_changed_data_file_is_reported_as_a_fingerprint_mismatch(tmp_path, capsys,
                                                                  no_outside_services):
    import numpy as np
    import ray

    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4))
    rows = ["a,b,c,d,label"] + [",".join(f"{v:.6f}" for v in r) + f",{int(r[0] > 0)}"
                                for r in x]
    data = tmp_path / "rows.csv"
    data.write_text("\n".join(rows) + "\n")
    path = sweep_file(tmp_path, "rr-csv", {"kind": "random", "trials": 1},
                      {"source": "csv", "path": "rows.csv", "label": "label"})
    try:
        best = run_sweep(load_sweep(path), tmp_path / "runs")["best"]
    finally:
        ray.shutdown()
    rows[5] = "9.0" + rows[5][rows[5].index(","):]  # one value of one row
    data.write_text("\n".join(rows) + "\n")
    code, out, err = run_main(capsys, "rerun", best["mlflow_run_id"], "--workdir",
                              tmp_path / "runs")
    assert code == 1
    assert json.loads(out)["differences"][0].startswith("the data: its digest is")
    assert "(the file or the split changed)" in err


def test_a_rerun_on_a_cluster_matches_too(swept, monkeypatch):
    """--address: the trial trains in a Ray task holding its CPUs on the cluster."""
    from conftest import caviar
    from ray.cluster_utils import Cluster

    workdir, best = swept
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        done = caviar("rerun", best["coarse_to_fine"]["mlflow_run_id"], "--address",
                      cluster.address, "--workdir", workdir, timeout=300)
    finally:
        cluster.shutdown()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["identical"]
