"""The rules of a request (orchestrator/panda/requests.py) that need no run: which
values a nudge takes, and epochs as a person would write them. Pure, no services; the
requests themselves, through a real worker, are test_babysit.py's."""

from __future__ import annotations

import pytest

from orchestrator.cli._common import UsageError
from orchestrator.cli.spaces import parse_set_item
from orchestrator.panda.channel import BabysitError
from orchestrator.panda.requests import nudge_values, ranges

CONFIG = {"source": "sweep.yaml",
          "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                    "momentum": {"choice": [0.5, 0.9]},
                    "batch_size": {"fixed": 64}, "hidden_units": {"fixed": 16}}}


def nudged(*items: str) -> dict:
    """``babysit nudge --set ITEM ...``'s values: parsed as the command does, then ruled on."""
    return nudge_values(dict(parse_set_item(item) for item in items), CONFIG)


@pytest.mark.parametrize("item, fragment", [
    ("momentun=0.9", "did you mean 'momentum'"),
    ("lr=0.9", "has lr in [0.001, 0.3] (log), got 0.9; the run is unchanged"),
    ("momentum=0.7", "has momentum in [0.5, 0.9], got 0.7"),
    ("optimizer=adam", "optimizer shapes the net or its optimizer"),
    ("hidden_units=32", "hidden_units shapes the net"),
    ("batch_size=32", "fixes batch_size at 64"),
    ("lr_decay=0.5", "has no parameter 'lr_decay'; it tunes lr, momentum"),
    ("lr=abc", "lr must be a float"),
])
def test_bad_nudges_are_refused_and_the_run_is_unchanged(item, fragment):
    with pytest.raises((UsageError, BabysitError)) as e:
        nudged(item)
    assert fragment in str(e.value)


def test_a_nudge_inside_the_space_is_taken_as_given():
    assert nudged("lr=0.05", "momentum=0.9") == {"lr": 0.05, "momentum": 0.9}
    assert nudged("lr=0.3") == {"lr": 0.3}  # the bounds are inside


def test_epoch_ranges_read_as_a_person_would_write_them():
    assert ranges([0, 1, 2, 5, 6, 9]) == "0-2, 5-6, 9"
    assert ranges([]) == ""
