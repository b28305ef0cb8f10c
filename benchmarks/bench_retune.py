"""Warm-started re-tune against a cold coarse-to-fine search, on drifted data.

Production is tuned once on the digits data (a cold coarse-to-fine search, seed 0).
Then the data drifts: ten pixels are shifted and rescaled, and every pixel gets
noise (the course's black cats, then coloured cats). For each of ``--seeds`` seeds,
on the drifted data:

- cold: coarse-to-fine from the whole space, ``--cold-rounds`` x ``--per-round``;
- warm: what ``caviar retune`` runs: coarse-to-fine whose round 0 is centred on
  production's hyperparameters (its first trial), half the cold budget.

Counted in the order trials started: the trials the warm search needs until one
reaches the cold search's best val_loss (within ``--tolerance``, relative), over
the cold search's trials (its budget: what it ran to find that best). A warm search
that never gets there counts as infinite. Also printed: over the trials the cold
search needed to reach its own best (noisier: a lucky first trial makes it 1). All
fifo (every trial runs every epoch), so a trial's best val_loss is its own.

Run: ``python benchmarks/bench_retune.py [--seeds 5]``. Goal (issue 5): <= 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np


def drifted_digits(path: Path) -> Path:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(123)
    x = x.astype(np.float64)
    cols = rng.choice(np.flatnonzero(x.std(axis=0) > 1), size=10, replace=False)
    x[:, cols] = x[:, cols] * 2.5 + 4.0
    x += rng.normal(scale=2.0, size=x.shape)
    np.savez(path, X=x.astype(np.float32), y=y)
    return path


def sweep(name: str, data: dict, strategy: dict, seed: int, workdir: Path,
          epochs: int) -> list[float]:
    """Each trial's best val_loss, in the order the trials started."""
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import parse_sweep

    raw = {"name": name, "data": data, "space": "course.yaml", "epochs": epochs,
           "strategy": strategy, "scheduler": {"kind": "fifo"},
           "resources": {"cpu": 1}, "seed": seed, "tracking": {"enabled": False}}
    summary = run_sweep(parse_sweep(raw, f"<{name}>"), workdir, stream=open(os.devnull, "w"))
    events = [json.loads(line) for line in (workdir / name / "trials.jsonl").read_text()
              .splitlines()]
    order = list(dict.fromkeys(e["trial_id"] for e in events if e["event"] == "start"))
    best: dict[str, float] = {}
    for e in events:
        v = e.get("metrics", {}).get("val_loss") if e["event"] == "result" else None
        if v is not None and np.isfinite(v):
            best[e["trial_id"]] = min(best.get(e["trial_id"], np.inf), v)
    assert summary["trials"]["total"] == len(order)
    return [best.get(t, np.inf) for t in order]


def trials_to_reach(losses: list[float], target: float) -> int | None:
    for i, v in enumerate(losses, 1):
        if v <= target:
            return i
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cold-rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--width", type=float, default=0.2)
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="relative: 0.02 counts a trial within 2%% of the cold best as reaching it")
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="caviar-bench-"))
    try:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="ERROR")
        cold = {"kind": "coarse_to_fine", "rounds": args.cold_rounds,
                "trials_per_round": args.per_round}
        budget = args.cold_rounds * args.per_round
        tuned = sweep("production", {"source": "digits"}, cold, 0, tmp / "w", args.epochs)
        from orchestrator.sweep.spec import parse_sweep

        space = parse_sweep({"name": "space", "space": "course.yaml"}, "<space>").space
        configs = [json.loads(line)["config"] for line in
                   (tmp / "w" / "production" / "trials.jsonl").read_text().splitlines()
                   if '"start"' in line]
        start = {k: v for k, v in configs[int(np.argmin(tuned))].items()
                 if k in {p.name for p in space.tuned}}
        print(f"production (cold c2f on digits, {budget} trials): best val_loss "
              f"{min(tuned):.4f} at {start}")
        data = {"source": "npz", "path": str(drifted_digits(tmp / "drifted.npz")), "label": "y"}
        warm = {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": budget // 4,
                "start": start, "width": args.width}
        ratios, own = [], []
        for seed in range(1, args.seeds + 1):
            c = sweep(f"cold{seed}", data, cold, seed, tmp / "w", args.epochs)
            w = sweep(f"warm{seed}", data, warm, seed, tmp / "w", args.epochs)
            target = min(c) * (1 + args.tolerance)
            n_cold = trials_to_reach(c, target)
            n_warm = trials_to_reach(w, target)
            ratio = (n_warm / len(c)) if n_warm else float("inf")
            ratios.append(ratio)
            own.append((n_warm / n_cold) if n_warm else float("inf"))
            print(f"seed {seed}: cold best {min(c):.4f} after {n_cold} of {len(c)} trials; "
                  f"warm best {min(w):.4f}, reached the cold best after "
                  f"{n_warm if n_warm else 'never (of ' + str(len(w)) + ')'} trials; "
                  f"ratio {ratio:.3f} of the cold budget, {own[-1]:.3f} of its trials to best")
        print(f"median warm trials to the cold best / cold trials: "
              f"{statistics.median(ratios):.3f} (goal <= 0.5); / cold trials to its own best: "
              f"{statistics.median(own):.3f}; warm budget {budget // 2}, cold {budget}")
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
