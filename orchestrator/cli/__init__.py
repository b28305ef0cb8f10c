"""The ``caviar`` command: the parser assembled from one module per command group.

- ``spaces``: validate, sample
- ``train``: train
- ``sweeps``: sweep, submit, sync, ui
- ``models``: predict, promote, rollback
- ``retune``: retune
- ``babysit``: babysit start|status|nudge|pause|resume|revert|stop|list|register
- ``plan``: plan
- ``rerun``: rerun

Each handler parses, calls into the packages below and prints. ``main`` maps what it
raises to exit codes: an error caviar expects is a ``CaviarError`` (searchspaces.errors)
carrying its own code, printed as one paragraph; anything else is a failure. 0 done;
1 failure (a bug or the environment: the message says which); 2 bad input (a
one-paragraph error naming the file, the key and the rule; nothing is started); 3
locked (another process holds the model's lock); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator import caviar_version
from orchestrator.cli import babysit, models, plan, rerun, retune, spaces, sweeps, train
from orchestrator.cli._common import UsageError, workdir_parent
from searchspaces.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, CaviarError

__all__ = ["UsageError", "build_parser", "main"]  # exit codes: searchspaces.errors

# In the order `caviar --help` lists them.
COMMANDS = (spaces.add_validate, spaces.add_sample, train.add_train, sweeps.add_sweep,
            sweeps.add_sync, sweeps.add_ui, models.add_predict, sweeps.add_submit,
            retune.add_retune, models.add_promote, models.add_rollback,
            babysit.add_babysit, plan.add_plan, rerun.add_rerun)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caviar",
        description="Tune the hyperparameters of PyTorch classifiers with Ray Tune and MLflow.",
        epilog="Exit codes: 0 done, 1 failure, 2 bad input, 3 locked (another process holds "
               "the lock: retune, promote, rollback, babysit start), 130 interrupted. "
               "Set CAVIAR_DEBUG=1 to see tracebacks of failures.",
    )
    parser.add_argument("--version", action="version", version=f"caviar {caviar_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = workdir_parent()
    for add in COMMANDS:
        add(sub, common)
    return parser


def failure_line(e: BaseException) -> str:
    """A failure in one line: the exception's type and its message's first line, or, for
    one that wraps a traceback as text (Ray Tune's TuneError), the exception it ends with."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback") and len(lines) > 1:
        return f"{type(e).__name__}: {lines[-1][:500]}"
    return f"{type(e).__name__}: {lines[0][:500] if lines else ''}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CaviarError as e:  # expected: its own paragraph and exit code, even when debugging
        print(f"caviar: {e.label}: {e}", file=sys.stderr)
        return e.exit_code
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
