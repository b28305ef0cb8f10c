"""The knobs a caviar model accepts (models/config.py): RULES, the key sets, split_config."""

from __future__ import annotations

import math
import re

import pytest

from models.config import (
    ACTIVATIONS,
    MODEL_KEYS,
    OPTIMIZERS,
    RULES,
    TRAINER_KEYS,
    HParams,
    MLPConfig,
    Rule,
    split_config,
)

ALL = ", ".join(sorted(RULES))


def test_model_and_trainer_keys_are_the_dataclasses_fields():
    assert MODEL_KEYS == {"hidden_units", "layers", "batch_norm", "activation", "bn_momentum"}
    assert TRAINER_KEYS == {"optimizer", "lr", "momentum", "beta1", "beta2", "eps", "lr_decay",
                            "weight_decay", "batch_size"}
    assert not MODEL_KEYS & TRAINER_KEYS
    assert MODEL_KEYS | TRAINER_KEYS == set(RULES)


def test_the_defaults_keep_their_own_rules():
    defaults = {**vars(MLPConfig()), **vars(HParams())}
    assert set(defaults) == set(RULES)
    for name, value in defaults.items():
        assert RULES[name].check(value) is None, (name, value)


def test_split_config_splits_a_flat_config_into_net_and_trainer():
    model, trainer = split_config({
        "hidden_units": 32, "layers": 3, "batch_norm": False, "activation": "tanh",
        "bn_momentum": 0.8, "optimizer": "adam", "lr": 0.003, "beta1": 0.85, "beta2": 0.99,
        "eps": 1e-7, "batch_size": 16,
    })
    assert model == MLPConfig(hidden_units=32, layers=3, batch_norm=False, activation="tanh",
                              bn_momentum=0.8)
    assert trainer == HParams(optimizer="adam", lr=0.003, beta1=0.85, beta2=0.99, eps=1e-7,
                              batch_size=16)


def test_split_config_of_nothing_is_the_defaults():
    assert split_config({}) == (MLPConfig(), HParams())


def test_split_config_keeps_unset_keys_at_their_defaults():
    model, trainer = split_config({"lr": 0.1, "layers": 4})
    assert model == MLPConfig(layers=4)
    assert trainer == HParams(lr=0.1)


def test_split_config_makes_whole_numbers_floats_where_floats_are_wanted():
    model, trainer = split_config({"lr": 1, "momentum": 0, "lr_decay": 2, "bn_momentum": 0})
    assert trainer.lr == 1.0 and isinstance(trainer.lr, float)
    assert isinstance(trainer.momentum, float) and isinstance(trainer.lr_decay, float)
    assert model.bn_momentum == 0.0 and isinstance(model.bn_momentum, float)
    assert isinstance(trainer.batch_size, int)


def test_split_config_does_not_change_the_given_config():
    config = {"lr": 1, "hidden_units": 8}
    split_config(config)
    assert config == {"lr": 1, "hidden_units": 8}


@pytest.mark.parametrize(("config", "name"), [
    ({"dropout": 0.5}, "dropout"),
    ({"lr": 0.1, "learning_rate": 0.1}, "learning_rate"),
    ({"zeta": 1, "alpha": 2}, "alpha"),  # the first unknown key in sorted order
    ({"_seed": 3}, "_seed"),  # bookkeeping keys are stripped before split_config
])
def test_split_config_refuses_unknown_keys(config, name):
    with pytest.raises(ValueError, match=re.escape(
            f"unknown parameter {name!r}: the model accepts {ALL}")):
        split_config(config)


