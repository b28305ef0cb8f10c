"""The gate: promote only a model that is really better, on today's data.

Production's and the challenger's hyperparameters are each retrained on today's
training split with ``seeds`` seeds (as Ray tasks when Ray runs, else inline) and
scored on today's holdout (the test split). ``promoted`` when the challenger's
mean is better by at least ``margin`` (and a one-sided Welch t-test agrees at 5 %
when seeds >= 3); ``refreshed`` when not, but production's hyperparameters
retrained today beat the deployed weights by ``margin``; else ``kept``.
"""

from __future__ import annotations

import math

import numpy as np

from models.objective import Objective
from orchestrator.cluster.hardware import hardware_fingerprint
from orchestrator.retune.spec import RetuneSpec

P_VALUE = 0.05


def gate_fit(data, config: dict, epochs: int, seed: int, metric: str) -> dict:
    """One retrain on today's training split, scored on the holdout (Ray task or inline)."""
    from models.config import split_config
    from models.train import fit, holdout_scores

    model_config, hparams = split_config(config)
    last = {}  # the TrainingRun, for its final state
    result = fit(data, model_config, hparams, epochs=epochs, seed=seed, num_threads=1,
                 callback=lambda metrics, run: last.update(run=run) and None)
    loss, acc = holdout_scores(result.model, data)
    val = result.metrics.get(metric)
    return {"seed": seed, "status": result.status, "holdout_loss": loss,
            "holdout_accuracy": acc, "val": val if val is not None else math.nan,
            "state": last["run"].state_dict() if last else None,
            "hardware": dict(hardware_fingerprint())}  # where it trained: the new hw.* tags


def holdout_key(metric: str) -> str:
    """The holdout score the gate compares: accuracy for an accuracy sweep, else loss."""
    return "holdout_accuracy" if metric == "val_accuracy" else "holdout_loss"


def gate(spec: RetuneSpec, data, configs: dict[str, dict], stream) -> dict:
    """Each named configuration retrained ``seeds`` times; ``{name: [fit results]}``."""
    import ray

    sweep = spec.sweep
    metric = sweep.metric.name
    seeds = [sweep.seed * 1000 + 7919 * (i + 1) for i in range(spec.seeds)]
    jobs = {name: [(config, s) for s in seeds] for name, config in configs.items()}
    print(f"caviar: gate: {len(configs)} configuration(s) x {spec.seeds} seeds on today's data "
          f"({sweep.epochs} epochs each)", file=stream, flush=True)
    if ray.is_initialized():
        remote = ray.remote(num_cpus=sweep.resources.cpu,
                            num_gpus=sweep.resources.gpu)(gate_fit)
        ref = ray.put(data)
        futures = {name: [remote.remote(ref, {**sweep.model, **c}, sweep.epochs, s, metric)
                          for c, s in js] for name, js in jobs.items()}
        return {name: ray.get(fs) for name, fs in futures.items()}
    return {name: [gate_fit(data, {**sweep.model, **c}, sweep.epochs, s, metric)
                   for c, s in js] for name, js in jobs.items()}


def stats(results: list[dict], key: str) -> dict:
    """Mean, sample std and the values; a non-finite value makes the mean infinite."""
    values = [r[key] for r in results]
    finite = [v for v in values if math.isfinite(v)]
    mean = float(np.mean(finite)) if len(finite) == len(values) and values else math.inf
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def welch_p(better: list[float], worse: list[float], objective: Objective) -> float:
    """One-sided Welch t-test p-value that ``better`` is better than ``worse``."""
    from scipy import stats as scipy_stats

    a, b = np.asarray(better), np.asarray(worse)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread at all (np.std may say 1e-16)
        return 0.0 if objective.better(a.mean(), b.mean()) else 1.0
    alternative = "less" if objective.mode == "min" else "greater"
    return float(scipy_stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def decide(spec: RetuneSpec, results: dict, deployed: dict, same: bool) -> dict:
    """The gate's decision and the figures behind it."""
    objective = spec.sweep.metric
    key = holdout_key(objective.name)
    deployed_score = deployed["accuracy" if key == "holdout_accuracy" else "loss"]

    def beats(a: float, b: float) -> bool:  # a better than b by at least the margin
        return objective.sign * (b - a) >= spec.margin and math.isfinite(a)

    prod = stats(results["production"], key)
    out = {"metric": key, "margin": spec.margin, "production": prod,
           "deployed": deployed_score, "p_value": None}
    if not same:
        chal = stats(results["challenger"], key)
        out["challenger"] = chal
        if beats(chal["mean"], prod["mean"]):
            if spec.seeds < 3:
                return {**out, "decision": "promoted"}
            out["p_value"] = welch_p(chal["values"], prod["values"], objective)
            if out["p_value"] < P_VALUE:
                return {**out, "decision": "promoted"}
    if beats(prod["mean"], deployed_score):
        return {**out, "decision": "refreshed"}
    return {**out, "decision": "kept"}


def best_seed(results: list[dict], objective: Objective) -> dict:
    """The retrain to deploy: chosen on the validation split; the holdout only scores it."""
    ok = [r for r in results if r["state"] is not None and math.isfinite(r["val"])]
    return min(ok or results, key=lambda r: objective.sign * r["val"])
