"""Orchestration efficiency of a caviar sweep on 1 s trials, with epochs of ~100 ms and ~25 ms.

Efficiency = (the trials' training seconds in a bare loop) / (cores x the sweep's
wall seconds), tracking on: 1.0 means every core trained every second of the sweep,
start-up, MLflow and the end (summary, plots, export) included. The numerator is
measured as a new user would: after the sweep, each of its trials (same
hyperparameters, same seed) is trained again by ``models.train.fit`` alone, one
thread, no Ray, no callback, one after the other, and timed (after one untimed
epoch: torch's first optimizer imports ``torch._dynamo``, ~3 s here, in the bare
loop as in each of the sweep's worker processes, where it is counted).

Two cases (``--case``), each about 1 s of training a trial:

- ``100ms``: 100 trials x 10 epochs of ~100 ms (synthetic, 20,000 rows);
- ``25ms``: 48 trials x 60 epochs of ~25 ms (digits, batch 32: the demo's epochs).

Besides the efficiency it prints where the rest of the cores' time went, from the
sweep's event log: start-up (before the first trial started), the end (after the
last trial ended), each trial's time outside its epochs (actor set-up, reports,
checkpoints), the epochs' own slow-down inside the sweep against the bare loop,
and the cores left idle while trials ran (waiting for the driver); the efficiency
between the first trial's start and the last one's end, which a much longer sweep
of such trials tends to as its start and end weigh less. And the most
this machine allows whatever caviar does: each trial worker is a new Python
process that starts Ray, imports Tune and torch and takes torch's first optimizer
step before it trains; that start is timed here with bare Ray actors (no caviar
code), and bare / (bare + cores x that start) bounds the efficiency from above.

``--plain`` also runs the same trials through ``tune.Tuner`` with Ray Tune's
defaults (no actor reuse, its loggers on), for comparison.

Run: ``python benchmarks/bench_overhead.py [--case 100ms 25ms] [--plain]``.
Goal (issue 15): >= 0.90 for caviar in both cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CASES = {
    "100ms": {"trials": 100, "epochs": 10, "batch_size": 64,
              "data": {"source": "synthetic", "size": 20000, "n_features": 64, "classes": 10}},
    "25ms": {"trials": 48, "epochs": 60, "batch_size": 32, "data": {"source": "digits"}},
}
MODEL = {"hidden_units": 64, "layers": 2}


def make_sweep(path: Path, case: dict, concurrency: int) -> None:
    path.write_text(yaml.safe_dump({
        "name": "bench", "data": case["data"], "model": MODEL,
        "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.1},
                  "momentum": {"scale": "reverse_log", "low": 0.8, "high": 0.99},
                  "batch_size": {"fixed": case["batch_size"]}},
        "strategy": {"kind": "random", "trials": case["trials"]},
        "scheduler": {"kind": "fifo"},
        "epochs": case["epochs"],
        "resources": {"cpu": 1, "gpu": 0, "concurrency": concurrency},
        "seed": 0,
        "tracking": {"enabled": True},
    }))


def run_caviar(sweep: Path, workdir: Path) -> tuple[float, float, float, Path]:
    """(sweep start, sweep end, wall) in time.time() seconds, and its event log."""
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    spec = load_sweep(sweep)
    t0, p0 = time.time(), time.perf_counter()
    run_sweep(spec, workdir, stream=open(os.devnull, "w"))
    wall = time.perf_counter() - p0
    return t0, t0 + wall, wall, workdir / spec.name / "trials.jsonl"


def bare_loop(sweep: Path, events: list[dict]) -> tuple[float, float]:
    """(seconds, of which epochs' seconds): every trial of the sweep trained again alone."""
    import torch

    from models.config import split_config
    from models.data import load
    from models.train import fit
    from orchestrator.sweep.spec import load_sweep
    from orchestrator.trial_protocol import SEED_KEY, hyperparameters

    spec = load_sweep(sweep)
    data = load(spec.data, spec.base_dir)
    torch.set_num_threads(1)
    starts = [e for e in events if e["event"] == "start"]
    total = epochs = 0.0
    for i, e in enumerate([starts[0], *starts]):
        model_config, hparams = split_config({**spec.model, **hyperparameters(e["config"])})
        if i == 0:  # untimed: torch's first optimizer imports torch._dynamo (~3 s here)
            fit(data, model_config, hparams, epochs=1, seed=0, device="cpu", num_threads=1)
            continue
        t = time.perf_counter()
        result = fit(data, model_config, hparams, epochs=spec.epochs,
                     seed=int(e["config"][SEED_KEY]), device="cpu", num_threads=1)
        total += time.perf_counter() - t
        epochs += sum(m["epoch_seconds"] for m in result.history)
    return total, epochs


def worker_start(cores: int) -> float:
    """Wall seconds for ``cores`` new Ray workers, side by side, to do what each of the
    sweep's trial workers does before it can train, with no caviar code: start as a Ray
    actor (with the runtime_env Tune gives its actors), import Ray Tune and torch, and
    take torch's first optimizer step (which imports ``torch._dynamo``)."""
    import ray

    @ray.remote(num_cpus=1, runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}})
    class Worker:
        def ready(self) -> bool:
            import ray.tune  # noqa: F401 - what a trial worker imports
            import torch

            net = torch.nn.Linear(4, 2)
            step = torch.optim.SGD(net.parameters(), lr=0.1)
            net(torch.zeros(1, 4)).sum().backward()
            step.step()
            return True

    t = time.perf_counter()
    workers = [Worker.remote() for _ in range(cores)]
    ray.get([w.ready.remote() for w in workers])
    seconds = time.perf_counter() - t
    for w in workers:
        ray.kill(w)
    return seconds


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this driver (its threads: Tune's loop, the MLflow thread) and
    of Ray's daemons (raylet, GCS; Tune ends the trial workers before the sweep returns,
    so theirs are not counted)."""
    import psutil

    me = psutil.Process()
    seconds = {"driver": sum(me.cpu_times()[:2]), "ray daemons": 0.0}
    for p in me.children(recursive=True):
        try:
            if not p.cmdline()[0].startswith("ray::"):
                seconds["ray daemons"] += sum(p.cpu_times()[:2])
        except (psutil.Error, IndexError):
            pass
    return seconds


def breakdown(events: list[dict], t0: float, t1: float, cores: int) -> dict:
    """Where the cores' seconds went during the sweep, from its event log."""
    starts = {e["trial_id"]: e["time"] for e in events if e["event"] == "start"}
    ends = {e["trial_id"]: e["time"] for e in events if e["event"] == "end"}
    epoch_s = {t: 0.0 for t in starts}
    for e in events:
        if e["event"] == "result" and not e.get("replayed"):
            epoch_s[e["trial_id"]] += e["metrics"]["epoch_seconds"]
    spans = {t: ends[t] - starts[t] for t in starts if t in ends}
    first, last = min(starts.values()), max(ends.values())
    return {"start_up": first - t0, "end": t1 - last,
            "in_sweep_epochs": sum(epoch_s.values()),
            "outside_epochs_per_trial": sum(spans[t] - epoch_s[t] for t in spans) / len(spans),
            "idle_while_running": cores * (last - first) - sum(spans.values())}


