"""Writing files whole or not at all: a reader (or a resumed run) never sees half a file.

The text goes to ``NAME.tmp`` beside the file, which one rename then puts in
place; a crash midway leaves the old file (and at worst a stray ``.tmp``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends, what was written
    there replaces ``path``. When the block raises, ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def atomic_write(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
