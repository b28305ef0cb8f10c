"""The Ray Tune trainable (orchestrator/sweep/trainable.py): its checkpoints, the orphans a
resumed trial adopts, the best epoch it keeps, what it reports, and one real Tune trial."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import asdict

import pytest
import ray
import torch
from ray import tune
from ray.tune import Callback

from models.config import HParams, MLPConfig
from models.objective import Objective
from models.train import TrainingRun, fit, load_checkpoint
from orchestrator.cluster.hardware import hardware_fingerprint
from orchestrator.sweep.records import ORPHANS
from orchestrator.sweep.trainable import (
    BEST_FILE,
    CHECKPOINT_FILE,
    _BestKeeper,
    _Pace,
    _Reporter,
    adopt_orphan,
    newest_checkpoint,
    save_epoch,
    train_trial,
)
from orchestrator.trial_protocol import EPOCHS_KEY, reported_epochs

CFG = MLPConfig(hidden_units=8, layers=1)
HP = HParams(lr=0.05)
SEED = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tiny_data):
    return tiny_data


def _epoch_files(d) -> list[str]:
    return sorted(p.name for p in d.glob("epoch_*.pt"))


def _train(data, trial_dir, epochs: int, seed: int = SEED, hp: HParams = HP,
           cfg: MLPConfig = CFG) -> None:
    """A real fit that leaves one checkpoint per epoch in ``trial_dir``, as a trial does."""
    def callback(metrics, run):
        run.save_checkpoint(trial_dir / f"epoch_{run.epoch:05d}.pt")

    fit(data, cfg, hp, epochs=epochs, seed=seed, device="cpu", callback=callback)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- save_epoch -----------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_save_epoch_keeps_only_the_last_keep_epoch_files(data, tmp_path, keep):
    run = TrainingRun(data, CFG, HP, SEED, torch.device("cpu"))
    for _ in range(4):
        run.train_epoch()
        save_epoch(run, tmp_path, keep=keep)
    assert _epoch_files(tmp_path) == [f"epoch_{e:05d}.pt" for e in range(5 - keep, 5)]
    # each file holds the epoch its name says
    for e in range(5 - keep, 5):
        assert load_checkpoint(tmp_path / f"epoch_{e:05d}.pt")["epoch"] == e


def test_save_epoch_orders_by_epoch_past_nine_and_leaves_other_files(data, tmp_path):
    (tmp_path / BEST_FILE).write_bytes(b"not an epoch file")
    run = TrainingRun(data, CFG, HP, SEED, torch.device("cpu"))
    for epoch in (8, 9, 10, 11):  # the names sort as numbers: epoch 10 is newer than 9
        run.epoch = epoch
        save_epoch(run, tmp_path)
    assert _epoch_files(tmp_path) == ["epoch_00010.pt", "epoch_00011.pt"]
    assert (tmp_path / BEST_FILE).read_bytes() == b"not an epoch file"


# -- newest_checkpoint ----------------------------------------------------------------------


def test_newest_checkpoint_is_the_one_of_the_most_epochs(data, tmp_path):
    _train(data, tmp_path, epochs=3)
    state = newest_checkpoint(tmp_path)
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert _same_weights(state["model"], load_checkpoint(tmp_path / "epoch_00003.pt")["model"])


def test_a_checkpoint_cut_short_by_a_crash_is_skipped(data, tmp_path):
    _train(data, tmp_path, epochs=3)
    whole = (tmp_path / "epoch_00003.pt").read_bytes()
    cut = tmp_path / "epoch_00004.pt"  # the newest name, but only half written
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception):  # noqa: B017 - the premise: torch cannot read it
        load_checkpoint(cut)
    state = newest_checkpoint(tmp_path)
    assert state["epoch"] == 3
    assert _same_weights(state["model"], load_checkpoint(tmp_path / "epoch_00003.pt")["model"])


def test_a_tune_checkpoint_of_more_epochs_wins_over_own_files(data, tmp_path):
    own, other = tmp_path / "own", tmp_path / "other"
    own.mkdir()
    other.mkdir()
    _train(data, own, epochs=2)
    _train(data, other, epochs=4)
    tune_dir = own / "checkpoint_000001"
    tune_dir.mkdir()
    (tune_dir / CHECKPOINT_FILE).write_bytes((other / "epoch_00004.pt").read_bytes())
    assert newest_checkpoint(own)["epoch"] == 4


def test_no_readable_checkpoint_gives_none(tmp_path):
    assert newest_checkpoint(None) is None
    assert newest_checkpoint(tmp_path / "absent") is None
    assert newest_checkpoint(tmp_path) is None  # an empty folder
    (tmp_path / "epoch_00001.pt").write_bytes(b"PK\x03\x04 cut")
    assert newest_checkpoint(tmp_path) is None


# -- adopt_orphan ---------------------------------------------------------------------------


def _orphan(data, trials_dir, name: str, epochs: int, **kw) -> None:
    d = trials_dir / ORPHANS / f"trial_{name}"
    d.mkdir(parents=True)
    _train(data, d, epochs=epochs, **kw)


def test_an_orphan_of_the_same_seed_and_configuration_is_adopted(data, tmp_path):
    _orphan(data, tmp_path, "a", epochs=1)
    _orphan(data, tmp_path, "b", epochs=2)
    state = adopt_orphan(str(tmp_path), SEED, CFG, HP)
    assert state["epoch"] == 2  # the orphan that got furthest
    assert state["seed"] == SEED and state["hparams"] == asdict(HP)
    assert state["model_config"] == asdict(CFG)


@pytest.mark.parametrize("other", [
    {"seed": SEED + 1},
    {"hp": HParams(lr=0.1)},
    {"cfg": MLPConfig(hidden_units=16, layers=1)},
], ids=["another-seed", "other-hparams", "other-model-config"])
def test_an_orphan_of_another_seed_or_configuration_is_ignored(data, tmp_path, other):
    _orphan(data, tmp_path, "other", epochs=3, **other)
    assert adopt_orphan(str(tmp_path), SEED, CFG, HP) is None
    _orphan(data, tmp_path, "mine", epochs=1)
    state = adopt_orphan(str(tmp_path), SEED, CFG, HP)
    assert state["epoch"] == 1  # not the other's 3 epochs


def test_without_trials_dir_or_orphans_nothing_is_adopted(data, tmp_path):
    assert adopt_orphan(None, SEED, CFG, HP) is None
    assert adopt_orphan(str(tmp_path), SEED, CFG, HP) is None
    # a trial's own folder beside orphans/ is no orphan
    own = tmp_path / "trial_own"
    own.mkdir()
    _train(data, own, epochs=1)
    assert adopt_orphan(str(tmp_path), SEED, CFG, HP) is None


# -- _BestKeeper ----------------------------------------------------------------------------


@pytest.mark.parametrize(("objective", "values", "best_epochs"), [
    (Objective("val_loss", "min"), [1.0, 0.8, 0.9, 0.8, 0.7], [1, 2, 2, 2, 5]),
    (Objective.of("val_accuracy"), [0.5, 0.4, 0.6, 0.6, 0.7], [1, 1, 3, 3, 5]),
], ids=["min", "max"])
def test_best_pt_is_written_only_when_the_metric_improves(data, tmp_path, objective, values,
                                                          best_epochs):
    keeper = _BestKeeper(tmp_path, objective, None)
    assert keeper.best is None
    run = TrainingRun(data, CFG, HP, SEED, torch.device("cpu"))
    kept = []
    for value in values:
        metrics = {**run.train_epoch(), objective.name: value}
        keeper.on_epoch(metrics, run, due=True)
        kept.append(load_checkpoint(tmp_path / BEST_FILE)["epoch"])
    assert kept == best_epochs
    assert keeper.best == values[best_epochs[-1] - 1]
    assert _epoch_files(tmp_path) == ["epoch_00004.pt", "epoch_00005.pt"]


def test_a_non_finite_or_missing_metric_never_becomes_best(data, tmp_path):
    keeper = _BestKeeper(tmp_path, Objective(), None)
    run = TrainingRun(data, CFG, HP, SEED, torch.device("cpu"))
    for value in (math.nan, -math.inf):
        keeper.on_epoch({**run.train_epoch(), "val_loss": value}, run, due=True)
    metrics = run.train_epoch()
    del metrics["val_loss"]
    keeper.on_epoch(metrics, run, due=True)
    assert not (tmp_path / BEST_FILE).exists() and keeper.best is None
    keeper.on_epoch({**run.train_epoch(), "val_loss": 2.0}, run, due=True)
    assert load_checkpoint(tmp_path / BEST_FILE)["epoch"] == 4 and keeper.best == 2.0


@pytest.mark.parametrize(("objective", "pick"), [
    (Objective("val_loss", "min"), min),
    (Objective.of("val_accuracy"), max),
], ids=["min", "max"])
def test_a_resumed_keeper_starts_from_the_best_of_the_checkpoint(data, tmp_path, objective,
                                                                 pick):
    _train(data, tmp_path, epochs=3)
    state = load_checkpoint(tmp_path / "epoch_00003.pt")
    resumed_best = pick(m[objective.name] for m in state["history"])
    keeper = _BestKeeper(tmp_path, objective, state)
    assert keeper.best == resumed_best

    run = TrainingRun(data, CFG, HP, SEED, torch.device("cpu"))
    run.load_state_dict(state)
    step = 0.01 * objective.sign  # added: worse; taken away: better
    keeper.on_epoch({**run.train_epoch(), objective.name: resumed_best + step}, run, due=True)
    assert not (tmp_path / BEST_FILE).exists()  # not better than the line it continues
    keeper.on_epoch({**run.train_epoch(), objective.name: resumed_best - step}, run, due=True)
    assert load_checkpoint(tmp_path / BEST_FILE)["epoch"] == 5
    assert keeper.best == resumed_best - step


def test_a_keeper_without_a_folder_keeps_nothing(data, tmp_path):
    keeper = _BestKeeper(None, Objective(), None)
    run = TrainingRun(data, CFG, HP, SEED, torch.device("cpu"))
    keeper.on_epoch(run.train_epoch(), run, due=True)
    assert keeper.best is None


def test_between_reports_the_best_epoch_waits_in_memory_and_is_written_at_the_report(
        data, tmp_path):
    keeper = _BestKeeper(tmp_path, Objective(), None)
    run = TrainingRun(data, CFG, HP, SEED, torch.device("cpu"))
    keeper.on_epoch({**run.train_epoch(), "val_loss": 0.9}, run, due=False)
    keeper.on_epoch({**run.train_epoch(), "val_loss": 0.5}, run, due=False)
    at_best = {k: v.clone() for k, v in run.model.state_dict().items()}
    assert not (tmp_path / BEST_FILE).exists() and _epoch_files(tmp_path) == []
    keeper.on_epoch({**run.train_epoch(), "val_loss": 0.7}, run, due=True)  # worse: a report
    best = load_checkpoint(tmp_path / BEST_FILE)
    assert best["epoch"] == 2 and keeper.best == 0.5  # the best epoch's state, not the latest
    assert _same_weights(best["model"], at_best)
    assert _epoch_files(tmp_path) == ["epoch_00003.pt"]
    keeper.on_epoch({**run.train_epoch(), "val_loss": 0.6}, run, due=True)
    assert load_checkpoint(tmp_path / BEST_FILE)["epoch"] == 2  # nothing better: unchanged


# -- _Pace ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("metrics", "due"), [
    ({"epoch": 1, "train_loss": 0.5, "val_loss": 0.5}, False),
    ({"epoch": 3, "train_loss": 0.5, "val_loss": 0.5}, True),  # a scheduler's rung
    ({"epoch": 4, "train_loss": math.nan, "val_loss": 0.5}, True),  # diverged
    ({"epoch": 5, "train_loss": 0.5, "val_loss": math.inf}, True),
    ({"epoch": 9, "train_loss": 0.5, "val_loss": 0.5}, True),  # the last epoch
], ids=["short", "rung", "nan", "inf", "last"])
def test_a_short_epoch_reports_only_when_it_must(metrics, due):
    assert _Pace(9, decisions=[3], every=math.inf).due(metrics) is due


def test_a_short_epoch_reports_once_the_interval_has_passed(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("orchestrator.sweep.trainable.time.monotonic", lambda: now[0])
    pace = _Pace(50, every=2.0)
    dues = []
    for epoch in range(1, 11):
        now[0] += 0.5  # epochs of half a second
        dues.append(pace.due({"epoch": epoch, "train_loss": 0.5, "val_loss": 0.5}))
    assert [e for e, d in zip(range(1, 11), dues) if d] == [4, 8]
    assert all(_Pace(50, every=0.0).due({"epoch": e, "train_loss": 0.5, "val_loss": 0.5})
               for e in range(1, 5))  # long epochs (or PBT): every epoch


# -- _Reporter ------------------------------------------------------------------------------

NODE = {"node_ip": "10.0.0.7", "hostname": "worker-7", "device": "cpu", "gpu_count": 0}


def _metrics(epoch: int, train_loss: float = 0.7, val_loss: float = 0.6) -> dict:
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_accuracy": 0.75, "lr": 0.05}


@pytest.mark.parametrize(("metrics", "status"), [
    (_metrics(1), "running"),
    (_metrics(2), "running"),
    (_metrics(3), "completed"),
    (_metrics(4), "completed"),  # past the last epoch (a resumed run replaying)
    (_metrics(1, train_loss=math.nan), "diverged"),
    (_metrics(2, val_loss=math.inf), "diverged"),
    (_metrics(3, val_loss=math.nan), "diverged"),  # diverged wins over completed
], ids=["first", "middle", "last", "past-last", "nan-train", "inf-val", "nan-last"])
def test_reporter_status_per_epoch(metrics, status):
    out = _Reporter(3, False, NODE).result([metrics])
    assert out["caviar_status"] == status
    assert out["epoch"] == metrics["epoch"] and out["val_accuracy"] == 0.75


def test_reporter_turns_nan_into_inf_and_carries_the_node():
    metrics = _metrics(2, train_loss=math.nan, val_loss=math.nan)
    out = _Reporter(3, False, NODE).result([metrics], replayed=True)
    assert out["train_loss"] == math.inf and out["val_loss"] == math.inf
    assert out["lr"] == 0.05 and out["epoch"] == 2
    assert out["caviar_replayed"] is True
    assert {k: out[k] for k in NODE} == NODE
    assert math.isnan(metrics["train_loss"])  # the trainer's own dict is left as it was
    assert _Reporter(3, False, NODE).result([_metrics(1)])["caviar_replayed"] is False


def test_a_report_carries_every_epoch_since_the_last_one():
    batch = [_metrics(1), _metrics(2, val_loss=math.nan), _metrics(3, val_loss=0.4)]
    out = _Reporter(5, False, NODE).result(batch)
    assert out["epoch"] == 3 and out["val_loss"] == 0.4 and out["caviar_status"] == "running"
    assert [m["epoch"] for m in reported_epochs(out)] == [1, 2, 3]
    assert out[EPOCHS_KEY][1]["val_loss"] == math.inf  # JSON-safe, as the latest epoch's
    assert reported_epochs({"epoch": 7}) == [{"epoch": 7}]  # a result of one epoch


# -- train_trial in a real Tune trial ---------------------------------------------------------


class _Results(Callback):
    """Every result Tune receives (driver side)."""

    def __init__(self):
        self.results: list[dict] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.append(dict(result))


@pytest.mark.usefixtures("ray_shutdown")
def test_a_tune_trial_reports_all_its_epochs_and_keeps_best_pt(data, tmp_path):
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    seen = _Results()
    trials_dir = tmp_path / "exp"
    tuner = tune.Tuner(
        tune.with_parameters(train_trial, data=data, model={}, epochs=2, cpus=1,
                             trials_dir=str(trials_dir), report_every=3600.0),
        param_space={"lr": 0.05, "_seed": 3, "_round": 0},
        run_config=tune.RunConfig(name="trainable", storage_path=str(tmp_path / "ray"),
                                  verbose=0, callbacks=[seen]))
    grid = tuner.fit()
    assert grid.num_errors == 0
    results = seen.results
    # Within report_every (an hour here: a slow worker's first epoch, which imports
    # torch's optimizers, can take seconds): one report at the last epoch, carrying both.
    assert [r["epoch"] for r in results] == [2]
    assert [m["epoch"] for m in reported_epochs(results[0])] == [1, 2]
    assert [r["caviar_status"] for r in results] == ["completed"]
    fingerprint = hardware_fingerprint()
    for r in results:
        assert math.isfinite(r["val_loss"]) and r["val_loss"] > 0
        assert r["caviar_replayed"] is False
        assert r["node_id"] and r["node_ip"] and r["hostname"] == socket.gethostname()
        assert r["device"] == "cpu" and r["pid"] != os.getpid()  # a worker trained it
        assert r["cpu_model"] == fingerprint["cpu_model"]
        assert r["gpu_count"] == fingerprint["gpu_count"]
    tid = results[0]["trial_id"]
    own = trials_dir / f"trial_{tid}"
    best = load_checkpoint(own / BEST_FILE)
    best_epoch = min(reported_epochs(results[0]), key=lambda r: r["val_loss"])["epoch"]
    assert best["epoch"] == best_epoch and best["seed"] == 3
    assert best["hparams"]["lr"] == 0.05
    assert _epoch_files(own) == ["epoch_00002.pt"]  # written at the report
