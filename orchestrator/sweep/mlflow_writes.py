"""The sweep's event log as MLflow writes: what each trial's run gets, and nothing twice.

A pure translation (no MLflow here): events of ``trials.jsonl`` (``records``) in, a
``RunBatch`` per trial out, given what MLflow already holds of each trial's run
(``Progress``, from ``tracking.runs``). The records it makes:

- a run per trial, named ``trial-<id>``, tagged ``caviar.kind=trial``,
  ``caviar.trial_id``, ``caviar.round`` and ``caviar.status`` (running, then the
  status its ``end`` event gives; ``forgotten`` for a trial a resumed Tune re-ran under
  a new id), ended FINISHED, FAILED or KILLED;
- its hyperparameters and seed as params; values PBT changed later as tags
  ``caviar.hp.<name>`` (MLflow refuses a changed param), numeric ones also as metrics
  ``hp_<name>`` at the first epoch written after the change;
- each epoch's metrics at step = epoch, with the time the driver recorded it; the node
  it ran on as ``caviar.<field>`` tags.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from orchestrator.tracking.runs import Progress, RunBatch
from orchestrator.trial_protocol import ROUND_KEY, SEED_KEY, hyperparameters

METRICS = ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_seconds",
           "samples_per_second")
NODE_TAGS = ("node_id", "node_ip", "hostname", "device", "gpu_name", "gpu_model", "gpu_count",
             "cpu_model", "cpu_count", "torch", "cuda", "threads", "numpy", "caviar_version")
RUN_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "diverged": "FINISHED",
              "failed": "FAILED"}
KIND, KEY_TAG = {"caviar.kind": "trial"}, "caviar.trial_id"

# progress(trial_id, find=..., steps=...): what MLflow holds of the trial's run
ProgressOf = Callable[..., Progress]


def events_of(lines: bytes) -> list[dict]:
    """The events of whole lines; a line a crash cut short (and the writer ended later)
    does not parse and is skipped, as the event log's own reader does."""
    out = []
    for line in lines.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in out if isinstance(e, dict) and "trial_id" in e and "event" in e]


def translate(events: list[dict], progress: ProgressOf) -> dict[str, RunBatch]:
    """The writes ``events`` make, a batch per trial (in the order trials first appear),
    leaving out what ``progress`` says MLflow holds.

    ``progress(trial_id)`` is asked for every trial with an event other than ``forget``,
    with ``steps=True`` for one with a result, and with ``find=False`` (no look-up in
    MLflow: only a run already known is ended) for a forgotten one."""
    batches: dict[str, RunBatch] = {}
    changed: dict[str, dict[str, float]] = {}  # trial -> PBT's new values, for its next epoch
    for e in events:
        tid, kind = e["trial_id"], e["event"]
        if kind == "forget":  # started after Tune's last snapshot; re-run under a new id
            if tid in batches or progress(tid, find=False).run_id:
                b = batches.setdefault(tid, RunBatch(name=f"trial-{tid}"))
                b.tags["caviar.status"] = "forgotten"
                b.end = "KILLED"
            continue
        b = batches.get(tid)
        if b is None:
            b = batches[tid] = _new_batch(tid, e)
        held = progress(tid, steps=kind == "result")
        if kind == "start":
            _start(e["config"], held, b, changed.setdefault(tid, {}))
        elif kind == "result":
            _result(e, held, b, changed.setdefault(tid, {}))
        elif kind == "end":
            b.tags["caviar.status"] = e["status"]
            b.end = RUN_STATUS.get(e["status"], "FINISHED")
    return batches


def _new_batch(tid: str, event: dict) -> RunBatch:
    """A trial's batch; its run, if it has none yet, is made with the round of the event
    that first names it."""
    config = event.get("config", {})
    return RunBatch(name=f"trial-{tid}",
                    create={**KIND, "caviar.round": str(config.get(ROUND_KEY, 0)),
                            "caviar.status": "running"})


def _start(config: dict, progress: Progress, b: RunBatch, changed: dict) -> None:
    """A trial's hyperparameters as params; changed ones (PBT) as tags and metrics."""
    raw = {**hyperparameters(config), "seed": config.get(SEED_KEY)}
    hps = {k: str(v) for k, v in raw.items()}
    known = progress.params or b.params
    if not known:
        b.params.update(hps)
    else:  # PBT changed them: MLflow refuses new param values, so tags and metrics
        for k, v in hps.items():
            if v != known.get(k):
                b.tags[f"caviar.hp.{k}"] = v
                if isinstance(raw[k], (int, float)) and not isinstance(raw[k], bool):
                    changed[k] = float(raw[k])
    b.tags["caviar.status"] = "running"
    b.end = None


def _result(e: dict, progress: Progress, b: RunBatch, changed: dict) -> None:
    """One epoch's metrics (step = epoch), unless MLflow or this batch has them."""
    step, ms = int(e["epoch"]), int(e["time"] * 1000)
    replayed = bool(e.get("replayed"))
    if progress.holds(step, ms, replayed) or (replayed and step in {s for s, _ in b.steps}):
        return  # written already, or read back from a checkpoint and written already
    m = e["metrics"]
    b.metrics += [(key, float(m[key]), ms, step) for key in METRICS if m.get(key) is not None]
    b.metrics += [(f"hp_{k}", v, ms, step) for k, v in changed.items()]
    changed.clear()
    b.steps.add((step, ms))
    b.tags.update({f"caviar.{key}": str(m[key]) for key in NODE_TAGS if m.get(key) is not None})