def _flat_trial(config, **kwargs):
    from orchestrator.sweep.trainable import train_trial

    train_trial(config["trial"], cpus=1, **kwargs)


def run_plain_tune(sweep: Path, workdir: Path, events: list[dict]) -> float:
    """The sweep's trials with Ray Tune's defaults; its wall seconds."""
    from ray import tune

    from models.data import load
    from orchestrator.sweep.spec import load_sweep

    spec = load_sweep(sweep)
    data = load(spec.data, spec.base_dir)
    configs = [e["config"] for e in events if e["event"] == "start"]
    trainable = tune.with_resources(
        tune.with_parameters(_flat_trial, data=data, model=spec.model, epochs=spec.epochs,
                             report_every=0.0), {"cpu": 1})
    os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)  # Tune's default: loggers on
    t0 = time.perf_counter()
    tune.Tuner(trainable, param_space={"trial": tune.grid_search(configs)},
               tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.concurrency),
               run_config=tune.RunConfig(name="plain", storage_path=str(workdir), verbose=0),
               ).fit()
    return time.perf_counter() - t0


def one_case(name: str, cores: int, plain: bool, tmp: Path) -> None:
    import ray

    from orchestrator.cluster.connect import start_local

    case = CASES[name]
    sweep = tmp / f"{name}.yaml"
    make_sweep(sweep, case, cores)
    start_local(num_cpus=cores, logging_level="ERROR")  # the embedded Ray, as caviar starts it
    cpu0 = cpu_by_role()
    t0, t1, wall, log = run_caviar(sweep, tmp / f"caviar-{name}")
    cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu_by_role().items()}
    boot = worker_start(cores)
    ray.shutdown()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    bare, bare_epochs = bare_loop(sweep, events)
    b = breakdown(events, t0, t1, cores)
    print(f"\n{name}: {case['trials']} trials x {case['epochs']} epochs, {cores} cores; "
          f"bare loop {bare:.1f} s ({bare / case['trials']:.2f} s a trial, "
          f"{1000 * bare_epochs / (case['trials'] * case['epochs']):.1f} ms an epoch)")
    print(f"caviar sweep (tracking on): wall {wall:.1f} s, efficiency "
          f"{bare / (cores * wall):.3f} (goal >= 0.90); from the first trial's start to the "
          f"last one's end {bare / (cores * (wall - b['start_up'] - b['end'])):.3f} (what a "
          "sweep of many more such trials tends to)")
    print(f"  core-seconds {cores * wall:.1f} = bare loop {bare:.1f}"
          f" + start-up {cores * b['start_up']:.1f} (first trial after {b['start_up']:.1f} s)"
          f" + end {cores * b['end']:.1f} ({b['end']:.1f} s after the last trial)"
          f" + outside epochs {b['outside_epochs_per_trial'] * case['trials']:.1f}"
          f" ({b['outside_epochs_per_trial']:.3f} s a trial)"
          f" + epochs' slow-down {b['in_sweep_epochs'] - bare_epochs:.1f}"
          f" (x{b['in_sweep_epochs'] / bare_epochs:.3f} the bare epochs)"
          f" + idle while trials ran {b['idle_while_running']:.1f}"
          f" + the bare loop's time outside epochs {-(bare - bare_epochs):.1f}")
    print(f"  a trial worker's own start (Python, Ray, Tune, torch, its first optimizer step; "
          f"no caviar code), {cores} side by side: {boot:.1f} s, so even if the sweep cost "
          f"nothing else the efficiency could be at most {bare / (bare + cores * boot):.3f}")
    print("  CPU seconds during the sweep: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
          + " (driver and daemons take these from the trials' cores)")
    if plain:
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
        pwall = run_plain_tune(sweep, tmp / f"plain-{name}", events)
        ray.shutdown()
        print(f"plain Ray Tune defaults: wall {pwall:.1f} s, efficiency "
              f"{bare / (cores * pwall):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs="+", choices=sorted(CASES), default=["100ms", "25ms"])
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--plain", action="store_true", help="also run plain Ray Tune's defaults")
    args = ap.parse_args()
    if len(args.case) > 1:  # each case in a driver of its own, as a new `caviar sweep` is:
        for name in args.case:  # one that has imported MLflow, the plots... runs faster
            subprocess.run([sys.executable, __file__, "--case", name, "--concurrency",
                            str(args.concurrency), *(["--plain"] if args.plain else [])],
                           check=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="caviar-bench-"))
    try:
        one_case(args.case[0], args.concurrency, args.plain, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
