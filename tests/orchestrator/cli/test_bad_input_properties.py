"""Property-based: whatever a space, sweep or re-tune file holds, and whatever rows a
file given to predict holds, caviar either takes it or refuses it with the one-paragraph
exit-2 error; never another exception (exit 1 "failed", or a traceback).

Hypothesis builds the files from caviar's own keys and values near the rules' edges, so
most examples get past the first check and exercise the ones behind it."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.data import DataError
from models.serving import read_rows
from orchestrator.cli import main
from searchspaces.yamlio import parse_yaml

PARAMS = ("lr", "momentum", "hidden_units", "batch_size", "layers", "optimizer", "lrr",
          "batch_norm", "activation")
FIELDS = ("scale", "low", "high", "type", "choice", "fixed", "priority", "default", "step")
SWEEP_KEYS = ("name", "data", "model", "space", "strategy", "scheduler", "epochs", "metric",
              "resources", "seed", "register", "tracking", "babysit", "epoch")
SECTION_KEYS = ("kind", "trials", "rounds", "trials_per_round", "keep", "margin", "points",
                "source", "size", "path", "label", "cpu", "gpu", "concurrency", "name", "mode",
                "grace_epochs", "promote", "uri", "enabled", "width", "start", "sampler")
RETUNE_KEYS = ("model", "sweep", "data", "triggers", "max_age_days", "drift", "decay", "search",
               "seeds", "margin", "cooldown_days", "tracking", "lock")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.sampled_from([0, 1, 2, 64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-4, 0.5, 0.999, 1.0]),
    st.sampled_from(["log", "linear", "reverse_log", "int", "float", "momentum", "adam",
                     "coarse_to_fine", "random", "tpe", "grid", "asha", "pbt", "fifo",
                     "synthetic", "digits", "csv", "val_loss", "min", "max", "course",
                     "digits.yaml", "age", "drift", "", "x" * 300]),
    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(SECTION_KEYS + FIELDS), inner, max_size=4)), max_leaves=12)
parameter = st.one_of(st.dictionaries(st.sampled_from(FIELDS), values, max_size=5), scalars)
space = st.dictionaries(st.sampled_from(PARAMS), parameter, max_size=4)
sweep = st.dictionaries(st.sampled_from(SWEEP_KEYS), values, max_size=8).flatmap(
    lambda d: st.one_of(st.just(d), space.map(lambda s: {**d, "space": s})))
retune = st.dictionaries(st.sampled_from(RETUNE_KEYS), values, min_size=1, max_size=8).map(
    lambda d: {**d, "model": d.get("model", "m")})

# A good sweep with one value replaced (or a key dropped): past every check but one.
GOOD = {"name": "p", "data": {"source": "synthetic", "size": 300, "n_features": 4},
        "model": {"batch_norm": True}, "epochs": 3, "seed": 0, "metric": {"name": "val_loss"},
        "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                  "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.99},
                  "batch_size": {"choice": [32, 64]}, "optimizer": {"fixed": "momentum"}},
        "strategy": {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 4},
        "scheduler": {"kind": "asha", "grace_epochs": 1}, "resources": {"cpu": 1},
        "register": {"name": "m"}, "babysit": {"keep": 2}}
PLACES = [(k,) for k in GOOD] + [(k, sub) for k, v in GOOD.items() if isinstance(v, dict)
                                 for sub in v] + [
    ("space", "lr", f) for f in ("scale", "low", "high", "default", "priority")] + [
    ("space", "batch_size", "choice"), ("strategy", "start"), ("strategy", "width"),
    ("scheduler", "kind"), ("data", "path"), ("data", "label"), ("tracking", "uri")]


def _put(doc: dict, place: tuple, value, drop: bool) -> dict:
    import copy

    out = copy.deepcopy(doc)
    here = out
    for key in place[:-1]:
        here = here.setdefault(key, {}) if isinstance(here.get(key, {}), dict) else {}
    if drop:
        here.pop(place[-1], None)
    else:
        here[place[-1]] = value
    return out


mutated = st.builds(_put, st.just(GOOD), st.sampled_from(PLACES), values, st.booleans())

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def validate(tmp_path, text: str) -> tuple[int, str]:
    path = tmp_path / "file.yaml"
    path.write_text(text)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", "-q", str(path)])
    return code, err.getvalue()


def assert_taken_or_refused(code: int, err: str) -> None:
    assert code in (0, 2), err
    if code == 2:
        text = err.strip()
        assert text.startswith("caviar: error: ") and len(text.splitlines()) == 1, err
        assert "Traceback" not in err and len(text) < 700, err


@pytest.fixture(autouse=True)
def _quiet(no_outside_services):
    """validate reads no store and starts no Ray: nothing from the environment leaks in."""


@SETTINGS
@given(doc=st.one_of(space.map(lambda s: {"parameters": s}), sweep, retune, mutated))
def test_any_space_sweep_or_retune_file_is_taken_or_refused_in_one_paragraph(tmp_path, doc):
    assert_taken_or_refused(*validate(tmp_path, yaml.safe_dump(doc, allow_unicode=True)))


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("ab:{}[],&*!- \n'\"#|>1.e")), max_size=80))
def test_any_text_is_taken_or_refused_in_one_paragraph(tmp_path, text):
    assert_taken_or_refused(*validate(tmp_path, text))


NAMES = ["x0", "x1", "x2"]
cells = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10),
                  st.sampled_from(["", "abc", "1e400", "nan", "inf", "-", "1,5"]))
columns = st.lists(st.sampled_from([*NAMES, "label", "note", "x 0", ""]), min_size=0,
                   max_size=5)


@SETTINGS
@given(header=columns, rows=st.lists(st.lists(cells, min_size=0, max_size=5), max_size=4),
       raw=st.booleans())
def test_any_csv_given_to_predict_gives_rows_or_a_data_error(tmp_path, header, rows, raw):
    path = tmp_path / "rows.csv"
    if raw:  # whatever the text, ragged rows included
        path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]))
    else:
        width = len(header)
        frame = pd.DataFrame([(r + [0] * width)[:width] for r in rows], columns=header or None)
        frame.to_csv(path, index=False)
    try:
        x = read_rows(path, NAMES)
    except DataError as e:
        assert str(e).startswith(str(path)) and len(str(e)) < 700
        return
    assert x.shape[1] == 3 and x.dtype == np.float64
    assert all(isinstance(v, float) or math.isnan(v) for v in x.ravel())


def test_the_yaml_reader_itself_never_raises_but_spec_errors():
    """A fast, wide sweep over the reader alone (no file, no CLI)."""
    from searchspaces import SpecError

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.text(max_size=60))
    def check(text):
        try:
            parse_yaml(text, "t.yaml")
        except SpecError as e:  # any other exception fails the test
            assert "t.yaml" in str(e) and len(str(e)) < 700

    check()
