"""What a person asks of a babysat run: nudge, pause (and go on: ``babysit resume``),
revert and stop. Each is checked against the run's record and queued for its worker
(``Record.post``), which applies it at the next epoch boundary; nothing else is
written. A stop of a run whose worker is gone is the exception: no worker will take
it, so ``stop`` closes the record itself.

A request returns at once (``Posted``); ``wait_taken`` and ``wait_stopped`` wait for
the worker's answer, for commands run with ``--wait``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.panda.channel import (
    FINAL_STATES,
    REQUEST,
    STATE,
    BabysitError,
    Record,
    reached,
)
from orchestrator.panda.launch import alive
from searchspaces.errors import Failure

if TYPE_CHECKING:
    from orchestrator.panda.register import Registered

POLL_S = 0.5
UNCHANGEABLE = ("optimizer",)  # besides the net's keys: the optimizer cannot change in place


class RequestFailed(Failure):
    """The worker did not take a request in time, or refused it: exit 1."""


@dataclass(frozen=True)
class Posted:
    """A request queued for the worker."""

    record: Record
    request: str
    what: str  # the request in words: "nudge lr=0.05", "revert to epoch 3 of b0"
    epoch: int  # the epochs the run had trained when it was asked
    running: bool  # whether a worker runs to take it (else it waits for a resume)
    why: str  # where the worker runs, or why it does not


@dataclass(frozen=True)
class Stopped:
    """A stop: queued (``posted``), or, for a run whose worker was gone, done here."""

    posted: Posted | None
    epoch: int
    registered: Registered | None = None  # when asked for, and done here


def _open(record: Record) -> tuple[dict, bool, str]:
    """(tags, running, why) of a run that takes requests; a run that ended does not."""
    tags = record.tags()
    state = tags.get(STATE)
    if state in FINAL_STATES:
        name = record.lineage().name
        raise BabysitError(f"babysat run {name!r} is {state} (at epoch {reached(tags)}): it "
                           f"takes no requests; `caviar babysit start --resume {name}` brings "
                           "it back")
    running, why = alive(tags)
    return tags, running, why


def _post(record: Record, tags: dict, running: bool, why: str, op: str, what: str,
          **values) -> Posted:
    return Posted(record, record.post(op, **values), what, reached(tags), running, why)


def nudge(record: Record, values: dict) -> Posted:
    """New values of tuned hyperparameters, from the next epoch on."""
    tags, running, why = _open(record)
    values = nudge_values(values, record.config())
    shown = " ".join(f"{k}={v!r}" for k, v in values.items())
    return _post(record, tags, running, why, "nudge", f"nudge {shown}", set=values)


def pause(record: Record, paused: bool = True) -> Posted | None:
    """Holds the run at the next epoch boundary (``paused=False``: lets it go on);
    None when it is so already (nothing is queued)."""
    tags, running, why = _open(record)
    if record.lineage().paused == paused:
        return None
    op = "pause" if paused else "resume"
    return _post(record, tags, running, why, op, op)


def revert(record: Record, epoch: int, branch: str | None, values: dict) -> Posted:
    """Back to epoch ``epoch`` of ``branch``'s line (default: the current), as a new
    branch, with new hyperparameter ``values`` if any."""
    tags, running, why = _open(record)
    lineage = record.lineage()
    try:
        owner = lineage.owner(epoch, branch)
    except KeyError:
        raise BabysitError(f"babysat run {lineage.name!r} has no branch {branch!r}; it has "
                           + ", ".join(b.id for b in lineage.branches)) from None
    held = record.checkpoint_epochs(owner)
    if epoch not in held:
        raise BabysitError(f"babysat run {lineage.name!r} has no checkpoint of epoch {epoch} "
                           f"on branch {branch or lineage.current}'s line (branch {owner.id} "
                           f"holds epochs {ranges(held) or 'none'})")
    values = nudge_values(values, record.config())
    what = f"revert to epoch {epoch} of {owner.id}" + (f" with {values}" if values else "")
    return _post(record, tags, running, why, "revert", what, epoch=epoch, branch=branch,
                 set=values)


def stop(record: Record, register: str | None = None) -> Stopped:
    """Ends the run at the next epoch boundary, then registers its best epoch as a
    version of ``register`` when given. A run whose worker is gone is closed here."""
    from orchestrator.tracking.registry import check_model_name

    if register is not None:
        check_model_name(register, "--register")
    tags, running, why = _open(record)
    if not running:
        return _close(record, register)
    posted = _post(record, tags, running, why, "stop", "stop", register=register)
    return Stopped(posted, posted.epoch)


def _close(record: Record, register: str | None) -> Stopped:
    """The stop of a run whose worker is gone, written as the worker would have."""
    from models.data import DataSpec, load
    from orchestrator.panda.register import on_record, register_best

    lineage, epoch = record.lineage(), reached(record.tags())
    lineage.record("stopped", epoch, by="caviar babysit stop (the worker was gone)")
    record.close(lineage, "stopped")
    if register is None:
        return Stopped(None, epoch)
    config = record.config()
    registered = register_best(record, lineage, register, config["metric"],
                               load(DataSpec(**config["data"]), config["base_dir"]))
    if registered is None:
        raise BabysitError(f"babysat run {lineage.name!r} stopped at epoch {epoch}, but no "
                           "epoch of its line has a checkpoint to register")
    on_record(record, registered)
    return Stopped(None, epoch, registered)


def wait_taken(posted: Posted, timeout: float) -> dict:
    """The worker's event for the request once it has taken it; RequestFailed when it
    did not within ``timeout`` seconds, or refused it."""
    record, deadline = posted.record, time.monotonic() + timeout
    while REQUEST + posted.request in record.tags():
        if time.monotonic() > deadline:
            raise RequestFailed(f"not taken in {timeout:g} s (still queued)")
        time.sleep(POLL_S)
    event = next((e for e in record.lineage().events if e.get("request") == posted.request),
                 None)
    if event is None or event["kind"] == "refused":
        raise RequestFailed(f"refused: {(event or {}).get('reason', 'no record')}")
    return event


def wait_stopped(posted: Posted, timeout: float) -> dict | None:
    """After a stop was taken: waits for the run's end; returns its registration's event
    when the stop asked for one. RequestFailed when it did not end within ``timeout``
    seconds, or was not registered."""
    record, deadline = posted.record, time.monotonic() + timeout
    while record.tags().get(STATE) not in FINAL_STATES:
        if time.monotonic() > deadline:
            raise RequestFailed(f"not stopped in {timeout:g} s")
        time.sleep(POLL_S)
    events = record.lineage().events
    asked = next((e for e in events if e.get("request") == posted.request), {})
    if not asked.get("register"):
        return None
    last = next((e for e in reversed(events) if e["kind"] in ("register", "refused")), {})
    if last.get("kind") != "register":
        raise RequestFailed(f"stopped, but not registered: {last.get('reason')}")
    return last


# -- the rules -------------------------------------------------------------------------

def nudge_values(values: dict, config: dict) -> dict:
    """``values`` when a running model can take them: tuned trainer hyperparameters,
    inside the sweep's search space (what validate would accept there); BabysitError
    naming the first that is not."""
    from models.config import MODEL_KEYS, RULES
    from searchspaces import SearchSpace
    from searchspaces.errors import did_you_mean

    space = SearchSpace.from_dict({"parameters": config["space"]}, config["source"], RULES)
    for name, value in values.items():
        item = f"{name}={value}"
        where = f"--set {item!r}: the sweep's search space ({config['source']})"
        if name in MODEL_KEYS or name in UNCHANGEABLE:
            raise BabysitError(f"--set {item!r}: {name} shapes the net or its optimizer; a "
                               "nudge changes the trainer's hyperparameters in place (lr, "
                               "momentum, ...): start another run for another " + name)
        if name not in space.names:
            raise BabysitError(f"{where} has no parameter {name!r}"
                               f"{did_you_mean(name, space.names)}; it tunes "
                               f"{', '.join(p.name for p in space.tuned)}")
        if not space[name].is_tuned:
            raise BabysitError(f"{where} fixes {name} at {space[name].value!r}; a nudge moves "
                               "a tuned parameter")
        if not space[name].contains(value):
            raise BabysitError(f"{where} has {name} in {_bounds(space[name])}, got {value!r}; "
                               "the run is unchanged")
    return dict(values)


def _bounds(p) -> str:
    d = p.to_dict()
    return str(d["choice"]) if "choice" in d else f"[{d['low']:g}, {d['high']:g}] ({d['scale']})"


def ranges(epochs: list[int]) -> str:
    """[0, 1, 2, 5, 6] as '0-2, 5-6'."""
    out, start = [], None
    for i, e in enumerate(epochs):
        start = e if start is None else start
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            out.append(f"{start}" if start == e else f"{start}-{e}")
            start = None
    return ", ".join(out)
