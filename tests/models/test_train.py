"""The trainer: learning, per-epoch metrics, optimisers, stopping, determinism, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.config import HParams, MLPConfig
from models.data import DataSpec, load, prepare
from models.train import CHECKPOINT_FORMAT, evaluate, fit, load_checkpoint

# Wall-clock figures differ between two otherwise identical runs.
TIMING_KEYS = {"epoch_seconds", "train_seconds", "samples_per_second"}
SMALL = MLPConfig(hidden_units=16, layers=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # steady timings, and bitwise-repeatable CPU results
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load(DataSpec())


@pytest.fixture(scope="module")
def small():
    """A few hundred rows, 3 classes: fast enough for many short fits."""
    return load(DataSpec(source="synthetic", size=300, n_features=10, classes=3, seed=0))


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _saver(path):
    """A callback saving a checkpoint each epoch (and returning None: a Path is truthy)."""
    def callback(metrics, run):
        run.save_checkpoint(path)
    return callback


def _fit(data, **kw):
    kw.setdefault("model_config", SMALL)
    kw.setdefault("hparams", HParams(lr=0.05))
    kw.setdefault("epochs", 3)
    kw.setdefault("seed", 0)
    kw.setdefault("device", "cpu")
    return fit(data, **kw)


# --- it learns, and says how it went --------------------------------------------------------

def test_digits_reaches_95_percent(digits):
    result = fit(digits, MLPConfig(hidden_units=75), HParams(lr=0.05, lr_decay=0.01),
                 epochs=20, seed=0, device="cpu")
    assert result.status == "completed" and result.epochs == 20
    assert max(m["val_accuracy"] for m in result.history) >= 0.95
    assert result.metrics == result.history[-1]
    assert result.metrics["val_accuracy"] >= 0.95
    # The returned model agrees with the last epoch's metrics.
    val_loss, val_acc = evaluate(result.model, torch.as_tensor(digits.x_val),
                                 torch.as_tensor(digits.y_val))
    assert val_acc == result.metrics["val_accuracy"]
    assert val_loss == pytest.approx(result.metrics["val_loss"], rel=1e-6)


def test_callback_gets_each_epochs_metrics(small):
    seen = []
    result = _fit(small, epochs=3, callback=lambda m, run: seen.append((dict(m), run.epoch)))
    assert [epoch for _, epoch in seen] == [1, 2, 3]
    for i, (m, _) in enumerate(seen, start=1):
        assert {"epoch", "train_loss", "val_loss", "val_accuracy", "epoch_seconds",
                "samples_per_second", "lr"} <= m.keys()
        assert m["epoch"] == i
        assert all(math.isfinite(m[k]) for k in ("train_loss", "val_loss"))
        assert 0.0 <= m["val_accuracy"] <= 1.0
        assert m["epoch_seconds"] > 0 and m["samples_per_second"] > 0
    assert [m for m, _ in seen] == result.history


def test_lr_decays_per_epoch(small):
    lr0, decay = 0.08, 0.5
    result = _fit(small, hparams=HParams(lr=lr0, lr_decay=decay), epochs=4)
    # alpha = alpha0 / (1 + decay * epoch), epoch counting those already completed:
    # the first epoch trains at alpha0.
    lrs = [m["lr"] for m in result.history]
    assert lrs == pytest.approx([lr0 / (1 + decay * e) for e in range(4)], rel=1e-12)


def test_no_decay_keeps_lr(small):
    result = _fit(small, hparams=HParams(lr=0.03), epochs=3)
    assert [m["lr"] for m in result.history] == [0.03] * 3


@pytest.mark.parametrize(("optimizer", "lr"),
                         [("sgd", 0.1), ("momentum", 0.05), ("adam", 0.01), ("rmsprop", 0.01)])
def test_every_optimizer_trains(small, optimizer, lr):
    result = _fit(small, hparams=HParams(optimizer=optimizer, lr=lr), epochs=4)
    losses = [m["train_loss"] for m in result.history]
    assert result.status == "completed"
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "leaky_relu", "gelu"])
def test_every_activation_trains(small, batch_norm, activation):
    config = MLPConfig(hidden_units=16, activation=activation, batch_norm=batch_norm)
    result = _fit(small, model_config=config, hparams=HParams(optimizer="adam", lr=0.01))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


# --- stopping ---------------------------------------------------------------------------------

def test_huge_lr_diverges_without_raising(small):
    seen = []
    result = _fit(small, model_config=MLPConfig(hidden_units=16, batch_norm=False),
                  hparams=HParams(optimizer="sgd", lr=1e6), epochs=10,
                  callback=lambda m, run: seen.append(m))
    assert result.status == "diverged"
    assert result.epochs < 10 and len(result.history) == result.epochs
    last = result.history[-1]
    assert not (math.isfinite(last["train_loss"]) and math.isfinite(last["val_loss"]))
    assert len(seen) == result.epochs  # the callback still hears of the diverged epoch


def test_callback_returning_true_stops_early(small):
    result = _fit(small, epochs=6, callback=lambda m, run: m["epoch"] == 2)
    assert result.status == "early_stopped"
    assert result.epochs == 2 and len(result.history) == 2


def test_stop_asked_on_the_last_epoch_is_still_completed(small):
    result = _fit(small, epochs=3, callback=lambda m, run: True if m["epoch"] == 3 else None)
    assert result.status == "completed" and result.epochs == 3


def test_callback_returning_falsy_keeps_going(small):
    result = _fit(small, epochs=3, callback=lambda m, run: False)
    assert result.status == "completed" and result.epochs == 3


# --- determinism ------------------------------------------------------------------------------

def test_same_seed_same_run_other_seed_other_run(small):
    a = _fit(small, seed=7)
    b = _fit(small, seed=7)
    c = _fit(small, seed=8)
    assert _untimed(a.history) == _untimed(b.history)
    _assert_same_weights(a.model, b.model)
    assert _untimed(a.history) != _untimed(c.history)
    assert not torch.equal(a.model.output.weight, c.model.output.weight)


def test_no_seed_draws_one_and_records_it(small):
    a = _fit(small, seed=None, epochs=2)
    assert isinstance(a.seed, int)
    b = _fit(small, seed=a.seed, epochs=2)
    assert _untimed(a.history) == _untimed(b.history)
    _assert_same_weights(a.model, b.model)


# --- checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_resume_gives_the_same_run(small, tmp_path, optimizer):
    hp = HParams(optimizer=optimizer, lr=0.02, lr_decay=0.1, batch_size=32)
    straight = _fit(small, hparams=hp, epochs=4)

    path = tmp_path / "ckpt" / "state.pt"

    def save_at_two(metrics, run):
        if metrics["epoch"] == 2:
            run.save_checkpoint(path)
            return True  # the driver died here
        return None

    first = _fit(small, hparams=hp, epochs=4, callback=save_at_two)
    assert first.status == "early_stopped" and first.epochs == 2
    assert path.exists() and not path.with_name("state.pt.tmp").exists()

    resumed_epochs = []
    resumed = _fit(small, hparams=hp, epochs=4, resume_from=path,
                   callback=lambda m, run: resumed_epochs.append(m["epoch"]))
    assert resumed_epochs == [3, 4]  # only the epochs it still lacked
    assert resumed.status == "completed" and resumed.epochs == 4
    _assert_same_weights(straight.model, resumed.model)  # BN running stats included
    bn_keys = [k for k in straight.model.state_dict() if "running_" in k]
    assert bn_keys
    assert _untimed(resumed.history) == _untimed(straight.history)


def test_resume_from_a_state_dict(small):
    states = []
    _fit(small, epochs=2, callback=lambda m, run: states.append(load_round_trip(run.state_dict())))
    straight = _fit(small, epochs=3)
    resumed = _fit(small, epochs=3, resume_from=states[1])
    _assert_same_weights(straight.model, resumed.model)
    assert _untimed(resumed.history) == _untimed(straight.history)


def test_state_dict_is_a_snapshot(small):
    # A state kept in memory (not saved to disk) at epoch 1 must still be epoch 1's after
    # the run goes on: resuming from it must replay epochs 2 and 3 exactly.
    states = []
    _fit(small, epochs=3, callback=lambda m, run: states.append(run.state_dict()))
    straight = _fit(small, epochs=3)
    resumed = _fit(small, epochs=3, resume_from=states[0])
    _assert_same_weights(straight.model, resumed.model)
    assert [m["epoch"] for m in states[0]["history"]] == [1]  # its own list, not the live one
    assert states[0]["history"][0] is not states[2]["history"][0]
    assert states[0]["model"]._metadata == straight.model.state_dict()._metadata


def test_a_snapshot_deep_copies_what_it_does_not_know():
    from collections import defaultdict

    from models.train import _snapshot

    state = {"n": 1, "tags": {"a"}, "counts": defaultdict(int, a=1), "layers": [torch.zeros(2)]}
    copy = _snapshot(state)
    copy["tags"].add("b")
    copy["counts"]["b"] += 1
    copy["layers"][0] += 1
    assert state["tags"] == {"a"} and state["counts"] == {"a": 1}
    assert state["layers"][0].tolist() == [0.0, 0.0]
    assert copy["counts"] == {"a": 1, "b": 1} and copy["layers"][0].tolist() == [1.0, 1.0]


def load_round_trip(state: dict) -> dict:
    """A state dict after save and load, as it would come from disk."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_checkpoint_loads_with_weights_only(small, tmp_path):
    path = tmp_path / "c.pt"
    _fit(small, epochs=1, callback=_saver(path))
    state = torch.load(path, weights_only=True)  # no pickled code in it
    assert {"model", "optimizer", "torch_rng", "shuffle_rng", "epoch"} <= state.keys()
    assert state["epoch"] == 1 and state["format"] == CHECKPOINT_FORMAT
    assert isinstance(state["torch_rng"], torch.Tensor)
    assert isinstance(state["shuffle_rng"], torch.Tensor)
    assert any("running_mean" in k for k in state["model"])
    assert load_checkpoint(path).keys() == state.keys()


