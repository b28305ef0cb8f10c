"""The re-tune job end to end: real MLflow (the embedded sqlite store), real Ray, the CLI.

One sweep tunes and registers a model once for the module; each test then gets a
registered model of its own (a copy of that version, same files and tags), so tests
that move aliases do not meet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, free_port
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
    """A sweep that registered and promoted ``base`` version 1 in ``workdir``'s store."""
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
        "strategy": {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 4},
        "epochs": 5,
        "resources": {"cpu": 1, "concurrency": 2},
        "seed": 0,
        "register": {"name": "base", "promote": True},
    }
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    workdir = tmp / "w"
    ran = subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep",
                          str(tmp / "sweep.yaml"), "--workdir", str(workdir)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert "version 1 is now production" in ran.stderr
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    return {"tmp": tmp, "workdir": workdir, "uri": uri,
            "client": MlflowClient(uri, registry_uri=uri)}


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


def caviar(tuned, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--workdir",
                           str(tuned["workdir"])], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def aliases(c: MlflowClient, name: str) -> dict:
    return {k: str(v) for k, v in c.get_registered_model(name).aliases.items()}


def retune_runs(c: MlflowClient, name: str) -> list:
    exp = c.get_experiment_by_name(f"{name}-retune")
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id])


def test_a_recent_model_on_the_same_data_is_not_stale(tuned):
    c = production_copy(tuned, "fresh")
    ran = caviar(tuned, "retune", str(retune_file(tuned, "fresh")))
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["decision"] == "not_stale" and out["reasons"] == []
    assert aliases(c, "fresh") == {PRODUCTION: "1"}
    assert len(c.search_model_versions("name = 'fresh'")) == 1
    runs = retune_runs(c, "fresh")
    # the job's own run, and no search: nothing trained
    assert [r.data.tags["caviar.kind"] for r in runs] == ["retune"]
    assert runs[0].data.tags["caviar.decision"] == "not_stale"
    assert runs[0].data.tags["caviar.trigger.drift"] == "ok"
    assert runs[0].data.metrics["drift.share"] == 0.0
    assert "NOT_STALE" in ran.stderr


def test_covariate_shift_makes_it_stale_and_a_better_model_takes_over(tuned):
    c = production_copy(tuned, "shifted")
    ran = caviar(tuned, "retune", str(retune_file(tuned, "shifted", data="drifted")))
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert "drift" in out["reasons"]
    assert out["decision"] in ("promoted", "refreshed"), ran.stderr
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
    assert len(search) == 3
    base_lr = float(c.get_model_version("base", "1").tags["hp.lr"])
    assert any(float(r.data.params["lr"]) == pytest.approx(base_lr) for r in search)
    # the new production predicts today's data through the CLI
    x = np.load(tuned["tmp"] / "drifted.npz")
    np.savez(tuned["tmp"] / "rows.npz", X=x["X"][:20])
    pred = caviar(tuned, "predict", "models:/shifted@production",
                  str(tuned["tmp"] / "rows.npz"))
    assert pred.returncode == 0, pred.stderr
    right = sum(json.loads(line)["class"] == int(y) for line, y in
                zip(pred.stdout.splitlines(), x["y"][:20]))
    assert right >= 14


def test_a_challenger_that_cannot_win_is_kept(tuned):
    c = production_copy(tuned, "steady")
    path = retune_file(tuned, "steady", search={"rounds": 1, "trials_per_round": 1},
                       margin=0.5)
    ran = caviar(tuned, "retune", str(path), "--force")
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["decision"] == "kept" and out["reasons"] == []
    assert aliases(c, "steady") == {PRODUCTION: "1"}
    assert len(c.search_model_versions("name = 'steady'")) == 1
    assert "--force" in ran.stderr


