"""Checks for the fields of caviar's files (sweep, re-tune), each failing with a SpecError.

Every check names the file, the key (dotted: ``strategy.keep``), the rule and the
bad value, so the CLI can print the error as it is::

    sweep.yaml: key 'strategy.keep': must be a number in (0, 1], got 1.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from searchspaces.errors import SpecError, unknown_key


def fail(source: str, key: str, message: str) -> SpecError:
    """The error for ``key`` of ``source`` (``key`` empty: the file as a whole)."""
    return SpecError(source, f"key {key!r}" if key else "", message)


def unknown(source: str, section: str, key: object, allowed) -> SpecError:
    """``key`` is not one of ``allowed`` in ``section`` (empty: the file's top level)."""
    dotted = f"{section}.{key}" if section else str(key)
    return fail(source, dotted, unknown_key(key, allowed))


def only_keys(source: str, section: str, mapping: Mapping, allowed) -> None:
    """Refuses the first key of ``mapping`` that is not in ``allowed``."""
    for key in mapping:
        if key not in allowed:
            raise unknown(source, section, key, tuple(allowed))


def section(raw: Mapping, key: str, source: str, default: dict | None = None) -> dict:
    """The mapping under ``key`` (a copy; ``{}`` when null), or ``default`` when absent."""
    value = raw.get(key, default)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(source, key, f"must be a mapping, got {value!r}")
    return dict(value)


def whole(source: str, key: str, v: object, low: int = 1) -> int:
    """A whole number >= ``low`` (a bool is not a number)."""
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise fail(source, key, f"must be a whole number >= {low}, got {v!r}")
    return v


def number(source: str, key: str, v: object, low: float, high: float,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite number in the interval from ``low`` to ``high`` (open ends as asked)."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok:
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise fail(source, key, f"must be a number in {interval}, got {v!r}")
    return float(v)


def flag(source: str, key: str, v: object) -> bool:
    """``true`` or ``false``."""
    if not isinstance(v, bool):
        raise fail(source, key, f"must be true or false, got {v!r}")
    return v


def known(value: object, allowed) -> bool:
    """``value in allowed``, False for a value that cannot be looked up there (a list or
    a mapping where a name was expected: YAML gives whatever the file holds)."""
    try:
        return value in allowed
    except TypeError:
        return False
