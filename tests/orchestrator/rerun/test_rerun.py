"""``caviar rerun``: real sweeps (real Ray, a real sqlite MLflow store), each strategy's
best trial trained again from its record and compared to the last digit."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import assert_one_paragraph_error, run_main

# One trial each (two rounds of one for coarse to fine: a later round's trial too): what
# is re-run is a trial's record, and each kind records the values it draws its own way.
STRATEGIES = {
    "random": {"kind": "random", "trials": 1},
    "quasi_random": {"kind": "quasi_random", "trials": 1},
    "grid": {"kind": "grid", "points": 1},  # the centre: values no endpoint has
    "tpe": {"kind": "tpe", "trials": 1},
    "coarse_to_fine": {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 1},
}
SPACE = {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
         "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 48}}
# The others tune digits nets for 3 epochs; quasi random's sweep tunes a net wide enough
# that torch may split its products between threads (a digits net is small enough that
# some CPUs' kernels keep it on one), for 1 epoch: the thread-count test re-runs it too.
WIDE_KIND = "quasi_random"
WIDE = {"data": {"source": "synthetic", "size": 1000, "n_features": 256, "classes": 10},
        "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                  "hidden_units": {"fixed": 1024}}, "epochs": 1}


def epochs_of(kind: str) -> int:
    return WIDE["epochs"] if kind == WIDE_KIND else 3


def sweep_file(folder, name: str, strategy: dict, data: dict | None = None,
               space: dict | None = None, epochs: int = 3):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "data": data or {"source": "digits"}, "space": space or SPACE,
        "strategy": strategy, "epochs": epochs, "resources": {"cpu": 1}, "seed": 0}))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep per strategy kind in one store (one Ray for them all, up until the module
    ends): kind -> best trial. Nothing from the environment (MLflow, Ray) leaks in."""
    import ray

    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    folder = tmp_path_factory.mktemp("rerun")
    best = {}
    with pytest.MonkeyPatch.context() as env:
        for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CAVIAR_DEBUG"):
            env.delenv(name, raising=False)
        try:
            for kind, strategy in STRATEGIES.items():
                wide = WIDE if kind == WIDE_KIND else {}
                summary = run_sweep(load_sweep(sweep_file(folder, f"rr-{kind}", strategy,
                                                          **wide)), folder / "runs")
                best[kind] = summary["best"]
            yield folder / "runs", best
        finally:
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
    epochs = epochs_of(kind)
    assert [r["epoch"] for r in report["epochs"]] == list(range(1, epochs + 1))
    assert report["epochs"][-1]["rerun_val_loss"] == best[kind]["metrics"]["val_loss"]
    assert f"identical: every one of {epochs} epochs" in err
    rerun = MlflowClient(embedded_uri(workdir)).get_run(report["rerun_run_id"])
    assert rerun.data.tags["caviar.rerun_of"] == best[kind]["mlflow_run_id"]
    assert rerun.data.tags["caviar.identical"] == "true"


def test_every_trial_reruns_not_only_a_sweeps_first(swept, capsys, no_outside_services):
    """Coarse to fine's two trials, round 0's and round 1's, each with a seed of its own
    (the sweep's seed plus the trial's number): each re-runs to the last digit."""
    from mlflow import MlflowClient

    from orchestrator.tracking.store import embedded_uri

    workdir, best = swept
    client = MlflowClient(embedded_uri(workdir))
    one = client.get_run(best["coarse_to_fine"]["mlflow_run_id"])
    trials = client.search_runs(
        [one.info.experiment_id], f"tags.`mlflow.parentRunId` = "
        f"'{one.data.tags['mlflow.parentRunId']}' and tags.`caviar.kind` = 'trial'")
    assert sorted(t.data.tags["caviar.round"] for t in trials) == ["0", "1"]
    assert len({t.data.params["seed"] for t in trials}) == 2
    for trial in trials:
        code, out, err = run_main(capsys, "rerun", trial.info.run_id, "--workdir", workdir)
        assert code == 0, err
        report = json.loads(out)
        assert report["identical"] and report["max_diff"] == 0 and report["differences"] == []


def test_another_thread_count_is_named_as_the_difference(swept, capsys, no_outside_services):
    """A re-run on 2 threads of a trial trained on 1 names the thread count. Whether its
    numbers differ depends on the CPU (torch splits a product between threads, and so
    reorders its sums, only where its kernels choose to, which depends on the hardware):
    the premise is measured here first, then the outcome it implies is checked. The trial:
    quasi random's, on its wide net, trained on 1 thread (1 CPU per trial)."""
    workdir, trials = swept
    best = trials[WIDE_KIND]
    code, out, err = run_main(capsys, "rerun", best["mlflow_run_id"], "--threads",
                              "2", "--workdir", workdir)
    report = json.loads(out)
    assert report["differences"] == ["torch threads: 2 here, 1 recorded (another reduction "
                                     "order)"]
    if threads_change_the_sums(workdir, best["mlflow_run_id"]):
        assert code == 1 and not report["identical"] and report["max_diff"] > 0
        assert "differs by up to" in err and "torch threads: 2 here" in err
    else:  # this CPU keeps such products on one thread: the same digits
        assert code == 0 and report["identical"] and report["max_diff"] == 0
        assert f"identical: every one of {WIDE['epochs']} epochs" in err


def threads_change_the_sums(workdir, run_id: str) -> bool:
    """Whether the trial, trained here on 1 thread and on 2, ends with other digits (the
    premise, measured with the trainer alone)."""
    from mlflow import MlflowClient

    from orchestrator.rerun.recipe import METRICS, read_recipe
    from orchestrator.rerun.replay import retrain
    from orchestrator.tracking.store import embedded_uri

    recipe = read_recipe(MlflowClient(embedded_uri(workdir)), run_id)
    one, two = ([[m[k] for k in METRICS] for m in retrain(recipe, threads, "cpu").history]
                for threads in (1, 2))
    return one != two


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
    ours = not ray.is_initialized()  # else the module's Ray: later tests use it
    try:
        best = run_sweep(load_sweep(path), tmp_path / "runs")["best"]
    finally:
        if ours:
            ray.shutdown()
    rows[5] = "9.0" + rows[5][rows[5].index(","):]  # one value of one row
    data.write_text("\n".join(rows) + "\n")
    code, out, err = run_main(capsys, "rerun", best["mlflow_run_id"], "--workdir",
                              tmp_path / "runs")
    assert code == 1
    assert json.loads(out)["differences"][0].startswith("the data: its digest is")
    assert "(the file or the split changed)" in err


def test_a_rerun_on_a_cluster_matches_too(swept, monkeypatch):
    """--address: the trial trains in a Ray task holding its CPUs on the cluster: the Ray
    the module's sweeps ran on, which a ``caviar`` process of its own joins by address."""
    import ray
    from conftest import caviar

    from orchestrator.cluster.connect import connect

    workdir, best = swept
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    connect()  # the module's Ray (started anew only when a test before ended it)
    address = ray.get_runtime_context().gcs_address
    done = caviar("rerun", best["coarse_to_fine"]["mlflow_run_id"], "--address", address,
                  "--workdir", workdir, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["identical"]