BAD_VALUES = [
    ("lr", 0, "must be a float in (0, inf)"),
    ("lr", -0.1, "must be a float in (0, inf)"),
    ("lr", math.nan, "must be a float in (0, inf)"),
    ("lr", math.inf, "must be a float in (0, inf)"),
    ("lr", "0.1", "must be a float in (0, inf)"),
    ("lr", True, "must be a float in (0, inf)"),
    ("momentum", 1.0, "must be a float in [0, 1)"),
    ("momentum", -0.01, "must be a float in [0, 1)"),
    ("beta2", 1, "must be a float in [0, 1)"),
    ("eps", 0.0, "must be a float in (0, inf)"),
    ("lr_decay", -1, "must be a float in [0, inf)"),
    ("weight_decay", -1e-4, "must be a float in [0, inf)"),
    ("bn_momentum", 1.0, "must be a float in [0, 1)"),
    ("hidden_units", 0, "must be an int in [1, 8192]"),
    ("hidden_units", 64.0, "must be an int in [1, 8192]"),
    ("hidden_units", True, "must be an int in [1, 8192]"),
    ("hidden_units", 10**8, "must be an int in [1, 8192]"),
    ("layers", 65, "must be an int in [1, 64]"),
    ("layers", 0, "must be an int in [1, 64]"),
    ("batch_size", 0, "must be an int in [1, inf)"),
    ("batch_norm", 1, "must be a bool (true or false)"),
    ("batch_norm", "yes", "must be a bool (true or false)"),
    ("activation", "softmax",
     "must be one of 'relu', 'tanh', 'sigmoid', 'leaky_relu', 'gelu'"),
    ("optimizer", "Adam", "must be one of 'sgd', 'momentum', 'adam', 'rmsprop'"),
    ("optimizer", 3, "must be one of 'sgd', 'momentum', 'adam', 'rmsprop'"),
]


@pytest.mark.parametrize(("name", "value", "rule"), BAD_VALUES,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_split_config_refuses_a_value_that_breaks_its_rule(name, value, rule):
    with pytest.raises(ValueError, match=re.escape(f"parameter {name!r} {rule}, got {value!r}")):
        split_config({name: value})
    assert RULES[name].check(value) == rule


GOOD_VALUES = [
    ("lr", 1e-9), ("lr", 10), ("momentum", 0), ("momentum", 0.9999), ("beta1", 0.0),
    ("eps", 1e-12), ("lr_decay", 0), ("weight_decay", 0.5), ("bn_momentum", 0.0),
    ("hidden_units", 1), ("hidden_units", 4096), ("layers", 1), ("layers", 64),
    ("batch_size", 1), ("batch_norm", False), ("activation", "gelu"), ("optimizer", "sgd"),
]


@pytest.mark.parametrize(("name", "value"), GOOD_VALUES,
                         ids=[f"{n}={v!r}" for n, v in GOOD_VALUES])
def test_values_inside_their_rule_are_accepted(name, value):
    assert RULES[name].check(value) is None


def test_every_choice_of_activation_and_optimizer_is_accepted():
    for activation in ACTIVATIONS:
        assert split_config({"activation": activation})[0].activation == activation
    for optimizer in OPTIMIZERS:
        assert split_config({"optimizer": optimizer})[1].optimizer == optimizer


def test_batch_size_1_is_refused_with_batch_norm():
    message = "batch_size 1 cannot be used with batch_norm: BN normalises each unit"
    with pytest.raises(ValueError, match=message):
        split_config({"batch_size": 1})  # batch_norm defaults to on
    with pytest.raises(ValueError, match=message):
        split_config({"batch_size": 1, "batch_norm": True})


def test_batch_size_1_is_fine_without_batch_norm():
    model, trainer = split_config({"batch_size": 1, "batch_norm": False})
    assert (model.batch_norm, trainer.batch_size) == (False, 1)


@pytest.mark.parametrize(("rule", "text"), [
    (Rule(float, low=0.0, high=1.0, low_open=True), "a float in (0, 1]"),
    (Rule(float, low=0.5, high=2.0, high_open=True), "a float in [0.5, 2)"),
    (Rule(str), "a str"),
    (Rule(str, choices=("a", "b")), "one of 'a', 'b'"),
    (Rule(bool), "a bool (true or false)"),
])
def test_a_rule_describes_itself(rule, text):
    assert rule.describe() == text


def test_a_plain_type_rule_checks_the_type_only():
    assert Rule(str).check("anything") is None
    assert Rule(str).check(3) == "must be a str"
