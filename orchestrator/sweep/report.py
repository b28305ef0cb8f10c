"""What a sweep leaves behind: summary.json, trials.csv and the table of its top trials.

Built from the sweep's event log (records.py), which survives driver crashes,
and the strategy's rounds (strategy.json); the playbook's warnings (a best point
on the space's edge, many diverged trials) from both and the space.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time

from models.files import atomic_path, atomic_write
from models.objective import Objective
from orchestrator.sweep.records import LOG_FILE, STATE_FILE, TrialLog
from orchestrator.trial_protocol import SEED_KEY, hyperparameters

STATUSES = ("completed", "early_stopped", "diverged", "failed")
SUMMARY_FILE, TRIALS_CSV = "summary.json", "trials.csv"


def _best_epoch(history: dict, objective: Objective) -> dict | None:
    """The metrics of the epoch with the best finite value (the first of equals)."""
    best = None
    for epoch in sorted(history):
        m = history[epoch]
        v = m.get(objective.name)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        if objective.better(v, best and best[objective.name]):
            best = {**m, "epoch": epoch}
    return best


def trial_rows(log: TrialLog, objective: Objective, errors: dict | None = None) -> list[dict]:
    """One row per trial: id, round, status, hyperparameters, best metric, epochs run."""
    rows = []
    for t in log.trials.values():
        status = t["status"]  # "running" when it never ended: the sweep was interrupted
        if errors and t["trial_id"] in errors:
            status = "failed"
        best = _best_epoch(t["history"], objective)
        rows.append({
            "trial_id": t["trial_id"],
            "round": t["round"],
            "status": status,
            "config": hyperparameters(t["config"]),
            "seed": t["config"].get(SEED_KEY),
            "best": best,
            "epochs": max(t["history"], default=0),
            "history": t["history"],
        })
    return rows


def ranked(rows: list[dict], objective: Objective) -> list[dict]:
    """The rows that scored, best first."""
    scored = [r for r in rows if r["best"] is not None]
    return objective.rank(scored, key=lambda r: r["best"][objective.name])


def _errors(results) -> dict:
    """trial id -> error, for the trials Tune's results say failed."""
    errors = {}
    for r in results or []:
        tid = (r.metrics or {}).get("trial_id")
        if r.error is not None and tid:
            errors[tid] = str(r.error)
    return errors


def _best(rows: list[dict], objective: Objective) -> dict | None:
    """summary.json's ``best``: the best trial at its best epoch."""
    top = ranked(rows, objective)
    if not top:
        return None
    b = top[0]
    return {"trial_id": b["trial_id"], "config": b["config"], "seed": b["seed"],
            "round": b["round"], "epoch": b["best"]["epoch"],
            "metrics": {k: b["best"].get(k) for k in ("val_loss", "val_accuracy",
                                                      "train_loss")},
            "mlflow_run_id": None}


EDGE_MARGIN = 0.05  # of unit space: a best value this near a bound is on the space's edge


def edges(space, config: dict, margin: float = EDGE_MARGIN) -> list[dict]:
    """The tuned numeric parameters whose value in ``config`` (the best trial's) lies
    within ``margin`` of a bound of the space, in unit space: the playbook's "the best
    point is on the boundary, widen the space"."""
    out = []
    for p in space.tuned:
        if not hasattr(p, "scale") or p.name not in config:
            continue
        value = config[p.name]
        side = ("lower" if value <= p.from_unit(margin)
                else "upper" if value >= p.from_unit(1.0 - margin) else None)
        if side:
            out.append({"parameter": p.name, "edge": side, "value": value,
                        "message": f"best {p.name} is on the {side} edge ({value:.4g} of "
                                   f"[{p.scale.low:g}, {p.scale.high:g}]): widen the space"})
    return out


def _warnings(spec, rows: list[dict], counts: dict) -> list[str]:
    """The playbook's warnings: the best point on the space's edge (within the
    strategy's margin where it widens its boxes by one: coarse to fine), many diverged
    trials."""
    top = ranked(rows, spec.metric)
    margin = getattr(spec.strategy, "margin", EDGE_MARGIN)
    warnings = [e["message"] for e in edges(spec.space, top[0]["config"], margin)] if top else []
    if rows and counts["diverged"] / len(rows) > 0.2:
        warnings.append(f"{counts['diverged']} of {len(rows)} trials diverged: the space reaches "
                        "infeasible values (often too high a learning rate); narrow it")
    return warnings


