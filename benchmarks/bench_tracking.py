"""What MLflow tracking costs a sweep: the same sweep with tracking on and off, in one run.

Both run on one local Ray, in one working directory, in the order off, on, on, off
(so drift on this shared machine falls on both alike); the ratio is the summed wall
seconds with tracking on over those with it off. "On" is the embedded store
(``sqlite:///<workdir>/mlflow.db``): a parent run, a child run per trial with
every epoch's metrics, the plots, summary and model as artifacts. A warm-up sweep
first creates the store and starts Ray's workers, and is not timed: a working
directory's store is made once, not per sweep. The plots are drawn either way
(they are the sweep's own outputs, logged only when tracking is on).

Run: ``python benchmarks/bench_tracking.py [--trials 40] [--epochs 10]``.
Goal (issue 4): wall time ratio <= 1.03.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from bench_overhead import make_sweep


def run(sweep: Path, workdir: Path, name: str, tracking: bool) -> float:
    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    raw = yaml.safe_load(sweep.read_text())
    raw["name"] = name
    raw["tracking"] = {"enabled": tracking}
    path = sweep.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(raw))
    spec = load_sweep(path)
    t0 = time.perf_counter()
    run_sweep(spec, workdir, stream=open(os.devnull, "w"))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=20000,
                    help="synthetic rows: sets an epoch's length (20000: ~0.1 s here)")
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="caviar-bench-"))
    try:
        sweep = tmp / "bench.yaml"
        make_sweep(sweep, args.trials, args.epochs, args.rows, args.concurrency)
        import ray

        ray.init(num_cpus=args.concurrency, include_dashboard=False, logging_level="ERROR")
        run(sweep, tmp / "w", "warmup", tracking=True)
        walls = {True: [], False: []}
        for i, tracking in enumerate((False, True, True, False)):
            walls[tracking].append(run(sweep, tmp / "w", f"run{i}", tracking))
        ray.shutdown()
        off, on = sum(walls[False]), sum(walls[True])
        print(f"{args.trials} trials x {args.epochs} epochs, {args.concurrency} cores, "
              "order off, on, on, off")
        print(f"tracking off: {' '.join(f'{w:.1f}' for w in walls[False])} s")
        print(f"tracking on : {' '.join(f'{w:.1f}' for w in walls[True])} s "
              "(embedded sqlite store)")
        print(f"wall time ratio on/off: {on / off:.3f}  (goal <= 1.03)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
