"""The sweep's plots: PNGs in ``<workdir>/<name>/plots/``, logged to the parent run.

- ``learning_curves.png``: val_loss by epoch of every trial, coloured by round.
- ``axes.png``: the metric against each tuned hyperparameter (the playbook's axis
  plots). Points sit at their unit-space position and the ticks are labelled with
  values, so a log parameter gets a log axis and a reverse_log one a 1-β log axis
  without the plot asking which scale it holds.
- ``boxes.png``: coarse to fine only: each round's box over the two tuned
  parameters of highest declared priority, with the trials inside.
- ``importance.png``: each parameter's share of the metric's variance (fANOVA,
  through Optuna's evaluator, over the unit-space coordinates) beside the priority
  it was declared with, so users see whether the course's table held.

Built from the trial rows (report.trial_rows) and summary.json's rounds, so a
resumed or synced sweep draws the same plots. Nothing here can fail a sweep: the
caller reports an error and goes on.
"""

from __future__ import annotations

import math
from pathlib import Path

from models.files import atomic_path
from models.objective import Objective
from searchspaces import ChoiceParameter

PLOTS_DIR = "plots"
UNIT_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_TRIALS_FOR_IMPORTANCE = 4
# Past these, a seeded sample of the trials: fANOVA took 9 s over 1,000 trials here and
# grows faster than the trials, and 10,000 curves draw as one blot.
MAX_IMPORTANCE_TRIALS = 500
MAX_CURVES = 1000


def sample(rows: list, most: int, seed: int = 0) -> list:
    """``rows`` if there are at most ``most``, else ``most`` of them drawn with ``seed``
    (in their order)."""
    if len(rows) <= most:
        return rows
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(len(rows), most, replace=False))
    return [rows[i] for i in keep]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no screen: the driver may run anywhere
    import matplotlib.pyplot as plt

    return plt


def _label(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _unit_axis(axis, param) -> None:
    """Ticks of a unit-space axis labelled with the parameter's values."""
    if isinstance(param, ChoiceParameter):
        ticks = [param.to_unit(v) for v in param.values]
        labels = [_label(v) for v in param.values]
    else:  # each label's value at its own position: an int's 2, 2, 3 become 2, 3
        values = list(dict.fromkeys(param.from_unit(u) for u in UNIT_TICKS))
        ticks = [param.to_unit(v) for v in values]
        labels = [_label(v) for v in values]
    axis.set_ticks(ticks)
    axis.set_ticklabels(labels)


def _axis_title(param) -> str:
    scale = getattr(param, "scale", None)
    if scale is None:
        return f"{param.name} (choice)"
    if scale.name == "reverse_log":
        return f"{param.name} (reverse_log: log of 1-β)"
    return f"{param.name} ({scale.name})"


def _round_colours(plt, rounds: list[int]) -> dict[int, tuple]:
    cmap = plt.get_cmap("viridis")
    top = max(rounds, default=0)
    return {r: cmap(0.15 + 0.7 * (r / top if top else 0.0)) for r in sorted(set(rounds))}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _scored(rows: list[dict], metric: str) -> list[dict]:
    return [r for r in rows if r["best"] is not None and _finite(r["best"].get(metric))]


def learning_curves(plt, rows: list[dict], out: Path) -> Path:
    colours = _round_colours(plt, [r["round"] for r in rows])
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in sample(rows, MAX_CURVES):
        points = [(e, m.get("val_loss")) for e, m in sorted(r["history"].items())]
        points = [(e, v) for e, v in points if _finite(v)]
        if points:
            ax.plot(*zip(*points), color=colours[r["round"]], alpha=0.7, linewidth=1)
    for rnd, colour in colours.items():
        ax.plot([], [], color=colour, label=f"round {rnd}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_loss")
    ax.set_yscale("log")
    ax.set_title(f"Learning curves of {len(rows)} trials" if len(rows) <= MAX_CURVES else
                 f"Learning curves of {MAX_CURVES} of {len(rows)} trials (a random sample)")
    ax.legend(loc="upper right", fontsize="small")
    return _save(plt, fig, out / "learning_curves.png")


def axis_plots(plt, space, rows: list[dict], metric: str, out: Path) -> Path | None:
    params = list(space.tuned)
    scored = _scored(rows, metric)
    if not params or not scored:
        return None
    colours = _round_colours(plt, [r["round"] for r in scored])
    cols = min(3, len(params))
    nrows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.6 * nrows), squeeze=False)
    for ax, p in zip(axes.flat, params):
        xs = [p.to_unit(r["config"][p.name]) for r in scored]
        ys = [r["best"][metric] for r in scored]
        ax.scatter(xs, ys, c=[colours[r["round"]] for r in scored], s=18, alpha=0.8)
        _unit_axis(ax.xaxis, p)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel(_axis_title(p))
        ax.set_ylabel(f"best {metric}")
        if min(ys) > 0 and max(ys) / min(ys) > 20:
            ax.set_yscale("log")  # a few diverging trials would flatten the rest
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    for rnd, colour in colours.items():
        axes.flat[0].scatter([], [], color=colour, label=f"round {rnd}")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"best {metric} against each tuned hyperparameter, on its own scale")
    return _save(plt, fig, out / "axes.png")


