"""What every command group shares: exit codes, the usage error, the common options.

A command is declared with ``add_command`` (its ``--help`` description is its handler's
docstring); an option more than one command takes is declared once, in ``OPTIONS`` or
as an ``add_...`` function here, and each command adds it by name."""

from __future__ import annotations

import argparse
import math
import os
import random
import sys

from orchestrator import DEFAULT_WORKDIR
from searchspaces.errors import CaviarError

__all__ = [
    "OPTIONS", "UsageError", "add_address", "add_command", "add_flag", "add_option", "add_storage",
    "add_tracking_uri", "checked_storage", "default_workdir", "json_safe", "seed_or_draw",
    "workdir_parent"]
EMBEDDED_STORE = "sqlite:///WORKDIR/mlflow.db"


class UsageError(CaviarError):
    """Bad command-line input (not in a file): exit 2."""


def default_workdir() -> str:
    """``--workdir`` when none is given: $CAVIAR_WORKDIR, else ./caviar-runs."""
    return os.environ.get("CAVIAR_WORKDIR", DEFAULT_WORKDIR)


def workdir_parent() -> argparse.ArgumentParser:
    """The parent parser giving a command ``--workdir``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workdir", default=default_workdir(),
                        help="where runs, checkpoints and the embedded MLflow store live "
                        "(default: $CAVIAR_WORKDIR, else ./caviar-runs; now %(default)s)")
    return common


def add_command(sub, common: argparse.ArgumentParser | None, name: str, func, help: str,
                **kwargs) -> argparse.ArgumentParser:
    """The subcommand ``name`` (``help``: its line in ``caviar --help``), handled by
    ``func``, with ``common``'s options (``--workdir``). Its ``--help`` description is
    ``func``'s docstring unless ``kwargs`` give one: argparse rewraps the text."""
    kwargs.setdefault("description", func.__doc__)
    p = sub.add_parser(name, parents=[common] if common else [], help=help, **kwargs)
    p.set_defaults(func=func)
    return p


# Options more than one command takes: (flags, argparse settings). A command may change
# a setting (most often the help, which says what the option means to it).
OPTIONS = {
    "sweep": (("file",), {"metavar": "SWEEP", "help": "a sweep YAML file"}),
    "model": (("model",), {"metavar": "MODEL", "help": "the registered model's name"}),
    "--set": (("--set",), {"action": "append", "metavar": "NAME=VALUE", "default": []}),
    "--seed": (("--seed",), {"type": int, "default": None}),
    "--epochs": (("--epochs",), {"type": int, "default": None}),
    "--threads": (("--threads",), {"type": int, "default": None}),
    "--device": (("--device",), {}),
    "--resume": (("--resume",), {"action": "store_true"}),
    "--json": (("--json",), {"action": "store_true"}),
}


def add_option(p: argparse.ArgumentParser, name: str, help: str | None = None,
               **settings) -> None:
    """The shared option ``name`` (a key of ``OPTIONS``) with ``help`` and any of its
    ``settings`` changed for this command."""
    flags, shared = OPTIONS[name]
    p.add_argument(*flags, **{**shared, **({"help": help} if help else {}), **settings})


def add_flag(p: argparse.ArgumentParser, *flags: str, help: str) -> None:
    """A switch: off unless given."""
    p.add_argument(*flags, action="store_true", help=help)


def add_tracking_uri(p: argparse.ArgumentParser, what: str, *fallbacks: str,
                     default: str | None = None) -> None:
    """``--tracking-uri``: ``what`` it names, and where it is looked for when not given:
    $MLFLOW_TRACKING_URI, then ``fallbacks``, then the embedded store (or ``default``)."""
    default = default or ", else ".join(("$MLFLOW_TRACKING_URI", *fallbacks, EMBEDDED_STORE))
    p.add_argument("--tracking-uri", default=None, help=f"{what} (default: {default})")


def add_address(p: argparse.ArgumentParser, what: str) -> None:
    """``--address``: the Ray cluster a command runs on; Ray starts here without one."""
    p.add_argument("--address", default=None,
                   help=f"{what} (default: $RAY_ADDRESS, else Ray starts here on the local "
                   "cores)")


def add_storage(p: argparse.ArgumentParser, where: str = "") -> None:
    """``--storage``: trial storage, a shared folder or an object store."""
    p.add_argument("--storage", default=os.environ.get("CAVIAR_STORAGE"),
                   help=f"where trials keep their checkpoints{where}: a folder (NFS on a "
                   "cluster: the same path on every node) or s3://BUCKET/PREFIX, gs://...; "
                   "an S3-compatible store's address from $AWS_ENDPOINT_URL (default: "
                   "$CAVIAR_STORAGE, else the sweep's storage, else WORKDIR/ray)")


def checked_storage(location: str | None, reach: bool = False) -> str | None:
    """``--storage`` checked before anything runs (with ``reach``: its bucket or folder
    usable from here, too): a UsageError (exit 2) saying why."""
    if location is None:
        return None
    from orchestrator.cluster.storage import Storage, check_location

    problem = check_location(location) or (Storage(location).reachable() if reach else None)
    if problem:
        raise UsageError(f"--storage {location}: {problem}")
    return location


def seed_or_draw(seed: int | None) -> int:
    """``seed``, else one drawn now and printed, so the run can be repeated."""
    if seed is not None:
        return seed
    seed = random.SystemRandom().randrange(2**31)
    print(f"caviar: no --seed given; drew seed {seed} (pass --seed {seed} to repeat)",
          file=sys.stderr)
    return seed


def json_safe(value):
    """NaN and infinities as null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value
