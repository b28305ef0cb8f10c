"""How a strategy declares its sweep-file keys: one frozen dataclass per strategy,
a field per key with its default and the rule its value keeps.

::

    @dataclass(frozen=True)
    class GridSettings:
        kind: str = "grid"
        points: int = setting(5, whole_number())

``parse`` reads a ``strategy:`` section against such a class: unknown keys and
broken rules are SpecErrors naming the file and the key (``strategy.points``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, field, fields

from orchestrator.fields import fail, number, unknown, whole

# (source, key, value, space) -> the checked value
Check = Callable[[str, str, object, object], object]
SECTION = "strategy"


def setting(default, check: Check | None = None):
    """A field of a settings class: its default, and the rule a given value keeps."""
    return field(default=default, metadata={"check": check})


def whole_number(low: int = 1) -> Check:
    return lambda source, key, v, space: whole(source, key, v, low)


def number_in(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    return lambda source, key, v, space: number(source, key, v, low, high, low_open, high_open)


def one_of(*allowed: str) -> Check:
    def check(source, key, v, space):
        if v not in allowed:
            raise fail(source, key, f"must be {' or '.join(map(repr, allowed))}, got {v!r}")
        return v

    return check


def keys(settings_class) -> tuple[str, ...]:
    """The keys a strategy section of this class may hold, ``kind`` first."""
    return tuple(f.name for f in fields(settings_class))


def parse(settings_class, section: Mapping, source: str, space):
    """The checked settings of a ``strategy:`` section; absent keys take their default.

    Raises:
        SpecError: an unknown key, or the first value that breaks its rule.
    """
    allowed = keys(settings_class)
    for key in section:
        if key not in allowed:
            raise unknown(source, SECTION, key, allowed)
    values = {}
    for f in fields(settings_class):
        value = section.get(f.name, f.default)
        check = f.metadata.get("check")
        if check is not None and not (value is None and f.default is None):
            value = check(source, f"{SECTION}.{f.name}", value, space)
        values[f.name] = value
    return settings_class(**values)


def to_dict(settings) -> dict:
    """The settings as a sweep file's section (keys left unset omitted)."""
    return {k: v for k, v in asdict(settings).items() if v is not None}
