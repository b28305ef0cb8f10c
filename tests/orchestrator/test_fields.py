"""Field checks of caviar's files (orchestrator/fields.py) and the SpecError they raise
(searchspaces/errors.py): each message names the file, the dotted key, the rule and the value."""

from __future__ import annotations

import math
import re

import pytest

from orchestrator.fields import fail, flag, number, only_keys, section, unknown, whole
from searchspaces.errors import SpecError, did_you_mean, unknown_key

SWEEP_KEYS = ("name", "data", "space", "strategy", "epochs", "seed")


def raises(message: str):
    """pytest.raises for a SpecError whose whole text is ``message``."""
    return pytest.raises(SpecError, match="^" + re.escape(message) + "$")


# --- SpecError -------------------------------------------------------------------------

def test_a_spec_error_names_the_file_where_and_the_rule():
    e = SpecError("sweep.yaml", "key 'epochs'", "must be a whole number >= 1, got 0")
    assert str(e) == "sweep.yaml: key 'epochs': must be a whole number >= 1, got 0"
    assert (e.source, e.where, e.message) == ("sweep.yaml", "key 'epochs'",
                                             "must be a whole number >= 1, got 0")
    assert isinstance(e, ValueError)


def test_a_spec_error_about_the_whole_file_has_no_where():
    assert str(SpecError("sweep.yaml", "", "must be a mapping")) == "sweep.yaml: must be a mapping"


def test_a_spec_error_without_a_file_is_the_message_alone():
    assert str(SpecError("", "", "must be a mapping")) == "must be a mapping"


# --- did_you_mean and unknown_key ------------------------------------------------------

@pytest.mark.parametrize(("name", "known", "hint"), [
    ("lrr", ["lr", "momentum"], " (did you mean 'lr'?)"),
    ("epoch", SWEEP_KEYS, " (did you mean 'epochs'?)"),
    ("stratgy", SWEEP_KEYS, " (did you mean 'strategy'?)"),
    (5, [4, 5.0, "5"], " (did you mean '5'?)"),  # compared as text
])
def test_did_you_mean_names_the_closest_known_name(name, known, hint):
    assert did_you_mean(name, known) == hint


@pytest.mark.parametrize(("name", "known"), [
    ("dropout", ["lr", "momentum", "batch_size"]),
    ("zzz", SWEEP_KEYS),
    ("lr", []),
])
def test_did_you_mean_is_empty_when_nothing_is_close(name, known):
    assert did_you_mean(name, known) == ""


def test_unknown_key_gives_the_hint_and_the_allowed_keys():
    assert unknown_key("epoch", SWEEP_KEYS) == (
        "unknown key (did you mean 'epochs'?); allowed keys are "
        "name, data, space, strategy, epochs, seed")
    assert unknown_key("zzz", ("kind", "trials")) == "unknown key; allowed keys are kind, trials"


# --- fail, unknown, only_keys ----------------------------------------------------------

def test_fail_names_the_dotted_key():
    e = fail("f.yaml", "strategy.keep", "must be a number in (0, 1], got 1.5")
    assert isinstance(e, SpecError)
    assert str(e) == "f.yaml: key 'strategy.keep': must be a number in (0, 1], got 1.5"
    assert e.where == "key 'strategy.keep'"


def test_fail_without_a_key_is_about_the_whole_file():
    e = fail("f.yaml", "", "must be a mapping, got 3")
    assert str(e) == "f.yaml: must be a mapping, got 3"
    assert e.where == ""


def test_unknown_in_a_section_names_the_dotted_key():
    e = unknown("sweep.yaml", "strategy", "point", ("kind", "points"))
    assert str(e) == ("sweep.yaml: key 'strategy.point': unknown key (did you mean 'points'?); "
                      "allowed keys are kind, points")


def test_unknown_at_the_top_level_names_the_key_alone():
    e = unknown("sweep.yaml", "", "epoch", SWEEP_KEYS)
    assert str(e) == ("sweep.yaml: key 'epoch': unknown key (did you mean 'epochs'?); "
                      "allowed keys are name, data, space, strategy, epochs, seed")


def test_unknown_takes_a_key_that_is_not_text():
    e = unknown("sweep.yaml", "resources", 3, ("cpu", "gpu"))
    assert str(e) == "sweep.yaml: key 'resources.3': unknown key; allowed keys are cpu, gpu"


def test_only_keys_accepts_known_keys():
    assert only_keys("f.yaml", "data", {"source": "csv", "path": "x.csv"},
                     ("source", "path", "label")) is None
    assert only_keys("f.yaml", "data", {}, ()) is None