def test_load_checkpoint_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "hook": _NotAWeight()}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        load_checkpoint(path)


class _NotAWeight:
    pass


@pytest.mark.parametrize(
    "config",
    [MLPConfig(hidden_units=32, layers=2), MLPConfig(hidden_units=16, layers=3),
     MLPConfig(hidden_units=16, layers=2, batch_norm=False)],
)
def test_resume_with_another_net_shape_is_refused(small, tmp_path, config):
    path = tmp_path / "c.pt"
    _fit(small, epochs=1, callback=_saver(path))
    with pytest.raises(ValueError, match=r"checkpoint is of another net shape"):
        _fit(small, model_config=config, epochs=2, resume_from=path)


def test_resume_on_data_of_another_shape_is_refused(small, tmp_path):
    path = tmp_path / "c.pt"
    _fit(small, epochs=1, callback=_saver(path))
    other = load(DataSpec(source="synthetic", size=300, n_features=12, classes=3))
    with pytest.raises(ValueError, match=r"another net shape.*\[10, 3\]"):
        _fit(other, epochs=2, resume_from=path)


def test_resume_with_another_checkpoint_format_is_refused(small, tmp_path):
    path = tmp_path / "c.pt"
    _fit(small, epochs=1, callback=_saver(path))
    state = load_checkpoint(path)
    state["format"] = CHECKPOINT_FORMAT + 1
    with pytest.raises(ValueError, match=r"checkpoint format"):
        _fit(small, epochs=2, resume_from=state)


