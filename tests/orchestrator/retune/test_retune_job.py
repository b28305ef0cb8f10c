"""The re-tune job end to end: real MLflow (the embedded sqlite store), real Ray, the CLI.

One small sweep tunes, registers and promotes ``base`` version 1 once for the module, in
this process (whose Ray the in-process commands then share); each test then gets a
registered model of its own (a copy of that version, same files and tags), so tests
that move aliases do not meet. Commands run in-process (``run_main``: the CLI's own code
path) except where the process is the point: two jobs at once, each a process of its own.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, free_port, run_main
from mlflow import MlflowClient

from orchestrator.tracking.registry import PREVIOUS, PRODUCTION

FEATURES = 10


def write_data(path: Path, seed: int = 0, drifted: bool = False) -> Path:
    """A 3-class problem; ``drifted``: the same concept, with 5 features shifted and
    rescaled (the course's black cats, then coloured cats)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=1500, n_features=FEATURES, n_informative=6,
                               n_classes=3, random_state=0)
    rng = np.random.default_rng(seed)
    x = x + rng.normal(scale=0.05, size=x.shape)
    if drifted:
        x[:, :5] = x[:, :5] * 3.0 + 2.5
    np.savez(path, X=x.astype(np.float32), y=y)
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A sweep that registered and promoted ``base`` version 1 in ``workdir``'s store.
    Nothing from the environment (MLflow, Ray, CAVIAR_DEBUG) leaks into the module's
    commands; the Ray the sweep started here serves the in-process ones, and ends with
    the module."""
    import ray

    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    tmp = tmp_path_factory.mktemp("retune")
    write_data(tmp / "then.npz")
    write_data(tmp / "same.npz", seed=1)
    write_data(tmp / "drifted.npz", seed=2, drifted=True)
    sweep = {
        "name": "base-sweep",
        "data": {"source": "npz", "path": str(tmp / "then.npz"), "label": "y"},
        "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.3, "priority": 1},
                  "hidden_units": {"scale": "linear", "type": "int", "low": 16, "high": 64,
                                   "priority": 2}},
        "strategy": {"kind": "random", "trials": 2},
        "epochs": 5,
        "resources": {"cpu": 1, "concurrency": 1},  # one trial actor, reused: no 2nd start
        "seed": 0,
        "register": {"name": "base", "promote": True},
    }
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    workdir = tmp / "w"
    with pytest.MonkeyPatch.context() as env:
        for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CAVIAR_DEBUG"):
            env.delenv(name, raising=False)
        try:
            said = io.StringIO()
            run_sweep(load_sweep(tmp / "sweep.yaml"), workdir, stream=said)
            assert "version 1 is now production" in said.getvalue(), said.getvalue()
            uri = f"sqlite:///{workdir / 'mlflow.db'}"
            yield {"tmp": tmp, "workdir": workdir, "uri": uri,
                   "client": MlflowClient(uri, registry_uri=uri)}
        finally:
            ray.shutdown()


def production_copy(tuned, name: str, **tags) -> MlflowClient:
    """A registered model ``name`` whose version 1 is base's, with ``tags`` changed."""
    c = tuned["client"]
    v = c.get_model_version("base", "1")
    c.create_registered_model(name)
    made = c.create_model_version(name, v.source, run_id=v.run_id,
                                  tags={**v.tags, **{k.replace("__", "."): str(t)
                                                     for k, t in tags.items()}})
    c.set_registered_model_alias(name, PRODUCTION, made.version)
    return c


def retune_file(tuned, name: str, data: str = "same", **extra) -> Path:
    raw = {"model": name, "sweep": str(tuned["tmp"] / "sweep.yaml"),
           "data": {"source": "npz", "path": str(tuned["tmp"] / f"{data}.npz"), "label": "y"},
           "search": {"rounds": 1, "trials_per_round": 3}, "seeds": 3, "margin": 0.0}
    raw.update(extra)
    path = tuned["tmp"] / f"retune-{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def caviar(capsys, tuned, *args) -> tuple[int, str, str]:
    """``caviar ARGS --workdir WORKDIR`` in-process: (exit code, stdout, stderr)."""
    return run_main(capsys, *args, "--workdir", tuned["workdir"])


