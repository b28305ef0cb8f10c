"""Trainer speed: samples/second of ``models.train.fit`` against a bare PyTorch loop.

Both train the same net (the course's BN MLP) on the same in-memory data with
the same batch size and optimizer, alternating, after a warm-up (torch's first
run in a process is several times slower). fit is timed twice: its training
passes (the bare loop's work, with fit's shuffling, learning-rate decay and
loss bookkeeping), and the whole call with the per-epoch validation a bare
loop does not do. Goal: ratio >= 0.95 on CPU.

    python benchmarks/bench_trainer.py [--rows 20000] [--epochs 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.config import HParams, MLPConfig
from models.data import DataSpec, load
from models.net import MLP
from models.train import fit


def bare_loop(data, model_config: MLPConfig, hp: HParams, epochs: int, seed: int) -> float:
    """The loop a person writes by hand; returns samples/second."""
    torch.manual_seed(seed)
    model = MLP(data.n_features, data.n_classes, model_config)
    opt = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum)
    x = torch.as_tensor(data.x_train)
    y = torch.as_tensor(data.y_train)
    n, bs = len(x), hp.batch_size
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n - (n % bs == 1), bs):
            idx = order[i:i + bs]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return n * epochs / (time.perf_counter() - t0)


def caviar_fit(data, model_config: MLPConfig, hp: HParams, epochs: int, seed: int):
    """Returns (samples/second of fit's training passes, samples/second of the whole call).

    The first is what the bare loop does (mini-batch steps); the second adds
    fit's per-epoch validation, which a bare loop skips.
    """
    t0 = time.perf_counter()
    result = fit(data, model_config, hp, epochs=epochs, seed=seed, device="cpu")
    whole = time.perf_counter() - t0
    train_seconds = sum(m["train_seconds"] for m in result.history)
    samples = len(data.x_train) * epochs
    return samples / train_seconds, samples / whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000, help="synthetic rows (0: digits)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = DataSpec() if args.rows == 0 else DataSpec(
        source="synthetic", size=args.rows, n_features=64, classes=10)
    data = load(spec)
    mc = MLPConfig(hidden_units=75, layers=2)
    hp = HParams(optimizer="momentum", lr=0.05, momentum=0.9, batch_size=args.batch_size)
    bare_loop(data, mc, hp, 1, 0)  # warm-up
    caviar_fit(data, mc, hp, 1, 0)
    bare, ours, whole = [], [], []
    for r in range(args.repeats):  # alternate, so drift on a shared machine hits both
        bare.append(bare_loop(data, mc, hp, args.epochs, r))
        train_sps, whole_sps = caviar_fit(data, mc, hp, args.epochs, r)
        ours.append(train_sps)
        whole.append(whole_sps)
    b, o, w = statistics.median(bare), statistics.median(ours), statistics.median(whole)
    print(f"data: {spec.source} ({len(data.x_train)} training rows, {data.n_features} features), "
          f"batch {args.batch_size}, {args.epochs} epochs x {args.repeats} repeats, "
          f"{args.threads} thread(s)")
    print(f"bare PyTorch loop : {b:12,.0f} samples/s (median)")
    print(f"caviar fit        : {o:12,.0f} samples/s (median, training passes)")
    print(f"caviar fit, whole : {w:12,.0f} samples/s (median, per-epoch validation included)")
    print(f"ratio fit/bare    : {o / b:.3f}  (goal >= 0.95)")
    print(f"ratio whole/bare  : {w / b:.3f}  (what per-epoch validation costs on top)")


if __name__ == "__main__":
    main()
