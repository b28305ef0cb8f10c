"""Reading caviar's YAML files: clear errors, and 1e-4 read as a number.

PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is a *string*; YAML 1.2 and
every user reads it as a float. The loader here adds the 1.2 float rule.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from searchspaces.errors import SpecError


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str = "<string>") -> object:
    """Parses YAML text with caviar's loader; a syntax error becomes a SpecError."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(source, where, f"not valid YAML ({problem})") from None


def load_mapping(path: str | Path) -> dict:
    """Reads a YAML file that must hold a mapping at its top level."""
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise SpecError(source, "", "no such file")
    if p.is_dir():
        raise SpecError(source, "", "is a directory, not a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(source, "", f"cannot be read ({e})") from None
    data = parse_yaml(text, source)
    if data is None:
        raise SpecError(source, "", "is empty: expected a YAML mapping")
    if not isinstance(data, dict):
        raise SpecError(
            source, "", f"must hold a YAML mapping at its top level, got a {type(data).__name__}"
        )
    return data