def aliases(c: MlflowClient, name: str) -> dict:
    return {k: str(v) for k, v in c.get_registered_model(name).aliases.items()}


def retune_runs(c: MlflowClient, name: str) -> list:
    exp = c.get_experiment_by_name(f"{name}-retune")
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id])


def test_a_recent_model_on_the_same_data_is_not_stale(tuned, capsys):
    c = production_copy(tuned, "fresh")
    code, out, err = caviar(capsys, tuned, "retune", retune_file(tuned, "fresh"))
    assert code == 0, err
    out = json.loads(out)
    assert out["decision"] == "not_stale" and out["reasons"] == []
    assert aliases(c, "fresh") == {PRODUCTION: "1"}
    assert len(c.search_model_versions("name = 'fresh'")) == 1
    runs = retune_runs(c, "fresh")
    # the job's own run, and no search: nothing trained
    assert [r.data.tags["caviar.kind"] for r in runs] == ["retune"]
    assert runs[0].data.tags["caviar.decision"] == "not_stale"
    assert runs[0].data.tags["caviar.trigger.drift"] == "ok"
    assert runs[0].data.metrics["drift.share"] == 0.0
    assert "NOT_STALE" in err


def test_covariate_shift_makes_it_stale_and_a_better_model_takes_over(tuned, capsys):
    c = production_copy(tuned, "shifted")
    path = retune_file(tuned, "shifted", data="drifted",
                       search={"rounds": 1, "trials_per_round": 2}, seeds=1)
    code, out, err = caviar(capsys, tuned, "retune", path)
    assert code == 0, err
    out = json.loads(out)
    assert "drift" in out["reasons"]
    assert out["decision"] in ("promoted", "refreshed"), err
    assert aliases(c, "shifted") == {PRODUCTION: "2", PREVIOUS: "1"}
    v2 = c.get_model_version("shifted", "2")
    assert v2.tags["caviar.decision"] == out["decision"] and v2.tags["caviar.tuned_at"]
    runs = retune_runs(c, "shifted")
    job = next(r for r in runs if r.data.tags["caviar.kind"] == "retune")
    assert job.data.tags["caviar.decision"] == out["decision"]
    assert job.data.tags["caviar.trigger.drift"] == "stale"
    assert job.data.metrics["drift.share"] >= 0.4
    assert "production.mean" in job.data.metrics and "deployed.accuracy" in job.data.metrics
    # the warm search ran, its first trial production's own hyperparameters
    search = [r for r in runs if r.data.tags["caviar.kind"] == "trial"]
    assert len(search) == 2
    base_lr = float(c.get_model_version("base", "1").tags["hp.lr"])
    assert any(float(r.data.params["lr"]) == pytest.approx(base_lr) for r in search)
    # the new production predicts today's data through the CLI (the deployed one: ~55 %)
    x = np.load(tuned["tmp"] / "drifted.npz")
    np.savez(tuned["tmp"] / "rows.npz", X=x["X"][:200])
    code, pred, err = caviar(capsys, tuned, "predict", "models:/shifted@production",
                             tuned["tmp"] / "rows.npz")
    assert code == 0, err
    right = sum(json.loads(line)["class"] == int(y) for line, y in
                zip(pred.splitlines(), x["y"][:200], strict=True))
    assert right >= 140


def test_a_challenger_that_cannot_win_is_kept(tuned, capsys):
    c = production_copy(tuned, "steady")
    path = retune_file(tuned, "steady", search={"rounds": 1, "trials_per_round": 1},
                       seeds=1, margin=0.5)
    code, out, err = caviar(capsys, tuned, "retune", path, "--force")
    assert code == 0, err
    out = json.loads(out)
    assert out["decision"] == "kept" and out["reasons"] == []
    assert aliases(c, "steady") == {PRODUCTION: "1"}
    assert len(c.search_model_versions("name = 'steady'")) == 1
    assert "--force" in err
    # kept: its cooldown starts now
    assert c.get_model_version("steady", "1").tags["caviar.checked_at"]


