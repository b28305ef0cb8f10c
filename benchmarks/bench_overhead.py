"""Orchestration efficiency of a caviar sweep against plain Ray Tune defaults, in one run.

Efficiency = (sum of the trials' own training seconds) / (cores used x sweep wall
seconds): 1.0 means every core trained every second. Each trial trains the
course's net on synthetic data for ``--epochs`` epochs of about
``1 / epochs`` seconds each (about 1 s of pure training a trial), reporting and
checkpointing every epoch.

- caviar: ``run_sweep`` as ``caviar sweep`` runs it (actors reused, Ray's
  automatic loggers off, checkpoints kept while a trial runs, the event log).
- plain Ray Tune: the same trainable and trials through ``tune.Tuner`` with
  Tune's defaults (no actor reuse, its JSON/CSV/TensorBoard loggers on,
  checkpoints every epoch).

Run: ``python benchmarks/bench_overhead.py [--trials 100] [--epochs 10]``.
Goal (issue 3): >= 0.85 for caviar on 1 s trials.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml


def make_sweep(path: Path, trials: int, epochs: int, rows: int, concurrency: int) -> None:
    path.write_text(yaml.safe_dump({
        "name": "bench",
        "data": {"source": "synthetic", "size": rows, "n_features": 64, "classes": 10},
        "model": {"hidden_units": 64, "layers": 2},
        "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.1},
                  "momentum": {"scale": "reverse_log", "low": 0.8, "high": 0.99}},
        "strategy": {"kind": "random", "trials": trials},
        "scheduler": {"kind": "fifo"},
        "epochs": epochs,
        "resources": {"cpu": 1, "gpu": 0, "concurrency": concurrency},
        "seed": 0,
    }))


def train_seconds(events_path: Path) -> float:
    """Sum of the trials' own training seconds (each epoch's train + validation time)."""
    import json

    total = 0.0
    for line in events_path.read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "result" and not e.get("replayed"):
            total += e["metrics"]["epoch_seconds"]
    return total


def run_caviar(sweep: Path, workdir: Path) -> tuple[float, float]:
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    spec = load_sweep(sweep)
    t0 = time.perf_counter()
    run_sweep(spec, workdir, stream=open(os.devnull, "w"))
    wall = time.perf_counter() - t0
    return train_seconds(workdir / spec.name / "trials.jsonl"), wall


def _flat_trial(config, **kwargs):
    from orchestrator.sweep.trainable import train_trial

    train_trial(config["trial"], cpus=1, **kwargs)


def run_plain_tune(sweep: Path, workdir: Path) -> tuple[float, float]:
    """The same trials with Ray Tune's defaults; training seconds from its own results."""
    import ray
    from ray import tune

    from models.data import load as load_data
    from orchestrator.sweep.spec import load_sweep

    spec = load_sweep(sweep)
    data = load_data(spec.data)
    from searchspaces import sample

    configs = sample(spec.space, "random", spec.strategy.trials, spec.seed)
    seconds = []

    class Collect(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seconds.append(result["epoch_seconds"])

    trainable = tune.with_resources(
        tune.with_parameters(_flat_trial, data=data, model=spec.model, epochs=spec.epochs),
        {"cpu": 1})
    os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)  # Tune's default: loggers on
    t0 = time.perf_counter()
    tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(
            [{**c, "_seed": i} for i, c in enumerate(configs)])},
        tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.concurrency),
        run_config=tune.RunConfig(name="plain", storage_path=str(workdir), verbose=0,
                                  callbacks=[Collect()]),
    ).fit()
    wall = time.perf_counter() - t0
    ray.shutdown()
    return sum(seconds), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=20000,
                    help="synthetic rows: sets an epoch's length (20000: ~0.1 s here)")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-plain", action="store_true")
    args = ap.parse_args()
    cores = args.concurrency
    tmp = Path(tempfile.mkdtemp(prefix="caviar-bench-"))
    try:
        sweep = tmp / "bench.yaml"
        make_sweep(sweep, args.trials, args.epochs, args.rows, cores)
        import ray

        ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
        train, wall = run_caviar(sweep, tmp / "caviar")
        ray.shutdown()
        eff = train / (cores * wall)
        print(f"{args.trials} trials x {args.epochs} epochs, {cores} cores; "
              f"mean training per trial {train / args.trials:.2f} s")
        print(f"caviar sweep      : wall {wall:7.1f} s, training {train:7.1f} s, "
              f"efficiency {eff:.3f}  (goal >= 0.85)")
        if not args.skip_plain:
            ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
            ptrain, pwall = run_plain_tune(sweep, tmp / "plain")
            peff = ptrain / (cores * pwall)
            print(f"plain Ray Tune    : wall {pwall:7.1f} s, training {ptrain:7.1f} s, "
                  f"efficiency {peff:.3f}  (defaults: no actor reuse, auto loggers on)")
            print(f"ratio caviar/plain: {eff / peff:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
