"""What a babysat run's status says (orchestrator/panda/status.py) from its tags alone:
the state shown (a run whose worker is gone before it ended is lost), and the history
as text. Pure, no services."""

from __future__ import annotations

import json
import socket
import time

import pytest

from orchestrator.panda.channel import HEARTBEAT, STATE, WHERE
from orchestrator.panda.launch import ALIVE_S
from orchestrator.panda.status import LOST, ended, event_text, shown_state

ACTOR = json.dumps({"launcher": "ray", "host": "node-1", "node_ip": "10.0.0.2", "pid": 7})


def tags(state: str, heard_s_ago: float | None = None, where: str = ACTOR) -> dict:
    out = {STATE: state, WHERE: where}
    if heard_s_ago is not None:
        out[HEARTBEAT] = f"{time.time() - heard_s_ago:.3f}"
    return out


@pytest.mark.parametrize("state, heard, shown, running", [
    ("running", 1, "running", True),
    ("paused", 1, "paused", True),
    ("running", ALIVE_S + 5, LOST, False),  # the heartbeat stopped: the worker is gone
    ("paused", ALIVE_S + 5, LOST, False),
    ("starting", None, "starting", True),  # not heard of yet, but being started
    ("stopped", ALIVE_S + 5, "stopped", False),  # an end on record is no loss
    ("completed", None, "completed", False),
    ("failed", 1, "failed", False),
])
def test_a_run_whose_worker_is_gone_before_it_ended_is_lost(state, heard, shown, running):
    assert shown_state(tags(state, heard))[:2] == (shown, running)
    assert ended(shown) == (shown in ("stopped", "completed", "failed", LOST))


def test_a_local_worker_whose_process_is_gone_is_lost_at_once():
    here = json.dumps({"launcher": "local", "host": socket.gethostname(), "pid": 2**22 + 1})
    state, running, why = shown_state(tags("running", 1, here))
    assert (state, running) == (LOST, False) and why.endswith("its process is gone")


def test_the_history_reads_one_event_a_line():
    nudge = {"kind": "nudge", "epoch": 4, "branch": "b1", "time": 0.0,
             "set": {"lr": 0.05}, "before": {"lr": 0.01}, "from_epoch": 5}
    assert event_text(nudge).endswith("epoch    4  b1   nudge lr 0.01 -> 0.05 (from epoch 5)")
    refused = {"kind": "refused", "epoch": 2, "branch": "b0", "time": 0.0, "op": "revert",
               "reason": "no checkpoint of epoch 9 on branch b0"}
    assert event_text(refused).endswith("refused revert: no checkpoint of epoch 9 on branch b0")