def test_other_hardware_makes_it_stale(tuned):
    c = production_copy(tuned, "moved", hw__gpu_model="NVIDIA A100-SXM4-80GB", hw__gpu_count=8)
    ran = caviar(tuned, "retune", str(retune_file(tuned, "moved")), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["reasons"] == ["hardware"] and out["decision"] == "would_retune"
    assert "A100" in ran.stderr  # the figures behind the reason
    assert aliases(c, "moved") == {PRODUCTION: "1"}
    assert [r.data.tags["caviar.kind"] for r in retune_runs(c, "moved")] == ["retune"]


def test_an_old_model_is_stale_by_age(tuned):
    production_copy(tuned, "old", caviar__tuned_at="2020-01-01T00:00:00+00:00")
    ran = caviar(tuned, "retune", str(retune_file(tuned, "old")), "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["reasons"] == ["age"]


def test_two_retunes_at_once_one_trains_and_the_other_exits_3(tuned):
    c = production_copy(tuned, "busy")
    path = retune_file(tuned, "busy", search={"rounds": 1, "trials_per_round": 2})
    cmd = [sys.executable, "-m", "orchestrator.cli", "retune", str(path), "--force",
           "--workdir", str(tuned["workdir"])]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    done = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], done
    loser = next(err for p, (_, err) in zip(procs, done) if p.returncode == 3)
    assert "is locked by retune pid" in loser
    jobs = [r for r in retune_runs(c, "busy") if r.data.tags["caviar.kind"] == "retune"]
    assert len(jobs) == 1  # only the holder ran
    # the lock is gone once the job ended
    assert not c.search_registered_models("name = 'caviar-lock.busy'")


def test_rollback_restores_the_earlier_version(tuned):
    c = production_copy(tuned, "rolled")
    v = c.get_model_version("base", "1")
    c.create_model_version("rolled", v.source, run_id=v.run_id, tags=v.tags)
    promoted = caviar(tuned, "promote", "rolled", "--version", "2")
    assert promoted.returncode == 0, promoted.stderr
    assert aliases(c, "rolled") == {PRODUCTION: "2", PREVIOUS: "1"}
    back = caviar(tuned, "rollback", "rolled")
    assert back.returncode == 0, back.stderr
    assert aliases(c, "rolled") == {PRODUCTION: "1", PREVIOUS: "2"}
    assert "version 1 is production again" in back.stderr
    # the job's cooldown starts at the rollback: it does not undo it the next night
    assert c.get_model_version("rolled", "1").tags["caviar.checked_at"]


def test_a_recently_kept_model_is_left_alone_for_its_cooldown(tuned):
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    c = production_copy(tuned, "resting", caviar__checked_at=now)
    ran = caviar(tuned, "retune", str(retune_file(tuned, "resting", data="drifted")))
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert "drift" in out["reasons"] and out["decision"] == "kept"
    assert "no re-tune before" in ran.stderr and "cooldown_days" in ran.stderr
    assert [r.data.tags["caviar.kind"] for r in retune_runs(c, "resting")] == ["retune"]
    assert aliases(c, "resting") == {PRODUCTION: "1"}


def test_a_relative_data_path_is_found_beside_the_retune_file(tuned, tmp_path):
    production_copy(tuned, "beside")
    path = retune_file(tuned, "beside", data="same")
    raw = yaml.safe_load(path.read_text())
    raw["data"]["path"] = "same.npz"  # beside the retune file, not in the cwd
    path.write_text(yaml.safe_dump(raw))
    ran = subprocess.run([sys.executable, "-m", "orchestrator.cli", "retune", str(path),
                          "--dry-run", "--workdir", str(tuned["workdir"])], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["decision"] == "not_stale"


def test_rollback_with_nothing_to_go_back_to_is_bad_input(tuned):
    production_copy(tuned, "single")
    ran = caviar(tuned, "rollback", "single")
    assert ran.returncode == 2 and "no version with the alias 'previous'" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_tracking_server_down_fails_and_moves_nothing(tuned):
    c = production_copy(tuned, "offline")
    down = f"http://127.0.0.1:{free_port()}"
    ran = caviar(tuned, "retune", str(retune_file(tuned, "offline")), "--force",
                 "--tracking-uri", down, timeout=300)
    assert ran.returncode == 1, ran.stderr
    assert "not answering" in ran.stderr and "nothing was changed" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert aliases(c, "offline") == {PRODUCTION: "1"}


@pytest.mark.parametrize("change, message", [
    ({"model": "no-such-model"}, "no registered model 'no-such-model'"),
    ({"margin": -0.1}, "key 'margin': must be a number >= 0"),
    ({"triggers": ["age", "drfit"]}, "did you mean 'drift'"),
    ({"sweep": "missing.yaml"}, "key 'sweep': no such file"),
])
def test_bad_retune_files_are_refused_before_anything_runs(tuned, change, message):
    path = retune_file(tuned, "base", **change)
    ran = caviar(tuned, "retune", str(path))
    assert ran.returncode == 2, ran.stderr
    assert message in ran.stderr and str(path) in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_missing_store_or_data_file_is_bad_input_and_takes_no_lock(tuned, tmp_path):
    path = retune_file(tuned, "base")
    ran = subprocess.run([sys.executable, "-m", "orchestrator.cli", "retune", str(path),
                          "--workdir", str(tmp_path / "elsewhere")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 2 and "no MLflow store at sqlite:///" in ran.stderr
    assert not (tmp_path / "elsewhere" / "mlflow.db").exists()  # none made by mistake
    bad = retune_file(tuned, "base", data={"source": "npz", "path": "nowhere.npz",
                                           "label": "y"})
    ran = caviar(tuned, "retune", str(bad))
    assert ran.returncode == 2 and "nowhere.npz" in ran.stderr, ran.stderr
    assert not tuned["client"].search_registered_models("name = 'caviar-lock.base'")


def test_a_model_without_production_is_refused(tuned):
    c = tuned["client"]
    v = c.get_model_version("base", "1")
    c.create_registered_model("unpromoted")
    c.create_model_version("unpromoted", v.source, run_id=v.run_id)
    ran = caviar(tuned, "retune", str(retune_file(tuned, "unpromoted")))
    assert ran.returncode == 2
    assert "no version with the alias 'production'" in ran.stderr
    assert "caviar promote unpromoted --version N" in ran.stderr


def test_validate_checks_a_retune_file_without_running_it(tuned):
    ran = caviar(tuned, "validate", str(retune_file(tuned, "anything")))
    assert ran.returncode == 0, ran.stderr
    assert "re-tune job for model 'anything'" in ran.stdout and "gate 3 seeds" in ran.stdout
    bad = retune_file(tuned, "anything", seeds=0)
    ran = caviar(tuned, "validate", str(bad))
    assert ran.returncode == 2 and "key 'seeds'" in ran.stderr
