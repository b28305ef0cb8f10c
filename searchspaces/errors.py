"""caviar's errors: the base every one derives from, and the one error type for bad input
files, shared by every caviar command.

Each error carries what the ``caviar`` command does with it: the exit code and the word
its one-paragraph message starts with (``caviar: error: ...``). It lives here, at the
bottom of the layout, so that every package can raise one.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CaviarError(Exception):
    """An error caviar expects, told in one paragraph that says why and what to do.

    A subclass sets ``exit_code`` and ``label``: bad input (2, ``error``; nothing was
    started or changed) unless it says otherwise: a failure (1, ``failed``), another
    process holding a lock (3, ``locked``), an interruption (130, ``interrupted``).
    """

    exit_code = EXIT_BAD_INPUT
    label = "error"


class Failure(CaviarError):
    """Something went wrong that is not the input (the disk, a server, a worker): exit 1."""

    exit_code = EXIT_FAILURE
    label = "failed"


class SpecError(CaviarError, ValueError):
    """A file (search space, sweep, re-tune job) breaks a rule.

    The message names the file, where in it (parameter, key), the rule and the
    bad value, in one paragraph: the CLI prints it as it is and exits with 2.
    """

    def __init__(self, source: str, where: str, message: str):
        self.source = source
        self.where = where
        self.message = message
        prefix = source if not where else f"{source}: {where}"
        super().__init__(readable(f"{prefix}: {message}" if prefix else message))


MAX_MESSAGE = 600  # characters: a value quoted whole (a huge list, a file's line) is cut


def readable(message: str) -> str:
    """The message, its middle cut when a quoted value made it longer than a paragraph:
    the file and key at its start and the rule at its end are kept."""
    if len(message) <= MAX_MESSAGE:
        return message
    cut = len(message) - MAX_MESSAGE + 40
    return f"{message[:360]} ... ({cut:,} characters cut) ... {message[-200:]}"


def did_you_mean(name: object, known) -> str:
    """`` (did you mean 'lr'?)`` when ``name`` is close to one of ``known``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(key: object, allowed) -> str:
    """The rule an unknown key breaks, with the nearest allowed key as a hint."""
    return f"unknown key{did_you_mean(key, allowed)}; allowed keys are " + ", ".join(allowed)
