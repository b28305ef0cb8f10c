"""``caviar babysit``: one expensive model trained, watched, nudged, paused, reverted and
stopped by hand (the course's panda way), every decision on record in MLflow.

The parser; each action's handler is in ``babysit_actions``."""

from __future__ import annotations

import argparse
import os

from orchestrator.cli._common import add_tracking_uri
from orchestrator.cli.babysit_actions import (
    cmd_list,
    cmd_nudge,
    cmd_pause,
    cmd_register,
    cmd_resume,
    cmd_revert,
    cmd_start,
    cmd_status,
    cmd_stop,
)


def _common_run(p, wait: bool = True) -> None:
    p.add_argument("name", metavar="NAME", help="the babysat run's name (babysit list)")
    add_tracking_uri(p, "the MLflow store holding the run")
    if wait:
        p.add_argument("--wait", type=float, nargs="?", const=600.0, default=None,
                       metavar="SECONDS", help="wait until the worker has taken the request "
                       "(stop: until the run has ended), at most SECONDS (default 600), "
                       "and print its event as JSON")


def _add_start(sub, common) -> None:
    p = sub.add_parser("start", parents=[common], help="start a babysat run",
                       description="Train one configuration of the sweep's net on its data, "
                       "checkpointing every epoch, as a run that goes on without this "
                       "command: a background process here, or a detached Ray actor on "
                       "--address. Prints its name on stdout.")
    p.add_argument("file", nargs="?", metavar="SWEEP.yaml", help="the sweep file")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="a starting hyperparameter (repeatable); the rest take the space's "
                   "default, else its centre")
    p.add_argument("--name", help="the run's name (default: SWEEP-N)")
    p.add_argument("--epochs", type=int, help="epochs in all (default: the sweep's)")
    p.add_argument("--keep", type=int, help="checkpoints kept per branch (default: the "
                   "sweep's babysit.keep, else every epoch's); forks are always kept")
    p.add_argument("--resume", metavar="NAME", help="give a run whose worker died (or that "
                   "was stopped) a new worker, from its newest checkpoint")
    p.add_argument("--epoch-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="a Ray cluster to train on, as a detached actor (default: "
                   "$RAY_ADDRESS, else a background process here)")
    add_tracking_uri(p, "the MLflow store to record the run in", "the sweep's tracking.uri")
    p.set_defaults(func=cmd_start)


def _add_requests(sub, common) -> None:
    p = sub.add_parser("nudge", parents=[common], help="change hyperparameters from the "
                       "next epoch", description="Change tuned hyperparameters from the "
                       "next epoch on, in the optimizer in place (no restart). Values must "
                       "lie in the sweep's search space.")
    _common_run(p)
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[], required=True,
                   help="a tuned hyperparameter's new value, inside the sweep's search space "
                   "(repeatable)")
    p.set_defaults(func=cmd_nudge)
    for op, func, text in (("pause", cmd_pause, "hold the run at the next epoch boundary"),
                           ("resume", cmd_resume, "let a paused run go on")):
        p = sub.add_parser(op, parents=[common], help=text, description=text + ".")
        _common_run(p)
        p.set_defaults(func=func)
    p = sub.add_parser("revert", parents=[common], help="go back to an epoch's checkpoint",
                       description="Restore epoch K's checkpoint and go on from K+1 as a new "
                       "branch, optionally with new hyperparameters. The branch left stays "
                       "on record with its checkpoints. A paused run stays paused. The "
                       "worker checks the epoch again when it takes the request (another "
                       "revert may come first): --wait, or status, shows a refusal.")
    _common_run(p)
    p.add_argument("--epoch", type=int, required=True, help="the epoch to go back to")
    p.add_argument("--branch", help="the branch whose line holds it (default: the current)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="also change a tuned hyperparameter, as nudge does (repeatable)")
    p.set_defaults(func=cmd_revert)
    p = sub.add_parser("stop", parents=[common], help="end the run at the next epoch boundary",
                       description="End the run at the next epoch boundary.")
    _common_run(p)
    p.add_argument("--register", metavar="MODEL", help="register the best epoch of the "
                   "current line (the sweep's metric) as a version of MODEL")
    p.set_defaults(func=cmd_stop)


def _add_reading(sub, common) -> None:
    p = sub.add_parser("status", parents=[common], help="the learning curve and history",
                       description="The run's state, where it runs, the hyperparameters in "
                       "force, its learning curve (a table and a sparkline of val_loss) and "
                       "every nudge, pause and revert.")
    _common_run(p, wait=False)
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument("--follow", action="store_true", help="refresh until the run ends")
    p.add_argument("--every", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("list", parents=[common], help="every babysat run",
                       description="Every babysat run in the store, newest first.")
    add_tracking_uri(p, "the MLflow store")
    p.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("register", parents=[common], help="register an epoch's model",
                       description="Register the model of any epoch as a new version of "
                       "MODEL, like a sweep's best (loadable without unpickling).")
    _common_run(p, wait=False)
    p.add_argument("model", nargs="?", metavar="MODEL", help="the registered model's name "
                   "(default: the sweep's register.name)")
    p.add_argument("--epoch", type=int, required=True, help="the epoch whose model to register")
    p.add_argument("--branch", help="the branch whose line holds it (default: the current)")
    p.set_defaults(func=cmd_register)


def add_babysit(sub, common) -> None:
    p = sub.add_parser("babysit", help="babysit one model (the panda way)",
                       description="The panda way: one expensive model trained, watched and "
                       "nudged by hand. Every decision is on record in MLflow.",
                       epilog="Every action takes --workdir (where the embedded MLflow store "
                       "is) and --tracking-uri; see `caviar babysit ACTION --help`. A day "
                       "of babysitting: start; status --follow; nudge --set lr=...; pause; "
                       "revert --epoch K --set lr=...; resume; stop --register MODEL.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_start(actions, common)
    _add_reading(actions, common)
    _add_requests(actions, common)
