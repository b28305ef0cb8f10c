"""What a search hands each trial (orchestrator/trial_protocol.py): hyperparameters without
bookkeeping."""

from __future__ import annotations

from orchestrator.trial_protocol import META_PREFIX, ROUND_KEY, SEED_KEY, hyperparameters


def test_the_bookkeeping_keys_start_with_the_meta_prefix():
    assert (META_PREFIX, ROUND_KEY, SEED_KEY) == ("_", "_round", "_seed")


def test_hyperparameters_drop_round_and_seed():
    config = {"lr": 0.01, ROUND_KEY: 2, "momentum": 0.9, SEED_KEY: 300_009}
    assert hyperparameters(config) == {"lr": 0.01, "momentum": 0.9}


def test_hyperparameters_drop_any_key_starting_with_an_underscore():
    config = {"_trial_dir": "/tmp/x", "batch_size": 64, "__debug": True, "_": 1}
    assert hyperparameters(config) == {"batch_size": 64}


def test_hyperparameters_keep_the_rest_in_their_order():
    config = {"optimizer": "adam", SEED_KEY: 1, "lr": 1e-3, ROUND_KEY: 0, "beta1": 0.9,
              "hidden_units": 64, "lr_": 5}  # an underscore elsewhere in a name is fine
    out = hyperparameters(config)
    assert list(out.items()) == [("optimizer", "adam"), ("lr", 1e-3), ("beta1", 0.9),
                                 ("hidden_units", 64), ("lr_", 5)]


def test_hyperparameters_return_a_new_dict_and_leave_the_config_alone():
    config = {"lr": 0.1, SEED_KEY: 7}
    out = hyperparameters(config)
    out["lr"] = 0.5
    assert config == {"lr": 0.1, SEED_KEY: 7}


def test_a_config_of_bookkeeping_only_has_no_hyperparameters():
    assert hyperparameters({ROUND_KEY: 1, SEED_KEY: 2}) == {}
    assert hyperparameters({}) == {}