def _by_priority(space) -> list:
    """Tuned numeric parameters, highest declared priority (1) first, then in file order."""
    numeric = [p for p in space.tuned if not isinstance(p, ChoiceParameter)]
    return sorted(numeric, key=lambda p: p.priority or 5)


def box_plot(plt, space, rows: list[dict], rounds: list[dict], out: Path) -> Path | None:
    top = _by_priority(space)[:2]
    if len(top) < 2 or len(rounds) < 2:
        return None
    px, py = top
    colours = _round_colours(plt, [r["round"] for r in rounds])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for rnd in rounds:
        box = rnd.get("box", {})
        if px.name not in box or py.name not in box:
            continue
        (x0, x1), (y0, y1) = ([p.to_unit(v) for v in box[p.name]] for p in (px, py))
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=2,
                                   edgecolor=colours[rnd["round"]],
                                   label=f"round {rnd['round']} box"))
    for r in rows:
        ax.scatter(px.to_unit(r["config"][px.name]), py.to_unit(r["config"][py.name]),
                   color=colours.get(r["round"], "grey"), s=16, alpha=0.8)
    _unit_axis(ax.xaxis, px)
    _unit_axis(ax.yaxis, py)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(_axis_title(px))
    ax.set_ylabel(_axis_title(py))
    ax.set_title("coarse to fine: each round's box over the two top-priority parameters")
    ax.legend(loc="best", fontsize="small")
    return _save(plt, fig, out / "boxes.png")


def importance(space, rows: list[dict], objective: Objective, seed: int = 0) -> dict:
    """``{name: {"importance": share, "priority": declared}}`` by fANOVA, or {} when the
    sweep has too few scored trials or nothing varies."""
    import optuna

    params = list(space.tuned)
    metric = objective.name
    scored = sample(_scored(rows, metric), MAX_IMPORTANCE_TRIALS, seed)
    if not params or len(scored) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}
    dists, trials = {}, []
    for p in params:
        if isinstance(p, ChoiceParameter):
            dists[p.name] = optuna.distributions.CategoricalDistribution(
                [repr(v) for v in p.values])
        else:
            dists[p.name] = optuna.distributions.FloatDistribution(0.0, 1.0)
    for r in scored:
        values = {p.name: repr(r["config"][p.name]) if isinstance(p, ChoiceParameter)
                  else p.to_unit(r["config"][p.name]) for p in params}
        trials.append(optuna.trial.create_trial(params=values, distributions=dists,
                                                value=float(r["best"][metric])))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=objective.direction)
    study.add_trials(trials)
    try:
        shares = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError):
        return {}  # e.g. every trial scored the same: no variance to share out
    return {p.name: {"importance": round(float(shares.get(p.name, 0.0)), 4),
                     "priority": p.priority} for p in params}


def importance_plot(plt, shares: dict, n_trials: int, out: Path) -> Path | None:
    if not shares:
        return None
    names = sorted(shares, key=lambda n: (shares[n]["priority"] or 5, -shares[n]["importance"]))
    measured_rank = {n: i + 1 for i, n in enumerate(
        sorted(shares, key=lambda n: -shares[n]["importance"]))}
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(names) + 1.8))
    values = [shares[n]["importance"] for n in names]
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n}  (declared priority {shares[n]['priority'] or '-'})"
                        for n in names])
    ax.invert_yaxis()
    for i, n in enumerate(names):
        ax.text(values[i], i, f"  {values[i]:.2f}  measured #{measured_rank[n]}",
                va="center", fontsize="small")
    ax.set_xlim(0, max(values + [0.01]) * 1.45)
    ax.set_xlabel("share of the metric's variance (fANOVA)")
    ax.set_title(f"Importance measured over {n_trials} trials, by declared priority")
    return _save(plt, fig, out / "importance.png")


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def make_plots(space, rows: list[dict], rounds: list[dict], objective: Objective,
               out: str | Path, seed: int = 0) -> tuple[list[Path], dict]:
    """Draws every plot that has something to show; returns (the PNGs, the importances)."""
    plt = _pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metric = objective.name
    shares = importance(space, rows, objective, seed)
    made = [learning_curves(plt, rows, out) if rows else None,
            axis_plots(plt, space, rows, metric, out),
            box_plot(plt, space, rows, rounds, out),
            importance_plot(plt, shares, len(_scored(rows, metric)), out)]
    return [p for p in made if p is not None], shares
