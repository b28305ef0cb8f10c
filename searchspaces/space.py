"""A search space: frozen parameters, checked once at load, each on its own scale.

The YAML::

    parameters:
      lr:           {scale: log, low: 1.0e-4, high: 1.0, priority: 1}
      momentum:     {scale: reverse_log, low: 0.9, high: 0.999, priority: 2}
      hidden_units: {scale: linear, type: int, low: 50, high: 100, priority: 2}
      batch_size:   {choice: [32, 64, 128, 256, 512], priority: 2}
      optimizer:    {fixed: momentum}

Every error names the file, the parameter, the field, the rule and the bad value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from searchspaces.errors import SpecError, did_you_mean, unknown_key
from searchspaces.scales import SCALES, Linear, Log, Scale
from searchspaces.yamlio import load_mapping

PRIORITIES = (1, 2, 3, 4)
RANGE_KEYS = ("scale", "type", "low", "high", "priority", "default")
CHOICE_KEYS = ("choice", "priority", "default")
FIXED_KEYS = ("fixed", "priority")
ALL_KEYS = tuple(dict.fromkeys(RANGE_KEYS + CHOICE_KEYS + FIXED_KEYS))
TOP_KEYS = ("parameters", "description")


@dataclass(frozen=True)
class Parameter:
    """One named knob. ``to_unit``/``from_unit`` map its values to [0, 1] and back."""

    name: str
    priority: int | None

    is_tuned = True

    def to_unit(self, value: object) -> float:
        raise NotImplementedError

    def from_unit(self, u: float) -> object:
        raise NotImplementedError

    def contains(self, value: object) -> bool:
        """Whether ``value`` is a value of this parameter: inside its range (a whole
        number for an int), one of its choices, or its fixed value."""
        raise NotImplementedError

    def centre(self) -> object:
        """The value used when none is given: the default, else the unit-space centre."""
        default = getattr(self, "default", None)
        return default if default is not None else self.from_unit(0.5)

    def to_dict(self) -> dict:
        raise NotImplementedError


def _clip01(u: float) -> float:
    return 0.0 if u < 0.0 else 1.0 if u > 1.0 else float(u)


@dataclass(frozen=True)
class FloatParameter(Parameter):
    scale: Scale = field(default=None)  # type: ignore[assignment]
    default: float | None = None

    def to_unit(self, value: object) -> float:
        return self.scale.to_unit(float(value))

    def from_unit(self, u: float) -> float:
        v = self.scale.from_unit(_clip01(u))
        return min(max(v, self.scale.low), self.scale.high)  # float round-off at the edges

    def contains(self, value: object) -> bool:
        return _is_number(value) and self.scale.low <= value <= self.scale.high

    def to_dict(self) -> dict:
        d = {"scale": self.scale.name, "low": self.scale.low, "high": self.scale.high}
        return _with_optional(d, self)


@dataclass(frozen=True)
class IntParameter(Parameter):
    """An integer on a linear or log scale, inclusive of both bounds.

    Each integer k owns the interval [k - 0.5, k + 0.5] of a widened continuous
    scale, so a uniform unit value gives every integer its fair share (on a
    linear scale, exactly equal mass for low and high too).
    """

    scale: Scale = field(default=None)  # type: ignore[assignment]
    default: int | None = None

    @property
    def _wide(self) -> Scale:
        return type(self.scale)(self.scale.low - 0.5, self.scale.high + 0.5)

    def to_unit(self, value: object) -> float:
        return self._wide.to_unit(float(value))

    def from_unit(self, u: float) -> int:
        v = math.floor(self._wide.from_unit(_clip01(u)) + 0.5)
        return int(min(max(v, self.scale.low), self.scale.high))

    def contains(self, value: object) -> bool:
        return (_is_number(value) and math.isfinite(value) and float(value).is_integer()
                and self.scale.low <= value <= self.scale.high)

    def to_dict(self) -> dict:
        d = {"scale": self.scale.name, "type": "int",
             "low": int(self.scale.low), "high": int(self.scale.high)}
        return _with_optional(d, self)


@dataclass(frozen=True)
class ChoiceParameter(Parameter):
    """One of a list of values, each with equal mass in unit space."""

    values: tuple = ()
    default: object = None

    def to_unit(self, value: object) -> float:
        return (self.values.index(value) + 0.5) / len(self.values)

    def from_unit(self, u: float) -> object:
        n = len(self.values)
        return self.values[min(int(_clip01(u) * n), n - 1)]

    def contains(self, value: object) -> bool:
        return value in self.values

    def to_dict(self) -> dict:
        return _with_optional({"choice": list(self.values)}, self)


@dataclass(frozen=True)
class FixedParameter(Parameter):
    """Not tuned: always ``value``."""

    value: object = None
    is_tuned = False

    def to_unit(self, value: object) -> float:
        return 0.5

    def from_unit(self, u: float) -> object:
        return self.value

    def contains(self, value: object) -> bool:
        return value == self.value

    def to_dict(self) -> dict:
        return _with_optional({"fixed": self.value}, self)


def _with_optional(d: dict, p: Parameter) -> dict:
    if p.priority is not None:
        d["priority"] = p.priority
    if getattr(p, "default", None) is not None:
        d["default"] = p.default
    return d


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of parameters. Tuned ones span unit space, in declaration order."""

    parameters: tuple[Parameter, ...]
    source: str = "<dict>"
    description: str | None = None

    @property
    def tuned(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.is_tuned)

    @property
    def fixed(self) -> dict:
        return {p.name: p.value for p in self.parameters if isinstance(p, FixedParameter)}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def __getitem__(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def config_from_unit(self, u: Sequence[float]) -> dict:
        """A full configuration (fixed parameters included) from a point of unit space."""
        tuned = self.tuned
        if len(u) != len(tuned):
            raise ValueError(f"expected {len(tuned)} unit coordinates, got {len(u)}")
        config = {}
        values = iter(u)
        for p in self.parameters:
            config[p.name] = p.from_unit(next(values)) if p.is_tuned else p.value
        return config

    def unit_from_config(self, config: Mapping) -> list[float]:
        """The point of unit space of a configuration's tuned values."""
        return [p.to_unit(config[p.name]) for p in self.tuned]

    def centre(self) -> dict:
        """Every parameter at its default, else at the centre of its range in unit space."""
        return {p.name: p.centre() if p.is_tuned else p.value for p in self.parameters}

    def to_dict(self) -> dict:
        d = {"parameters": {p.name: p.to_dict() for p in self.parameters}}
        if self.description is not None:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(
        cls, data: Mapping, source: str = "<dict>", rules: Mapping | None = None
    ) -> SearchSpace:
        """Builds and checks a space.

        Args:
            data: the file's mapping, with a ``parameters`` key.
            source: where it came from, for error messages.
            rules: name -> ``models.config.Rule``: the parameters the model
                accepts and their values. None checks the scales only.

        Raises:
            SpecError: the first rule the data breaks.
        """
        if not isinstance(data, Mapping):
            raise SpecError(source, "", f"must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in TOP_KEYS:
                raise SpecError(source, f"key {key!r}", unknown_key(key, TOP_KEYS))
        if "parameters" not in data:
            raise SpecError(source, "", "missing key 'parameters' (a mapping of name -> spec)")
        params = data["parameters"]
        if not isinstance(params, Mapping) or not params:
            raise SpecError(
                source, "key 'parameters'",
                f"must be a non-empty mapping of name -> spec, got {params!r}",
            )
        description = data.get("description")
        if description is not None and not isinstance(description, str):
            raise SpecError(source, "key 'description'", f"must be text, got {description!r}")
        parsed = tuple(_parse_parameter(str(n), spec, source, rules) for n, spec in params.items())
        return cls(parsed, source, description)

    @classmethod
    def from_file(cls, path: str | Path, rules: Mapping | None = None) -> SearchSpace:
        return cls.from_dict(load_mapping(path), str(path), rules)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Where:
    """Errors for one parameter of one file, and its rule from the model (or None)."""

    def __init__(self, name: str, source: str, rules: Mapping | None):
        self.name, self.source = name, source
        if rules is not None and name not in rules:
            raise self.fail(None, f"the model has no such parameter{did_you_mean(name, rules)}; "
                            "it accepts " + ", ".join(sorted(rules)))
        self.rule = rules[name] if rules is not None else None

    def fail(self, field_: str | None, message: str) -> SpecError:
        where = f"parameter {self.name!r}" + (f": field {field_!r}" if field_ else "")
        return SpecError(self.source, where, message)

    def check_rule(self, field_: str, value: object) -> None:
        if self.rule is not None:
            problem = self.rule.check(value)
            if problem:
                raise self.fail(field_, f"the model says {self.name} {problem}, got {value!r}")

    def only(self, spec: Mapping, allowed: tuple, message: str) -> None:
        extra = [k for k in spec if k not in allowed]
        if extra:
            raise self.fail(extra[0], message)


def _parse_parameter(name: str, spec: object, source: str, rules: Mapping | None) -> Parameter:
    w = _Where(name, source, rules)
    if not isinstance(spec, Mapping):
        raise w.fail(None, "must be a mapping such as {scale: log, low: 1.0e-4, high: 1.0}, "
                     f"{{choice: [32, 64]}} or {{fixed: 0.9}}, got {spec!r}")
    for key in spec:
        if key not in ALL_KEYS:
            raise w.fail(str(key), unknown_key(key, ALL_KEYS))
    priority = spec.get("priority")
    if priority is not None and (
        not isinstance(priority, int) or isinstance(priority, bool) or priority not in PRIORITIES
    ):
        raise w.fail("priority", f"must be 1 (most important) to 4 (least), got {priority!r}")
    if "fixed" in spec:
        w.only(spec, FIXED_KEYS, "a fixed parameter takes only 'fixed' and 'priority'")
        w.check_rule("fixed", spec["fixed"])
        return FixedParameter(name, priority, value=spec["fixed"])
    if "choice" in spec:
        return _choice(spec, w, priority)
    return _range(spec, w, priority)


def _choice(spec: Mapping, w: _Where, priority: int | None) -> ChoiceParameter:
    w.only(spec, CHOICE_KEYS, "a choice takes only 'choice', 'priority' and 'default'")
    values = spec["choice"]
    if not isinstance(values, list) or not values:
        raise w.fail("choice", f"must be a non-empty list of values, got {values!r}")
    seen = []
    for v in values:
        if isinstance(v, (Mapping, list)):
            raise w.fail("choice", f"values must be scalars, got {v!r}")
        if any(v == s for s in seen):  # 1, 1.0 and True are one value to Python
            raise w.fail("choice", f"lists {v!r} twice (or a value equal to it); each value once")
        w.check_rule("choice", v)
        seen.append(v)
    default = spec.get("default")
    if default is not None and not any(default == v and type(default) is type(v)
                                       for v in values):
        raise w.fail("default", f"must be one of the choices {values}, got {default!r}")
    return ChoiceParameter(w.name, priority, values=tuple(values), default=default)


def _scale_and_type(spec: Mapping, w: _Where) -> tuple[str, str]:
    for key in ("low", "high"):
        if key not in spec:
            raise w.fail(None, f"missing {key!r}: a range needs low and high "
                         "(or use {choice: [...]} or {fixed: value})")
    scale_name = spec.get("scale", "linear")
    if not isinstance(scale_name, str) or scale_name not in SCALES:
        raise w.fail("scale", f"must be one of {', '.join(SCALES)}, got {scale_name!r}"
                     + did_you_mean(scale_name, SCALES))
    type_name = spec.get("type")
    if type_name is None:
        type_name = "int" if w.rule is not None and w.rule.type is int else "float"
    if not isinstance(type_name, str) or type_name not in ("float", "int"):
        raise w.fail("type", f"must be 'float' or 'int', got {type_name!r}")
    if type_name == "float" and w.rule is not None and w.rule.type is int:
        raise w.fail("type", f"the model says {w.name} must be an int; use type: int")
    if type_name == "int" and scale_name == "reverse_log":
        raise w.fail("type", "scale 'reverse_log' is for floats (momentum-like betas), not ints")
    return scale_name, type_name


def _bounds(spec: Mapping, w: _Where, scale_name: str, type_name: str) -> tuple:
    low, high = spec["low"], spec["high"]
    for key, v in (("low", low), ("high", high)):
        if not _is_number(v):
            raise w.fail(key, f"must be a number, got {v!r}")
        if math.isnan(v) or math.isinf(v):
            raise w.fail(key, f"must be finite, got {v}")
        if type_name == "int" and not float(v).is_integer():
            raise w.fail(key, f"type 'int' needs whole-number bounds, got {key}={v!r}")
    if low >= high:
        raise w.fail("low", f"needs low < high, got low={low!r}, high={high!r}"
                     + (" (use {fixed: value} for one value)" if low == high else ""))
    if scale_name == "log" and low <= 0:
        raise w.fail("low", f"scale 'log' needs low > 0, got low={low!r}")
    if scale_name == "reverse_log" and not (0 <= low and high < 1):
        bad = "low" if low < 0 else "high"
        raise w.fail(bad, f"scale 'reverse_log' needs 0 <= low < high < 1 (it samples 1 - value "
                     f"on a log scale), got low={low!r}, high={high!r}")
    if type_name == "int" and scale_name == "log" and low < 1:
        raise w.fail("low", f"an int on scale 'log' needs low >= 1, got low={low!r}")
    if type_name == "int":
        low, high = int(low), int(high)
    w.check_rule("low", low)
    w.check_rule("high", high)
    return low, high


def _range(spec: Mapping, w: _Where, priority: int | None) -> Parameter:
    scale_name, type_name = _scale_and_type(spec, w)
    low, high = _bounds(spec, w, scale_name, type_name)
    default = spec.get("default")
    if default is not None:
        if not _is_number(default) or (type_name == "int" and not float(default).is_integer()):
            article = "an" if type_name == "int" else "a"
            raise w.fail("default", f"must be {article} {type_name}, got {default!r}")
        if not low <= default <= high:
            raise w.fail("default", f"must lie in [low, high] = [{low}, {high}], got {default!r}")
        default = int(default) if type_name == "int" else float(default)
    scale = SCALES[scale_name](low, high)
    if type_name == "int":
        if not isinstance(scale, (Linear, Log)):  # pragma: no cover - refused above
            raise w.fail("scale", "ints take scale linear or log")
        return IntParameter(w.name, priority, scale=scale, default=default)
    return FloatParameter(w.name, priority, scale=scale, default=default)
