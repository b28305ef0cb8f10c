"""What a trial's MLflow record says it takes to train it again.

The trial's run holds its hyperparameters and seed (params), the torch threads,
device and versions it trained with (``caviar.*`` tags, reported by the trainable),
and its metrics per epoch. Its sweep's parent run holds the net's fixed settings
(``model.*``), the data section (``data.spec``, a file's path absolute) and the
digest of the rows the trainer saw (``data.sha256``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from models.config import RULES
from models.data import DataSpec
from searchspaces.errors import CaviarError

METRICS = ("train_loss", "val_loss", "val_accuracy")
VERSIONS = ("torch", "numpy", "caviar_version")


class RerunError(CaviarError):
    """The run named cannot be re-run (unknown, not a trial, no recipe): exit 2."""


@dataclass(frozen=True)
class Recipe:
    run_id: str
    trial_id: str
    experiment_id: str
    config: dict  # the net's fixed settings and the trial's hyperparameters, typed
    seed: int
    epochs: int  # as many as the trial trained (a scheduler may have stopped it early)
    data: DataSpec
    digest: str
    threads: int | None  # torch's intra-op threads (None: not recorded)
    device: str | None
    versions: dict = field(default_factory=dict)
    recorded: dict = field(default_factory=dict)  # epoch -> {metric: value}


def typed(name: str, text: str) -> object:
    """A param's string back as the value the model takes (MLflow keeps str())."""
    kind = RULES[name].type
    if kind is bool:
        return text == "True"
    return kind(text)


def read_recipe(client, run_id: str) -> Recipe:
    """The recipe of trial run ``run_id``; RerunError when there is none to read."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RerunError(f"no run {run_id!r} in {client.tracking_uri}: pass a trial's run id "
                         "(the MLflow UI shows it), or --trial ID --sweep NAME") from None
    tags, params = run.data.tags, run.data.params
    if tags.get("caviar.kind") != "trial":
        raise RerunError(f"run {run_id} is not a sweep's trial (caviar.kind="
                         f"{tags.get('caviar.kind')!r}): pass a trial's run id")
    changed = sorted(k.removeprefix("caviar.hp.") for k in tags if k.startswith("caviar.hp."))
    if changed:
        raise RerunError(f"trial run {run_id}: PBT changed its {', '.join(changed)} while it "
                         "trained; a re-run of one configuration cannot follow that")
    parent = client.get_run(tags["mlflow.parentRunId"]).data.params
    if "data.spec" not in parent:
        raise RerunError(f"trial run {run_id}: its sweep was recorded by an earlier caviar, "
                         "which did not record its data (data.spec, data.sha256): nothing "
                         "to rebuild it from")
    return Recipe(run_id, tags.get("caviar.trial_id", ""), run.info.experiment_id,
                  _config(params, parent), int(params["seed"]), _epochs(client, run_id),
                  DataSpec(**json.loads(parent["data.spec"])), parent["data.sha256"],
                  int(tags["caviar.threads"]) if "caviar.threads" in tags else None,
                  tags.get("caviar.device"),
                  {k: tags.get(f"caviar.{k}") for k in VERSIONS},
                  _history(client, run_id))


def _config(params: dict, parent: dict) -> dict:
    model = {k.removeprefix("model."): v for k, v in parent.items() if k.startswith("model.")}
    model.pop("kind", None)
    hps = {k: v for k, v in params.items() if k != "seed"}
    return {k: typed(k, v) for k, v in {**model, **hps}.items()}


def _epochs(client, run_id: str) -> int:
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    if not steps:
        raise RerunError(f"trial run {run_id} recorded no epoch: nothing to compare with")
    return max(steps)


def _history(client, run_id: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for key in METRICS:
        for m in client.get_metric_history(run_id, key):
            out.setdefault(m.step, {})[key] = m.value
    return out


def find_trial(client, sweep: str, trial_id: str) -> str:
    """The run id of trial ``trial_id`` of the sweep named ``sweep``."""
    ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(ids, f"tags.`caviar.sweep` = '{sweep}' and "
                                 "tags.`caviar.kind` = 'sweep'") if ids else []
    for parent in parents:
        found = client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
            f"and tags.`caviar.trial_id` = '{trial_id}'", max_results=1)
        if found:
            return found[0].info.run_id
    raise RerunError(f"no trial {trial_id!r} of a sweep {sweep!r} in {client.tracking_uri}")