def test_other_hardware_makes_it_stale(tuned, capsys):
    c = production_copy(tuned, "moved", hw__gpu_model="NVIDIA A100-SXM4-80GB", hw__gpu_count=8)
    code, out, err = caviar(capsys, tuned, "retune", retune_file(tuned, "moved"), "--dry-run")
    assert code == 0, err
    out = json.loads(out)
    assert out["reasons"] == ["hardware"] and out["decision"] == "would_retune"
    assert "A100" in err  # the figures behind the reason
    assert aliases(c, "moved") == {PRODUCTION: "1"}
    assert [r.data.tags["caviar.kind"] for r in retune_runs(c, "moved")] == ["retune"]


def test_an_old_model_is_stale_by_age(tuned, capsys):
    production_copy(tuned, "old", caviar__tuned_at="2020-01-01T00:00:00+00:00")
    code, out, err = caviar(capsys, tuned, "retune", retune_file(tuned, "old"), "--dry-run")
    assert code == 0, err
    assert json.loads(out)["reasons"] == ["age"]


def test_two_retunes_at_once_one_trains_and_the_other_exits_3(tuned, tmp_path):
    """Two processes started together: the one that takes the lock trains, the other
    exits 3 naming the holder. Both join the module's Ray by its address (as jobs on a
    cluster's node do; neither starts a Ray of its own), whose every CPU a placement group
    holds until one of them has ended: the holder cannot train, and so cannot let go of
    the lock, before the other has met it."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from orchestrator.cluster.connect import connect

    c = production_copy(tuned, "busy")
    path = retune_file(tuned, "busy", search={"rounds": 1, "trials_per_round": 1}, seeds=1)
    connect()  # the module's Ray (started anew only where a test before ended it)
    held = placement_group([{"CPU": ray.cluster_resources()["CPU"]}])
    assert held.wait(60), "the module's Ray has CPUs in use"
    cmd = [sys.executable, "-m", "orchestrator.cli", "retune", str(path), "--force",
           "--address", ray.get_runtime_context().gcs_address,
           "--workdir", str(tuned["workdir"])]
    logs = [(tmp_path / f"out{i}", tmp_path / f"err{i}") for i in range(2)]
    procs = []
    try:
        for out, err in logs:
            with open(out, "w") as o, open(err, "w") as e:
                procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=o, stderr=e))
        deadline = time.monotonic() + 300
        while all(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "neither retune ended"
            time.sleep(0.1)  # polling the processes until one has ended
        first = next(i for i, p in enumerate(procs) if p.returncode is not None)
        assert procs[first].returncode == 3, logs[first][1].read_text()
    finally:
        remove_placement_group(held)  # the holder trains now
        for p in procs:
            try:
                p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    winner, loser = (1, 0) if first == 0 else (0, 1)
    assert codes[winner] == 0, logs[winner][1].read_text()
    assert "is locked by retune pid" in logs[loser][1].read_text()
    out = json.loads(logs[winner][0].read_text())
    assert out["decision"] in ("promoted", "refreshed", "kept")  # it trained
    jobs = [r for r in retune_runs(c, "busy") if r.data.tags["caviar.kind"] == "retune"]
    assert len(jobs) == 1  # only the holder ran
    # the lock is gone once the job ended
    assert not c.search_registered_models("name = 'caviar-lock.busy'")


def test_rollback_restores_the_earlier_version(tuned, capsys):
    c = production_copy(tuned, "rolled")
    v = c.get_model_version("base", "1")
    c.create_model_version("rolled", v.source, run_id=v.run_id, tags=v.tags)
    code, _, err = caviar(capsys, tuned, "promote", "rolled", "--version", "2")
    assert code == 0, err
    assert aliases(c, "rolled") == {PRODUCTION: "2", PREVIOUS: "1"}
    code, _, err = caviar(capsys, tuned, "rollback", "rolled")
    assert code == 0, err
    assert aliases(c, "rolled") == {PRODUCTION: "1", PREVIOUS: "2"}
    assert "version 1 is production again" in err
    # the job's cooldown starts at the rollback: it does not undo it the next night
    assert c.get_model_version("rolled", "1").tags["caviar.checked_at"]


def test_a_recently_kept_model_is_left_alone_for_its_cooldown(tuned, capsys):
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    c = production_copy(tuned, "resting", caviar__checked_at=now)
    code, out, err = caviar(capsys, tuned, "retune",
                            retune_file(tuned, "resting", data="drifted"))
    assert code == 0, err
    out = json.loads(out)
    assert "drift" in out["reasons"] and out["decision"] == "kept"
    assert "no re-tune before" in err and "cooldown_days" in err
    assert [r.data.tags["caviar.kind"] for r in retune_runs(c, "resting")] == ["retune"]
    assert aliases(c, "resting") == {PRODUCTION: "1"}


def test_a_relative_data_path_is_found_beside_the_retune_file(tuned, tmp_path, capsys,
                                                              monkeypatch):
    production_copy(tuned, "beside")
    path = retune_file(tuned, "beside", data="same")
    raw = yaml.safe_load(path.read_text())
    raw["data"]["path"] = "same.npz"  # beside the retune file, not in the cwd
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # a cwd without it
    code, out, err = caviar(capsys, tuned, "retune", path, "--dry-run")
    assert code == 0, err
    assert json.loads(out)["decision"] == "not_stale"


def test_rollback_with_nothing_to_go_back_to_is_bad_input(tuned, capsys):
    production_copy(tuned, "single")
    code, _, err = caviar(capsys, tuned, "rollback", "single")
    assert code == 2 and "no version with the alias 'previous'" in err
    assert "Traceback" not in err


def test_tracking_server_down_fails_and_moves_nothing(tuned, capsys, monkeypatch):
    # MLflow's retries (caviar's 2) come at once instead of after seconds of backoff
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    c = production_copy(tuned, "offline")
    down = f"http://127.0.0.1:{free_port()}"
    code, _, err = caviar(capsys, tuned, "retune", retune_file(tuned, "offline"), "--force",
                          "--tracking-uri", down)
    assert code == 1, err
    assert "not answering" in err and "nothing was changed" in err
    assert "Traceback" not in err
    assert aliases(c, "offline") == {PRODUCTION: "1"}


@pytest.mark.parametrize("change, message", [
    ({"model": "no-such-model"}, "no registered model 'no-such-model'"),
    ({"margin": -0.1}, "key 'margin': must be a number >= 0"),
    ({"triggers": ["age", "drfit"]}, "did you mean 'drift'"),
    ({"sweep": "missing.yaml"}, "key 'sweep': no such file"),
])
def test_bad_retune_files_are_refused_before_anything_runs(tuned, capsys, change, message):
    path = retune_file(tuned, "base", **change)
    code, _, err = caviar(capsys, tuned, "retune", path)
    assert code == 2, err
    assert message in err and str(path) in err
    assert "Traceback" not in err


def test_a_missing_store_or_data_file_is_bad_input_and_takes_no_lock(tuned, tmp_path,
                                                                     capsys):
    path = retune_file(tuned, "base")
    code, _, err = run_main(capsys, "retune", path, "--workdir", tmp_path / "elsewhere")
    assert code == 2 and "no MLflow store at sqlite:///" in err
    assert not (tmp_path / "elsewhere" / "mlflow.db").exists()  # none made by mistake
    bad = retune_file(tuned, "base", data={"source": "npz", "path": "nowhere.npz",
                                           "label": "y"})
    code, _, err = caviar(capsys, tuned, "retune", bad)
    assert code == 2 and "nowhere.npz" in err, err
    assert not tuned["client"].search_registered_models("name = 'caviar-lock.base'")


def test_a_model_without_production_is_refused(tuned, capsys):
    c = tuned["client"]
    v = c.get_model_version("base", "1")
    c.create_registered_model("unpromoted")
    c.create_model_version("unpromoted", v.source, run_id=v.run_id)
    code, _, err = caviar(capsys, tuned, "retune", retune_file(tuned, "unpromoted"))
    assert code == 2
    assert "no version with the alias 'production'" in err
    assert "caviar promote unpromoted --version N" in err


def test_validate_checks_a_retune_file_without_running_it(tuned, capsys):
    code, out, err = caviar(capsys, tuned, "validate", retune_file(tuned, "anything"))
    assert code == 0, err
    assert "re-tune job for model 'anything'" in out and "gate 3 seeds" in out
    bad = retune_file(tuned, "anything", seeds=0)
    code, _, err = caviar(capsys, tuned, "validate", bad)
    assert code == 2 and "key 'seeds'" in err
