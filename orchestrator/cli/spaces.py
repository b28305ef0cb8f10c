"""``caviar validate`` and ``sample``: a file checked, or the configurations a search
would try; and the reading of ``--set NAME=VALUE`` every command shares."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.cli._common import (
    UsageError,
    add_command,
    add_flag,
    add_option,
    seed_or_draw,
)
from searchspaces import SearchSpace, SpecError
from searchspaces.errors import EXIT_OK, did_you_mean
from searchspaces.yamlio import load_mapping, parse_yaml


def _rules():
    from models.config import RULES

    return RULES


def load_any(path: str):
    """(kind, SearchSpace, SweepSpec | None) for a space or sweep file."""
    from orchestrator.sweep.spec import file_kind, parse_sweep

    raw = load_mapping(path)
    kind = file_kind(raw)
    if kind == "space":
        return kind, SearchSpace.from_dict(raw, path, _rules()), None
    if kind == "retune":
        raise SpecError(path, "", "this is a re-tune job file; caviar sample and train take "
                        "a search space or a sweep file (caviar validate and caviar retune "
                        "take it)")
    sweep = parse_sweep(raw, path, Path(path).resolve().parent)
    return kind, sweep.space, sweep


def describe(space: SearchSpace) -> str:
    """A line per parameter: its type, scale and range (or choices, or fixed value)."""
    lines = []
    for p in space.parameters:
        d = p.to_dict()
        prio = f", priority {p.priority}" if p.priority else ""
        if "fixed" in d:
            lines.append(f"  {p.name}: fixed {d['fixed']!r}{prio}")
        elif "choice" in d:
            lines.append(f"  {p.name}: choice of {d['choice']}{prio}")
        else:
            lines.append(f"  {p.name}: {d.get('type', 'float')} on {d['scale']} scale "
                         f"[{d['low']:g}, {d['high']:g}]{prio}")
    return "\n".join(lines)


def _validate_retune(path: str) -> None:
    from orchestrator.retune.spec import load_retune

    r = load_retune(path)
    print(f"{path}: OK: re-tune job for model {r.model!r}: triggers {', '.join(r.triggers)}; "
          f"warm search {r.search.rounds} x {r.search.trials_per_round} trials of sweep "
          f"{r.sweep.name!r}; gate {r.seeds} seeds, margin {r.margin:g} "
          f"({r.sweep.metric.name}); data {r.data.source}")


def cmd_validate(args) -> int:
    """Check search space, sweep or re-tune files without running anything: every
    parameter's scale, bounds and names, every sweep and re-tune key."""
    from orchestrator.sweep.spec import file_kind

    for path in args.files:
        if file_kind(load_mapping(path)) == "retune":
            _validate_retune(path)
            continue
        _, space, sweep = load_any(path)
        what = f"search space with {len(space.parameters)} parameters ({len(space.tuned)} tuned)"
        if sweep is not None:
            what = (f"sweep {sweep.name!r}: strategy {sweep.strategy.kind}, scheduler "
                    f"{sweep.scheduler.kind}, {sweep.epochs} epochs, metric "
                    f"{sweep.metric.name} ({sweep.metric.mode}), data "
                    f"{sweep.data.source}; {what}")
        print(f"{path}: OK: {what}")
        if not args.quiet:
            print(describe(space))
    return EXIT_OK


def cmd_sample(args) -> int:
    """Print the configurations a search would try, one JSON object per line, fixed
    parameters included."""
    from orchestrator.strategies import sample
    from searchspaces.sampling import grid_points_per_parameter

    _, space, _ = load_any(args.file)
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    seed = args.seed if args.strategy == "grid" else seed_or_draw(args.seed)
    configs = sample(space, args.strategy, args.n, seed or 0)
    if args.strategy == "grid":
        k = grid_points_per_parameter(args.n, len(space.tuned))
        print(f"caviar: grid of {k} point(s) per tuned parameter over {len(space.tuned)} "
              f"parameter(s): {len(configs)} configurations", file=sys.stderr)
    for config in configs:
        print(json.dumps(config))
    return EXIT_OK


def parse_sets(items: list[str], space: SearchSpace) -> dict:
    """``--set NAME=VALUE`` items, each checked against the model's rules."""
    return dict(_parse_set(item, space) for item in items or [])


def _parse_set(item: str, space: SearchSpace) -> tuple[str, object]:
    name, value = parse_set_item(item)
    if name in space.names and space[name].is_tuned and not space[name].contains(value):
        print(f"caviar: note: --set {name}={value!r} lies outside the search space "
              f"{space[name].to_dict()}", file=sys.stderr)
    return name, value


def parse_set_item(item: str) -> tuple[str, object]:
    """One ``NAME=VALUE``: a parameter the model has, a value its rule accepts."""
    rules = _rules()
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected NAME=VALUE, e.g. --set lr=0.01")
    name, text = item.split("=", 1)
    name = name.strip()
    if name not in rules:
        raise UsageError(f"--set {item!r}: the model has no parameter {name!r}"
                         f"{did_you_mean(name, rules)}; it accepts " + ", ".join(sorted(rules)))
    try:
        value = parse_yaml(text, f"--set {name}")
    except SpecError:
        value = text
    if isinstance(value, int) and not isinstance(value, bool) and rules[name].type is float:
        value = float(value)
    problem = rules[name].check(value)
    if problem:
        raise UsageError(f"--set {item!r}: {name} {problem}, got {value!r}")
    return name, value


def add_validate(sub, common) -> None:
    p = add_command(sub, common, "validate", cmd_validate,
                    "check search space, sweep or re-tune files")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="a search space, sweep or re-tune YAML file")
    add_flag(p, "-q", "--quiet", help="print only the OK line per file")


class _SampledKinds:
    """``caviar sample``'s strategies: the registry's kinds whose points do not depend on
    results, read when a value is checked (the registry imports Ray Tune, which a
    command that samples nothing need not load; the option's metavar keeps argparse
    from reading them to build the parser)."""

    def __iter__(self):
        from orchestrator.strategies import SAMPLED

        return iter(SAMPLED)

    def __contains__(self, kind) -> bool:
        return kind in tuple(self)


def add_sample(sub, common) -> None:
    p = add_command(sub, common, "sample", cmd_sample, "print the configs a search would try")
    p.add_argument("file", metavar="SPACE_OR_SWEEP", help="a search space or sweep YAML file")
    p.add_argument("--strategy", choices=_SampledKinds(), default="random", metavar="STRATEGY",
                   help="random (seeded), quasi_random (scrambled Halton) or grid "
                   "(k = round(N ** (1/d)) points per tuned parameter); default %(default)s")
    p.add_argument("--n", type=int, default=10, help="how many configurations (default "
                   "%(default)s; for grid, the budget that sets k)")
    add_option(p, "--seed", "random seed (default: drawn, and printed on stderr)")
