"""Reading caviar's YAML files: clear errors, and 1e-4 read as a number.

PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is a *string*; YAML 1.2 and
every user reads it as a float. The loader here adds the 1.2 float rule.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from searchspaces.errors import SpecError

MAX_NODES = 20_000  # a file's values once aliases are expanded; caviar's files hold hundreds


class _Loader(yaml.SafeLoader):
    """Also refuses what PyYAML lets through: a key twice in one mapping (the last one
    silently won: ``epochs`` twice gave 500 epochs), and aliases that expand to a huge
    document (a 1 KB "billion laughs" would fill memory once printed or copied)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" overrides on purpose
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # an unhashable key: the constructor reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {str(key)[:60]!r} (first given on line "
                        f"{seen[key] + 1}): give each key once", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases expand to more than {MAX_NODES:,} values",
                node.start_mark)
        return node


def _expanded_size(node, memo: dict) -> int:
    """How many nodes the document has with every alias written out (memoised per node:
    the walk is as long as the file, however far the aliases would expand)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a cycle counts once (PyYAML builds it as a recursive object)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


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
