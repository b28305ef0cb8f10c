"""The handlers of ``caviar babysit``'s actions (the parser is ``cli/babysit.py``): each
makes one call into ``orchestrator.panda`` (``start``, ``requests``, ``register``,
``status``) with its flags and prints what comes back."""

from __future__ import annotations

import json
import sys
import time

from orchestrator.cli._common import UsageError, default_workdir, json_safe
from orchestrator.cli.spaces import parse_set_item
from searchspaces.errors import EXIT_OK


def _uri(args) -> str:
    from orchestrator.tracking.store import resolve_uri

    return resolve_uri(args.tracking_uri, None, args.workdir)


def _find(args):
    from orchestrator.panda.channel import Record

    return Record.find(_uri(args), args.name)


def _values(items: list[str]) -> dict:
    """``--set NAME=VALUE`` items as {name: value}, each a value the model accepts."""
    return dict(parse_set_item(item) for item in items or [])


# -- start ----------------------------------------------------------------------------

def cmd_start(args) -> int:
    from orchestrator.panda import start

    for flag, value in (("--epochs", args.epochs), ("--keep", args.keep)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.resume:
        if args.set or args.file:
            raise UsageError("--resume NAME takes no SWEEP.yaml and no --set: it goes on with "
                             "the hyperparameters in force (nudge it once it runs)")
        return _started(args, start.resume(
            args.resume, epochs=args.epochs, address=args.address,
            tracking_uri=args.tracking_uri, workdir=args.workdir))
    if not args.file:
        raise UsageError("babysit start needs a SWEEP.yaml (or --resume NAME)")
    checked = start.prepare(args.file, _values(args.set), name=args.name, epochs=args.epochs,
                            keep=args.keep, delay=args.epoch_delay, address=args.address,
                            tracking_uri=args.tracking_uri, workdir=args.workdir)
    for note in checked.notes:
        print(f"caviar: note: {note}", file=sys.stderr)
    return _started(args, start.start(checked))


def _started(args, started) -> int:
    where = (f"a detached Ray actor on {started.address}" if started.address else
             f"a background process (log: {started.log})")
    name = started.name
    flags = (f" --workdir {args.workdir}" if args.workdir != default_workdir() else "") + \
        (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")
    print(f"caviar: babysat run {name!r} trains {started.epochs} epochs as {where}; it "
          f"goes on without this terminal.\n  watch:  caviar babysit status {name}{flags} "
          f"--follow\n  nudge:  caviar babysit nudge {name}{flags} --set lr=...\n  stop:   "
          f"caviar babysit stop {name}{flags}", file=sys.stderr)
    print(name)
    return EXIT_OK


# -- requests -------------------------------------------------------------------------

def _queued(args, posted) -> int:
    """Says what was queued; with --wait, waits for the worker and prints its event."""
    from orchestrator.panda.requests import wait_taken

    if not posted.running:
        print(f"caviar: note: the worker of {args.name!r} is not running ({posted.why}); the "
              f"request waits for `caviar babysit start --resume {args.name}`", file=sys.stderr)
    print(f"caviar: {posted.what}: queued for {args.name!r} at its next epoch boundary (it has "
          f"trained {posted.epoch} epochs)", file=sys.stderr)
    if args.wait is None:
        return EXIT_OK
    return _print_json(wait_taken(posted, args.wait))


def _print_json(event: dict) -> int:
    print(json.dumps(json_safe(event)))
    return EXIT_OK


def cmd_nudge(args) -> int:
    from orchestrator.panda.requests import nudge

    values = _values(args.set)
    if not values:
        raise UsageError("babysit nudge needs at least one --set NAME=VALUE")
    return _queued(args, nudge(_find(args), values))


def cmd_pause(args) -> int:
    return _pause(args, True, "is paused already")


def cmd_resume(args) -> int:
    return _pause(args, False, "is not paused")


def _pause(args, paused: bool, already: str) -> int:
    from orchestrator.panda.requests import pause

    posted = pause(_find(args), paused)
    if posted is None:
        print(f"caviar: {args.name!r} {already}", file=sys.stderr)
        return EXIT_OK
    return _queued(args, posted)


def cmd_revert(args) -> int:
    from orchestrator.panda.requests import revert

    return _queued(args, revert(_find(args), args.epoch, args.branch, _values(args.set)))


def cmd_stop(args) -> int:
    from orchestrator.panda.requests import stop

    stopped = stop(_find(args), args.register)
    if stopped.posted is None:  # the worker was gone: stopped (and registered) already
        print(f"caviar: {args.name!r} stopped at epoch {stopped.epoch} (its worker was gone)",
              file=sys.stderr)
        return _registered(stopped.registered) if stopped.registered else EXIT_OK
    print(f"caviar: stop: queued for {args.name!r} at its next epoch boundary"
          + (f"; then its best epoch is registered as {args.register!r}" if args.register
             else ""), file=sys.stderr)
    return EXIT_OK if args.wait is None else _stop_waited(args, stopped.posted)


def _stop_waited(args, posted) -> int:
    from orchestrator.panda.requests import wait_stopped, wait_taken

    _print_json(wait_taken(posted, args.wait))
    event = wait_stopped(posted, args.wait)
    if event is not None:
        print(f"caviar: registered epoch {event['epoch_registered']} of "
              f"{event['branch_registered']} as {event['model']!r} version {event['version']}",
              file=sys.stderr)
    return EXIT_OK


# -- reading --------------------------------------------------------------------------

def cmd_status(args) -> int:
    from orchestrator.panda.status import ended, status, status_text

    record = _find(args)
    while True:
        s = status(record)
        print(json.dumps(json_safe(s)) if args.json else status_text(s))
        if not args.follow or ended(s["state"]):
            return EXIT_OK
        time.sleep(args.every)
        if not args.json:
            print("\033[2J\033[H", end="")  # clear the terminal between refreshes


def cmd_list(args) -> int:
    from orchestrator.panda.status import list_runs

    rows = list_runs(_uri(args))
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows:
        print(f"caviar: no babysat runs in {_uri(args)}", file=sys.stderr)
    for r in rows:
        print(f"{r['name']:<24} {r['state']:<10} epoch {r['epoch']:>4}  branch {r['branch']:<4} "
              f"sweep {r['sweep']}  ({r['worker']})")
    return EXIT_OK


def cmd_register(args) -> int:
    from orchestrator.panda.register import register

    return _registered(register(_find(args), args.model, args.epoch, args.branch))


def _registered(r) -> int:
    print(f"caviar: registered epoch {r.epoch} of {r.branch} as {r.model!r} version "
          f"{r.version} (models:/{r.model}/{r.version})", file=sys.stderr)
    print(json.dumps({"model": r.model, "version": r.version, "epoch": r.epoch,
                      "branch": r.branch}))
    return EXIT_OK
