"""What a sweep costs the driver per trial, as the sweep grows: 100, 1,000, 10,000 trials.

Each trial trains one short epoch of a tiny net on 200 synthetic rows (a few ms),
so what is measured is orchestration: the driver's work per trial. Every run is a
fresh process (its own Ray), timed from before the sweep to its summary:

- ``caviar``: ``run_sweep`` as ``caviar sweep`` runs it (random strategy, FIFO),
  with MLflow tracking on (the embedded sqlite store) and off;
- ``plain``: the same trainable through ``tune.Tuner`` with Tune's defaults (its
  loggers on) but actors reused, and a random search over the same space, nothing of
  caviar's driver. (Without actor reuse, Ray 2.60's default for this trainable, each
  trial starts a worker process that imports torch: 4 s a trial here.)

Per N it prints: wall seconds per trial, the driver process's CPU seconds per trial
(its own threads, and its MLflow writer process past 1,000 trials; Ray's processes
excluded), its peak RSS, and then per mode the
ratio of the per-trial cost at the largest N to the smallest, and the marginal cost
per trial between consecutive sizes (which fixed start and end costs do not dilute).

Run: ``python benchmarks/bench_scale.py [--sizes 100 1000 10000] [--modes ...]``.
Goal (issue 15): caviar's per-trial cost at 10,000 <= 1.2 x its cost at 100, and its
per-trial wall at 10,000 no worse than plain Ray Tune's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

MODES = ("caviar-tracking", "caviar-no-tracking", "plain-tune")
DATA = {"source": "synthetic", "size": 200, "n_features": 8, "classes": 2}
MODEL = {"hidden_units": 8, "layers": 1}
SPACE = {"lr": {"scale": "log", "low": 1e-3, "high": 0.1}}


def sweep_file(path: Path, trials: int, tracking: bool, concurrency: int) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "scale", "data": DATA, "model": MODEL, "space": SPACE,
        "strategy": {"kind": "random", "trials": trials}, "scheduler": {"kind": "fifo"},
        "epochs": 1, "resources": {"cpu": 1, "gpu": 0, "concurrency": concurrency},
        "seed": 0, "tracking": {"enabled": tracking}}))
    return path


def _plain(trials: int, workdir: Path, concurrency: int) -> None:
    from ray import tune

    from models.data import DataSpec, load
    from orchestrator.sweep.trainable import train_trial

    data = load(DataSpec.from_dict(DATA, where="data"))
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, model=MODEL, epochs=1, cpus=1), {"cpu": 1})
    tune.Tuner(trainable, param_space={"lr": tune.loguniform(1e-3, 0.1)},
               tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=True,
                                           max_concurrent_trials=concurrency),
               run_config=tune.RunConfig(name="plain", storage_path=str(workdir),
                                         verbose=0)).fit()


def one_run(mode: str, trials: int, workdir: Path, concurrency: int) -> dict:
    """In this (fresh) process: one sweep; its wall, the driver's CPU and peak RSS."""
    import ray

    ray.init(num_cpus=concurrency, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    cpu0, t0 = os.times(), time.perf_counter()
    if mode == "plain-tune":
        _plain(trials, workdir, concurrency)
    else:
        from orchestrator.sweep.run import run_sweep
        from orchestrator.sweep.spec import load_sweep

        spec = load_sweep(sweep_file(workdir / "scale.yaml", trials, mode == "caviar-tracking",
                                     concurrency))
        run_sweep(spec, workdir, stream=open(os.devnull, "w"))
    wall, cpu1 = time.perf_counter() - t0, os.times()  # before Ray's processes are reaped
    ray.shutdown()
    return {"mode": mode, "trials": trials, "wall": wall,
            "cpu": sum(getattr(cpu1, k) - getattr(cpu0, k) for k in CPU_FIELDS),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# The driver's own CPU, and its children's that ended during the sweep: the MLflow
# writer process of a sweep past 1,000 trials (Ray's processes end after the timing).
CPU_FIELDS = ("user", "system", "children_user", "children_system")


def measure(mode: str, trials: int, concurrency: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="caviar-scale-"))
    try:
        out = subprocess.run([sys.executable, __file__, "--one", mode, str(trials), str(tmp),
                              str(concurrency)], capture_output=True, text=True, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            raise SystemExit(f"{mode} x {trials} failed:\n{out.stderr[-3000:]}")
        return json.loads(lines[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: list[dict]) -> None:
    print(f"{'mode':<20} {'trials':>7} {'wall s':>8} {'wall/trial':>11} {'driver CPU/trial':>17} "
          f"{'peak RSS MB':>12}")
    for r in results:
        per_trial = r["wall"] / r["trials"]
        print(f"{r['mode']:<20} {r['trials']:>7} {r['wall']:>8.1f} {per_trial:>11.4f} "
              f"{r['cpu'] / r['trials']:>17.4f} {r['rss_mb']:>12.0f}", flush=True)
    for mode in dict.fromkeys(r["mode"] for r in results):
        rs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["trials"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        ratio = (hi["wall"] / hi["trials"]) / (lo["wall"] / lo["trials"])
        cpu_ratio = (hi["cpu"] / hi["trials"]) / (lo["cpu"] / lo["trials"])
        marginal = [f"{(b['wall'] - a['wall']) / (b['trials'] - a['trials']):.4f} s wall, "
                    f"{(b['cpu'] - a['cpu']) / (b['trials'] - a['trials']):.4f} s CPU "
                    f"({a['trials']}->{b['trials']})" for a, b in zip(rs, rs[1:])]
        print(f"{mode}: per-trial cost at {hi['trials']} / at {lo['trials']}: wall {ratio:.2f}, "
              f"driver CPU {cpu_ratio:.2f}; marginal per trial: {'; '.join(marginal)}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        mode, trials, workdir, concurrency = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), \
            int(sys.argv[5])
        print(json.dumps(one_run(mode, trials, workdir, concurrency)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    results = []
    for trials in args.sizes:
        for mode in args.modes:
            results.append(measure(mode, trials, args.concurrency))
            r = results[-1]
            print(f"  {mode} x {trials}: {r['wall']:.1f} s", file=sys.stderr, flush=True)
    report(results)


if __name__ == "__main__":
    main()
