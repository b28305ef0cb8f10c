"""The knobs a caviar model accepts: the net's shape and the trainer's hyperparameters.

This module imports no torch, so search-space validation (``caviar validate``,
``caviar sample``) stays fast and can check parameter names and values against
what the model really accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu")


@dataclass(frozen=True)
class MLPConfig:
    """Shape of the course's net.

    Each hidden layer is Linear(bias=False) -> BatchNorm1d -> activation: BN's
    learnable beta does the bias's job. ``batch_norm=False`` gives the plain net
    (Linear with bias -> activation) so a sweep can compare the two.
    """

    hidden_units: int = 64
    layers: int = 2  # hidden layers; the output layer comes on top
    batch_norm: bool = True
    activation: str = "relu"
    # Weight of the old value in BN's running (exponentially weighted) averages,
    # as the course writes beta: running = bn_momentum * running + (1 - bn_momentum) * batch.
    # torch's BatchNorm1d(momentum=...) is 1 - this.
    bn_momentum: float = 0.9


@dataclass(frozen=True)
class HParams:
    """Trainer hyperparameters, named as the course names them.

    ``momentum`` is beta of gradient descent with momentum; ``beta1``, ``beta2``
    and ``eps`` are Adam's (RMSprop uses ``beta2`` as its squared-gradient
    average and ``eps``). The learning rate decays per epoch as
    ``lr / (1 + lr_decay * epoch)``.
    """

    optimizer: str = "momentum"
    lr: float = 0.01
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 64


@dataclass(frozen=True)
class Rule:
    """What values one parameter accepts: a type, and an interval or a set."""

    type: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is bool:
            return "a bool (true or false)"
        if self.type not in (int, float):
            return f"{'an' if self.type.__name__[0] in 'aeiou' else 'a'} {self.type.__name__}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        article = "an" if self.type.__name__[0] in "aeiou" else "a"
        return f"{article} {self.type.__name__} in {left}{low}, {high}{right}"

    def check(self, value: object) -> str | None:
        """Returns None when ``value`` is acceptable, else the rule it breaks."""
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, self.type)
        if not ok:
            return f"must be {self.describe()}"
        if self.choices is not None:
            return None if value in self.choices else f"must be {self.describe()}"
        if self.type in (int, float):
            v = float(value)
            if math.isnan(v) or math.isinf(v):
                return f"must be {self.describe()}"
            if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
                return f"must be {self.describe()}"
            if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
                return f"must be {self.describe()}"
        return None


# Every parameter a search space may name, with the values the model accepts.
RULES: dict[str, Rule] = {
    # 8192 units: a hidden layer of 67 M weights (0.27 GB, three times that with Adam);
    # more is a typo (1e8 tried to allocate 25 GB), not a net this trainer is for.
    "hidden_units": Rule(int, low=1, high=8192),
    "layers": Rule(int, low=1, high=64),
    "batch_norm": Rule(bool),
    "activation": Rule(str, choices=ACTIVATIONS),
    "bn_momentum": Rule(float, low=0.0, high=1.0, high_open=True),
    "optimizer": Rule(str, choices=OPTIMIZERS),
    "lr": Rule(float, low=0.0, low_open=True),
    "momentum": Rule(float, low=0.0, high=1.0, high_open=True),
    "beta1": Rule(float, low=0.0, high=1.0, high_open=True),
    "beta2": Rule(float, low=0.0, high=1.0, high_open=True),
    "eps": Rule(float, low=0.0, low_open=True),
    "lr_decay": Rule(float, low=0.0),
    "weight_decay": Rule(float, low=0.0),
    "batch_size": Rule(int, low=1),
}

MODEL_KEYS = frozenset(f.name for f in fields(MLPConfig))
TRAINER_KEYS = frozenset(f.name for f in fields(HParams))
assert MODEL_KEYS | TRAINER_KEYS == set(RULES), "RULES must cover every config field"


def split_config(config: dict) -> tuple[MLPConfig, HParams]:
    """Splits one flat configuration (a trial's) into the net's and the trainer's parts.

    Raises:
        ValueError: a key the model does not accept, or a value breaking its rule.
    """
    unknown = sorted(set(config) - set(RULES))
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r}: the model accepts " + ", ".join(sorted(RULES))
        )
    for name, value in config.items():
        problem = RULES[name].check(value)
        if problem:
            raise ValueError(f"parameter {name!r} {problem}, got {value!r}")
    if config.get("batch_norm", True) and config.get("batch_size", 2) < 2:
        raise ValueError("batch_size 1 cannot be used with batch_norm: BN normalises each unit "
                         "over the mini-batch and needs at least 2 examples")
    model = {k: v for k, v in config.items() if k in MODEL_KEYS}
    trainer = {k: v for k, v in config.items() if k in TRAINER_KEYS}
    # ints are fine where floats are wanted (lr: 1); keep the dataclasses' types honest.
    for k, v in list(trainer.items()):
        if RULES[k].type is float:
            trainer[k] = float(v)
    if "bn_momentum" in model:
        model["bn_momentum"] = float(model["bn_momentum"])
    return MLPConfig(**model), HParams(**trainer)