def test_resume_with_new_hyperparameters_uses_them(small, tmp_path):
    # PBT perturbs the hyperparameters of a checkpointed trial: the new ones win.
    path = tmp_path / "c.pt"
    _fit(small, hparams=HParams(lr=0.05, momentum=0.9), epochs=2,
         callback=_saver(path))
    new = HParams(lr=0.01, momentum=0.5, lr_decay=1.0)
    seen = []
    result = _fit(small, hparams=new, epochs=3, resume_from=path,
                  callback=lambda m, run: seen.append(run.optimizer.param_groups[0]["momentum"]))
    assert result.history[-1]["lr"] == pytest.approx(0.01 / (1 + 1.0 * 2))
    assert result.history[0]["lr"] == 0.05  # the checkpoint's history is kept
    assert seen == [0.5]


# --- batch sizes ------------------------------------------------------------------------------

def test_batch_larger_than_the_training_set(small):
    n = len(small.x_train)
    result = _fit(small, hparams=HParams(lr=0.1, batch_size=10 * n), epochs=3)
    assert result.status == "completed"
    assert all(math.isfinite(m["train_loss"]) for m in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def _data_with_train_rows(n_train: int):
    """Two classes whose split leaves exactly ``n_train`` training rows."""
    rng = np.random.default_rng(0)
    per_class = []
    for n in range(3, 10 * n_train):
        n_test = min(max(1, round(n * 0.2)), n - 2)
        n_val = min(max(1, round(n * 0.2)), n - n_test - 1)
        per_class.append((n - n_test - n_val, n))
    # Class sizes a and b with train(a) + train(b) == n_train.
    for ta, a in per_class:
        for tb, b in per_class:
            if ta + tb == n_train:
                y = np.array([0] * a + [1] * b)
                x = rng.normal(size=(a + b, 5)) + y[:, None]
                ds = prepare(x, y, [f"x{i}" for i in range(5)])
                assert len(ds.x_train) == n_train
                return ds
    raise AssertionError(n_train)


@pytest.mark.parametrize(("n_train", "batch_size"), [(65, 64), (33, 16), (10, 3), (3, 2)])
def test_last_mini_batch_of_one_with_batch_norm(n_train, batch_size):
    assert n_train % batch_size == 1
    data = _data_with_train_rows(n_train)
    result = _fit(data, hparams=HParams(lr=0.05, batch_size=batch_size), epochs=2)
    assert result.status == "completed"
    assert all(math.isfinite(m["train_loss"]) for m in result.history)


def test_batch_norm_really_cannot_take_one_row():
    # Why the trainer drops a lone last row: training-mode BN refuses it.
    bn = torch.nn.BatchNorm1d(4).train()
    with pytest.raises(ValueError, match=r"more than 1 value per channel"):
        bn(torch.randn(1, 4))


def test_plain_net_trains_on_a_last_batch_of_one():
    data = _data_with_train_rows(65)
    result = _fit(data, model_config=MLPConfig(hidden_units=8, batch_norm=False),
                  hparams=HParams(lr=0.05, batch_size=64), epochs=2)
    assert result.status == "completed"
