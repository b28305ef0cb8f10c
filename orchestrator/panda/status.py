"""A babysat run as one JSON-able object: what `caviar babysit status` shows and
`--json` prints (state, epoch, branch, the hyperparameters in force, the per-epoch
metrics along the current line, every branch and the history), the same as text, and
every run in a store (`caviar babysit list`).

The state shown is the one on record, except for a run whose worker is gone before
the run ended: that one is ``lost`` (``start --resume`` brings it back)."""

from __future__ import annotations

import time
from dataclasses import asdict

from orchestrator.panda.channel import (
    BABYSIT,
    BRANCH,
    FINAL_STATES,
    STATE,
    SWEEP,
    babysat_runs,
    reached,
)
from orchestrator.panda.launch import alive
from orchestrator.panda.worker import HP_METRICS

LOST = "lost"
SPARKS = "▁▂▃▄▅▆▇█"
STATUS_KEYS = ("train_loss", "val_loss", "val_accuracy", "lr")


def shown_state(tags: dict) -> tuple[str, bool, str]:
    """(the state to show, whether the worker runs, where it runs in words)."""
    running, why = alive(tags)
    state = tags.get(STATE, "")
    return (state if running or state in FINAL_STATES else LOST), running, why


def ended(state: str) -> bool:
    """Nothing more will happen to a run in ``state`` unless someone resumes it."""
    return state in FINAL_STATES or state == LOST


def status(record) -> dict:
    """The run as one JSON-able object: state, epoch, branch, hyperparameters in force,
    per-epoch metrics along the current line, every branch and the history."""
    tags, lineage = record.tags(), record.lineage()
    state, running, why = shown_state(tags)
    rows = []
    for b, upto in lineage.spans():
        for epoch, m in sorted(record.history(b, (*STATUS_KEYS, *_hp(HP_METRICS))).items()):
            if b.from_epoch < epoch <= upto:
                rows.append({"branch": b.id, **m})
    return {"name": lineage.name, "state": state, "alive": running, "where": why,
            "epoch": reached(tags), "epochs": lineage.epochs, "branch": lineage.current,
            "paused": lineage.paused, "hyperparameters": lineage.hparams, "metrics": rows,
            "branches": [asdict(b) for b in lineage.branches], "history": lineage.events,
            "pending": [{"request": r, **body} for r, body in record.pending(tags)],
            "mlflow": {"tracking_uri": record.uri, "run_id": record.run_id}}


def list_runs(uri: str) -> list[dict]:
    """Every babysat run in the store at ``uri``, newest first, as `babysit list` shows it."""
    rows = []
    for run in babysat_runs(uri):
        tags = run.data.tags
        state, _, why = shown_state(tags)
        rows.append({"name": tags.get(BABYSIT), "sweep": tags.get(SWEEP), "state": state,
                     "epoch": reached(tags), "branch": tags.get(BRANCH), "worker": why,
                     "run_id": run.info.run_id})
    return rows


def _hp(keys) -> tuple[str, ...]:
    return tuple(f"hp_{k}" for k in keys)


def sparkline(values: list[float]) -> str:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(int((v - lo) / span * len(SPARKS)), len(SPARKS) - 1)]
                   if v in finite else "!" for v in values)


# -- as text ----------------------------------------------------------------------------

def status_text(s: dict) -> str:
    """``status(record)`` as `babysit status` prints it: the state, the hyperparameters
    in force, the curve (a sparkline and a table), the history and what is pending."""
    paused = " (paused)" if s["paused"] and s["state"] != "paused" else ""
    hp = "  ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in s["hyperparameters"].items())
    rows = s["metrics"]
    lines = [f"babysat run {s['name']!r}: {s['state']}{paused}, epoch {s['epoch']} of "
             f"{s['epochs']}, branch {s['branch']}", f"  worker: {s['where']}",
             f"  in force: {hp}",
             f"  val_loss {sparkline([r.get('val_loss', float('nan')) for r in rows])}",
             f"  {'epoch':>5} {'branch':<6} {'train_loss':>10} {'val_loss':>10} "
             f"{'val_acc':>8} {'lr':>9}"]
    lines += [f"  {r['epoch']:>5} {r['branch']:<6} {r.get('train_loss', 0):>10.4f} "
              f"{r.get('val_loss', 0):>10.4f} {r.get('val_accuracy', 0):>8.4f} "
              f"{r.get('lr', 0):>9.3g}" for r in rows]
    lines += ["  history:", *map(event_text, s["history"])]
    lines += [f"  pending: {p['op']} {p.get('set') or p.get('epoch') or ''}"
              for p in s["pending"]]
    return "\n".join(lines)


def event_text(e: dict) -> str:
    """One event of the history, on one line: when, at which epoch, on which branch, what."""
    what = {"nudge": lambda: "nudge " + ", ".join(f"{k} {e['before'].get(k)!r} -> {v!r}"
                                                 for k, v in e["set"].items())
                     + f" (from epoch {e['from_epoch']})",
            "revert": lambda: f"revert to epoch {e['to_epoch']} of {e['to_branch']}, as "
                              f"{e['branch']}" + (f" with {e['set']}" if e.get("set") else ""),
            "worker": lambda: "worker started " + _where_words(e.get("where", {})),
            "refused": lambda: f"refused {e.get('op')}: {e.get('reason')}",
            "epochs": lambda: f"epochs in all set to {e.get('epochs')}",
            "register": lambda: f"registered epoch {e['epoch_registered']} as "
                                f"{e['model']!r} version {e['version']}"}
    text = what.get(e["kind"], lambda: e["kind"] + (f" ({e['reason']})" if e.get("reason")
                                                     else ""))()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
    return f"  {when}  epoch {e['epoch']:>4}  {e['branch']:<4} {text}"


def _where_words(where: dict) -> str:
    if where.get("launcher") == "ray":
        return f"in a Ray actor on {where.get('node_ip')} ({where.get('host')})"
    return f"as process {where.get('pid')} on {where.get('host')}"