def test_only_keys_refuses_the_first_unknown_key():
    with raises("f.yaml: key 'data.lable': unknown key (did you mean 'label'?); "
                "allowed keys are source, path, label"):
        only_keys("f.yaml", "data", {"source": "csv", "lable": "y", "pth": "x.csv"},
                  ["source", "path", "label"])


# --- section ---------------------------------------------------------------------------

def test_section_is_a_copy_of_the_mapping():
    raw = {"strategy": {"kind": "grid", "points": 3}}
    got = section(raw, "strategy", "f.yaml")
    assert got == {"kind": "grid", "points": 3}
    got["points"] = 9
    assert raw["strategy"]["points"] == 3


def test_a_null_section_is_empty():
    assert section({"strategy": None}, "strategy", "f.yaml", default={"kind": "grid"}) == {}


def test_an_absent_section_takes_its_default():
    assert section({}, "strategy", "f.yaml") == {}
    default = {"kind": "random"}
    got = section({}, "strategy", "f.yaml", default=default)
    assert got == {"kind": "random"} and got is not default


@pytest.mark.parametrize("value", [[1, 2], "grid", 3, True])
def test_a_section_that_is_not_a_mapping_is_refused(value):
    with raises(f"f.yaml: key 'strategy': must be a mapping, got {value!r}"):
        section({"strategy": value}, "strategy", "f.yaml")


# --- whole, number, flag ---------------------------------------------------------------

@pytest.mark.parametrize(("value", "low"), [(1, 1), (48, 1), (0, 0), (10**12, 1), (-3, -5)])
def test_whole_accepts_whole_numbers_from_low(value, low):
    got = whole("f.yaml", "epochs", value, low)
    assert got == value and type(got) is int


@pytest.mark.parametrize(("value", "low"), [
    (0, 1), (-1, 0), (2.0, 1), (2.5, 1), ("3", 1), (None, 1), (True, 0), (False, 0),
])
def test_whole_refuses_anything_else(value, low):
    with raises(f"f.yaml: key 'strategy.rounds': must be a whole number >= {low}, "
                f"got {value!r}"):
        whole("f.yaml", "strategy.rounds", value, low)


@pytest.mark.parametrize(("value", "kwargs", "expected"), [
    (1, {}, 1.0),
    (0, {}, 0.0),
    (0.5, {"low_open": True, "high_open": True}, 0.5),
    (1, {"low_open": True}, 1.0),
    (0, {"high_open": True}, 0.0),
])
def test_number_accepts_numbers_in_the_interval_as_floats(value, kwargs, expected):
    got = number("f.yaml", "strategy.keep", value, 0, 1, **kwargs)
    assert got == expected and type(got) is float


@pytest.mark.parametrize(("value", "kwargs", "interval"), [
    (1.5, {"low_open": True}, "(0, 1]"),
    (0, {"low_open": True}, "(0, 1]"),
    (1, {"high_open": True}, "[0, 1)"),
    (-0.1, {}, "[0, 1]"),
    (0.5, {"low_open": True, "high_open": True, "low": 0.5}, "(0.5, 1)"),
    (math.nan, {}, "[0, 1]"),
    (math.inf, {}, "[0, 1]"),
    (True, {}, "[0, 1]"),  # a bool is not a number
    (False, {}, "[0, 1]"),
    ("0.5", {}, "[0, 1]"),
    (None, {}, "[0, 1]"),
])
def test_number_refuses_values_outside_the_interval(value, kwargs, interval):
    low = kwargs.pop("low", 0)
    with raises(f"f.yaml: key 'strategy.keep': must be a number in {interval}, got {value!r}"):
        number("f.yaml", "strategy.keep", value, low, 1, **kwargs)


def test_number_names_the_key_from_the_example():
    with raises("f.yaml: key 'strategy.keep': must be a number in (0, 1], got 1.5"):
        number("f.yaml", "strategy.keep", 1.5, 0, 1, low_open=True)


def test_number_writes_its_bounds_in_short_form():
    with raises("s.yaml: key 'x': must be a number in [1e-06, 1e+06], got 0"):
        number("s.yaml", "x", 0, 1e-6, 1e6)


@pytest.mark.parametrize("value", [True, False])
def test_flag_accepts_true_and_false(value):
    assert flag("f.yaml", "register.promote", value) is value


@pytest.mark.parametrize("value", [1, 0, "true", "yes", None])
def test_flag_refuses_anything_but_a_bool(value):
    with raises(f"f.yaml: key 'register.promote': must be true or false, got {value!r}"):
        flag("f.yaml", "register.promote", value)