def _rounds(state: dict, rows: list[dict]) -> list[dict]:
    """The strategy's rounds and boxes, each with the trials the event log holds for it
    (strategy.json is written when a round opens, not as its trials start)."""
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["round"]] = counts.get(r["round"], 0) + 1
    return [{**r, "trials": counts.get(r["round"], 0)} for r in state.get("rounds", [])]


def build_summary(spec, sweep_dir, results, started: float,
                  budget: int | None = None) -> tuple[dict, list[dict]]:
    """(summary.json's content, the contract other tools read, with ``warnings``; the
    trial rows)."""
    rows = trial_rows(TrialLog(sweep_dir / LOG_FILE), spec.metric, _errors(results))
    state_path = sweep_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    summary = {
        "name": spec.name,
        "strategy": spec.strategy.kind,
        "scheduler": spec.scheduler.kind,
        "metric": spec.metric.to_dict(),
        "wall_seconds": round(time.time() - started, 3),
        "complete": all(r["status"] in STATUSES for r in rows) and len(rows) >= (budget or 0),
        "trials": {"total": len(rows), **counts},
        "best": _best(rows, spec.metric),
        "rounds": _rounds(state, rows),
        "warnings": _warnings(spec, rows, counts),
        "mlflow": {"tracking_uri": None, "experiment_id": None, "parent_run_id": None},
    }
    return summary, rows


def write_outputs(spec, out, summary: dict, rows: list[dict]) -> None:
    """summary.json and trials.csv in the sweep's folder ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    metric = spec.metric.name
    names = [p.name for p in spec.space.parameters]
    with atomic_path(out / TRIALS_CSV) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", "round", "status", *names, f"best_{metric}", "best_epoch",
                    "epochs", "seed"])
        for r in sorted(rows, key=lambda r: (r["round"], r["trial_id"])):
            b = r["best"] or {}
            w.writerow([r["trial_id"], r["round"], r["status"],
                        *[r["config"].get(n, "") for n in names], b.get(metric, ""),
                        b.get("epoch", ""), r["epochs"], r["seed"]])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_top(summary: dict, table: str = "", stream=None) -> None:
    """The final report: counts, the table of top trials, the best configuration, warnings."""
    stream = stream or sys.stderr
    t = summary["trials"]
    done = "done" if summary.get("complete", True) else "stopped"
    print(f"caviar: sweep {summary['name']!r} {done} after {summary['wall_seconds']:.1f} s: "
          f"{t['total']} trials ({t['completed']} completed, {t['early_stopped']} early stopped, "
          f"{t['diverged']} diverged, {t['failed']} failed)", file=stream)
    best = summary.get("best")
    if best is None:
        print("caviar: no trial reported a result", file=stream)
        return
    if table:
        print(table, file=stream)
    for w in summary.get("warnings", []):
        print(f"caviar: warning: {w}", file=stream)
    m = best["metrics"]
    print(f"caviar: best trial {best['trial_id']} (round {best['round']}, epoch "
          f"{best['epoch']}): val_loss {_fmt(m['val_loss'])}, val_accuracy "
          f"{_fmt(m['val_accuracy'])}", file=stream)
    print("caviar: best config " + json.dumps(best["config"]), file=stream)


def top_table(rows: list[dict], objective: Objective, n: int = 5) -> str:
    """A plain-text table of the ``n`` best trials."""
    metric = objective.name
    top = ranked(rows, objective)[:n]
    if not top:
        return ""
    names = list(top[0]["config"])
    header = ["rank", "trial", "round", "status", metric, "epochs", *names]
    lines = [header]
    for i, r in enumerate(top, 1):
        lines.append([str(i), r["trial_id"], str(r["round"]), r["status"],
                      _fmt(r["best"][metric]), str(r["epochs"]),
                      *[_fmt(r["config"].get(k, "")) for k in names]])
    widths = [max(len(row[c]) for row in lines) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines)
