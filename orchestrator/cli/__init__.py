"""The ``caviar`` command: the parser assembled from one module per command group.

- ``spaces``: validate, sample, train
- ``sweeps``: sweep, submit, sync, ui
- ``models``: predict, promote, rollback
- ``retune``: retune
- ``babysit``: babysit start|status|nudge|pause|resume|revert|stop|list|register
- ``plan``: plan
- ``rerun``: rerun

Each handler parses, calls into the packages below and maps errors to exit codes:
0 done; 1 failure (a bug or the environment: the message says which); 2 bad input
(a one-paragraph error naming the file, the key and the rule; nothing is started);
3 locked (another process holds the model's lock); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator import caviar_version
from orchestrator.cli import babysit, models, plan, rerun, retune, spaces, sweeps
from orchestrator.cli._common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    UsageError,
    workdir_parent,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_LOCKED", "EXIT_OK",
           "UsageError", "build_parser", "main"]

# In the order `caviar --help` lists them.
COMMANDS = (spaces.add_validate, spaces.add_sample, spaces.add_train, sweeps.add_sweep,
            sweeps.add_sync, sweeps.add_ui, models.add_predict, sweeps.add_submit,
            retune.add_retune, models.add_promote, models.add_rollback,
            babysit.add_babysit, plan.add_plan, rerun.add_rerun)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caviar",
        description="Tune the hyperparameters of PyTorch classifiers with Ray Tune and MLflow.",
        epilog="Exit codes: 0 done, 1 failure, 2 bad input, 3 locked (retune), 130 "
               "interrupted. "
               "Set CAVIAR_DEBUG=1 to see tracebacks of failures.",
    )
    parser.add_argument("--version", action="version", version=f"caviar {caviar_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = workdir_parent()
    for add in COMMANDS:
        add(sub, common)
    return parser


def _bad_input() -> tuple[type[Exception], ...]:
    """What a handler may raise that is the user's input, not a failure: exit 2."""
    from models.data import DataError
    from orchestrator.panda.channel import BabysitError
    from orchestrator.rerun.recipe import RerunError
    from orchestrator.sweep.sink import StateDamaged
    from orchestrator.tracking.registry import RegistryError
    from orchestrator.tracking.store import StoreMissing
    from searchspaces import SpecError

    return (SpecError, DataError, UsageError, StoreMissing, RegistryError, BabysitError,
            RerunError, StateDamaged)


def failure_line(e: BaseException) -> str:
    """A failure in one line: the exception's type and its message's first line, or, for
    one that wraps a traceback as text (Ray Tune's TuneError), the exception it ends with."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback") and len(lines) > 1:
        return f"{type(e).__name__}: {lines[-1][:500]}"
    return f"{type(e).__name__}: {lines[0][:500] if lines else ''}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orchestrator.tracking.registry import Locked

    try:
        return args.func(args)
    except _bad_input() as e:
        print(f"caviar: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Locked as e:
        print(f"caviar: locked: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except KeyboardInterrupt:
        print("caviar: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `caviar ... | head` closed the pipe: what it wanted came
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # a failure, not bad input: one line unless debugging
        if os.environ.get("CAVIAR_DEBUG"):
            raise
        print(f"caviar: failed: {failure_line(e)} (set CAVIAR_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
