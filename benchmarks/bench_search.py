"""Search quality at equal budget, and what ASHA saves, on digits with the course's space.

1. random, quasi_random, grid, coarse_to_fine and tpe, each with the same trial
   budget (64: grid's 2 points on each of the course space's 6 tuned
   parameters; coarse_to_fine as 4 rounds of 16), over 5 seeds: the median
   best val_loss of each, and the median number of trials each needed to reach
   grid's best (trials counted in the order they finished).
2. asha against fifo (random search, the same configurations for a seed):
   epochs consumed until the sweep first reaches the level both reach (the
   worse of the two bests). Goal: asha / fifo <= 0.5.

Ray is started once and shared by every sweep. Run:
``python benchmarks/bench_search.py [--seeds 5] [--budget 64] [--epochs 15]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

STRATEGIES = ("random", "quasi_random", "grid", "coarse_to_fine", "tpe")


def sweep_dict(kind: str, budget: int, seed: int, epochs: int, scheduler: str = "fifo",
               grace: int = 2) -> dict:
    strategy = {"kind": kind}
    if kind == "grid":
        strategy["points"] = 2  # 2**6 = 64 points over the course space's 6 tuned parameters
    elif kind == "coarse_to_fine":
        strategy.update(rounds=4, trials_per_round=budget // 4)  # else its defaults
    else:
        strategy["trials"] = budget
    sched = {"kind": scheduler}
    if scheduler == "asha":
        sched.update(grace_epochs=grace, reduction_factor=3)
    return {"name": f"{kind}-{scheduler}-{seed}", "data": {"source": "digits"},
            "space": "course", "strategy": strategy, "scheduler": sched, "epochs": epochs,
            "metric": {"name": "val_loss", "mode": "min"},
            "resources": {"cpu": 1, "concurrency": os.cpu_count() or 2}, "seed": seed}


def run(d: dict, workdir: Path) -> list[dict]:
    """Runs a sweep; returns its result events in the order the driver received them."""
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import parse_sweep

    spec = parse_sweep(d, f"<{d['name']}>")
    run_sweep(spec, workdir, stream=open(os.devnull, "w"))
    lines = (workdir / spec.name / "trials.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] in ("result", "end")]


def best_so_far_by_trial(events: list[dict]) -> list[float]:
    """After each finished trial (in finishing order): the sweep's best val_loss so far."""
    best_of: dict[str, float] = {}
    out, best = [], float("inf")
    for e in events:
        if e["event"] == "result" and e["metrics"].get("val_loss") is not None:
            v = e["metrics"]["val_loss"]
            best_of[e["trial_id"]] = min(best_of.get(e["trial_id"], v), v)
        elif e["event"] == "end":
            best = min(best, best_of.get(e["trial_id"], float("inf")))
            out.append(best)
    return out


def trials_to_reach(curve: list[float], target: float) -> int | None:
    for i, v in enumerate(curve, 1):
        if v <= target:
            return i
    return None


def epochs_to_reach(events: list[dict], target: float) -> int | None:
    n = 0
    for e in events:
        if e["event"] == "result":
            n += 1
            v = e["metrics"].get("val_loss")
            if v is not None and v <= target:
                return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--skip-asha", action="store_true")
    ap.add_argument("--skip-strategies", action="store_true")
    ap.add_argument("--grace", type=int, default=1, help="asha's grace_epochs")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help="comma-separated kinds to compare (default: all)")
    args = ap.parse_args()
    kinds = args.strategies.split(",")
    import ray

    ray.init(address="local", include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)  # its own Ray, even beside a `ray start` cluster
    tmp = Path(tempfile.mkdtemp(prefix="caviar-bench-search-"))
    try:
        curves = {k: [] for k in kinds}
        for seed in range(0 if args.skip_strategies else args.seeds):
            for kind in kinds:
                events = run(sweep_dict(kind, args.budget, seed, args.epochs), tmp)
                curves[kind].append(best_so_far_by_trial(events))
                print(f"seed {seed} {kind:15s} best val_loss {curves[kind][-1][-1]:.4f}",
                      flush=True)
        if not args.skip_strategies:
            reference = "grid" if "grid" in curves else kinds[0]
            grid_best = statistics.median(c[-1] for c in curves[reference])
            print(f"\nbudget {args.budget} trials x {args.epochs} epochs on digits, "
                  f"{args.seeds} seeds; {reference}'s median best val_loss {grid_best:.4f}")
            print(f"{'strategy':15s} {'median best':>12s} "
                  f"{f'trials to {reference} best (median)':>30s}")
            for kind in kinds:
                best = statistics.median(c[-1] for c in curves[kind])
                reach = [trials_to_reach(c, grid_best) for c in curves[kind]]
                got = sorted(r for r in reach if r is not None)
                reach_txt = (f"{statistics.median(got):.0f} ({len(got)}/{len(reach)} reached)"
                             if got else f"never (0/{len(reach)})")
                print(f"{kind:15s} {best:12.4f} {reach_txt:>30s}")
        if not args.skip_asha:
            ratios = []
            for seed in range(args.seeds):
                fifo = run(sweep_dict("random", args.budget, 100 + seed, args.epochs), tmp)
                asha = run(sweep_dict("random", args.budget, 100 + seed, args.epochs, "asha",
                                      args.grace), tmp)
                target = max(best_so_far_by_trial(fifo)[-1], best_so_far_by_trial(asha)[-1])
                ef, ea = epochs_to_reach(fifo, target), epochs_to_reach(asha, target)
                total_f = sum(e["event"] == "result" for e in fifo)
                total_a = sum(e["event"] == "result" for e in asha)
                ratios.append(ea / ef)
                print(f"seed {100 + seed}: level {target:.4f}: fifo {ef} epochs, asha {ea} "
                      f"(all epochs: fifo {total_f}, asha {total_a})", flush=True)
            print(f"asha (grace {args.grace}, reduction 3) / fifo epochs to the same best: "
                  f"median {statistics.median(ratios):.2f} (goal <= 0.5)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
