"""``caviar train``: one configuration trained here, without Ray, a line per epoch."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator

from orchestrator.cli._common import UsageError, add_command, add_option, json_safe
from orchestrator.cli.spaces import load_any, parse_sets
from searchspaces import SearchSpace
from searchspaces.errors import EXIT_OK


def _plan(args, space: SearchSpace, sweep) -> tuple[dict, object, str | None, int, int]:
    """(config, data spec, its base folder, epochs, seed): the sweep's, or a space's
    centre on the digits data, with the command line's changes."""
    from models.data import DataSpec

    overrides = parse_sets(args.set, space)
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if sweep is not None:
        return (sweep.trial_config(overrides), sweep.data, sweep.base_dir,
                args.epochs or sweep.epochs, sweep.seed if args.seed is None else args.seed)
    return ({**space.centre(), **overrides}, DataSpec(), None, args.epochs or 20,
            0 if args.seed is None else args.seed)


def _progress(epochs: int, stop: threading.Event):
    def progress(m: dict, _run) -> None:
        print(f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
              f"val_loss {m['val_loss']:.4f}  val_accuracy {m['val_accuracy']:.4f}  "
              f"lr {m['lr']:.3g}  {m['samples_per_second']:,.0f} samples/s", file=sys.stderr)
        if stop.is_set():  # a Ctrl-C whose KeyboardInterrupt was lost: stop here
            raise KeyboardInterrupt

    return progress


@contextlib.contextmanager
def _ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt at once, as always, and is also remembered: CPython
    drops an exception raised while it runs a __del__ or a GC callback (seen once here:
    training went on after SIGINT), so the next epoch boundary raises it again."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        stop.set()
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, before)


def cmd_train(args) -> int:
    """Train one configuration locally, without Ray. Tuned parameters not --set take their
    default, else the centre of their range in unit space. A space file alone trains on
    the digits data. Prints a line per epoch on stderr and, last, one JSON line with the
    result on stdout."""
    from models.config import split_config
    from models.data import load as load_data
    from models.train import fit, holdout_scores

    _, space, sweep = load_any(args.file)
    config, data_spec, base_dir, epochs, seed = _plan(args, space, sweep)
    try:
        model_config, hparams = split_config(config)
    except ValueError as e:
        raise UsageError(f"{args.file}: {e}") from None
    t0 = time.perf_counter()
    data = load_data(data_spec, base_dir)
    print(f"caviar: data {data_spec.source}: {len(data.x_train)} train / {len(data.x_val)} val "
          f"/ {len(data.x_test)} test rows, {data.n_features} features, {data.n_classes} "
          f"classes", file=sys.stderr)
    print("caviar: config " + json.dumps(config), file=sys.stderr)
    # A trial gets one torch thread per CPU it holds: the same here, so this run repeats a
    # trial's to the last digit (another thread count sums in another order).
    threads = args.threads or (max(1, int(sweep.resources.cpu)) if sweep is not None else 1)
    with _ctrl_c() as stop:
        result = fit(data, model_config, hparams, epochs=epochs, seed=seed,
                     device=args.device, callback=_progress(epochs, stop),
                     num_threads=threads)
    m = result.metrics
    print(json.dumps(json_safe({
        "status": result.status, "epochs": result.epochs, "train_loss": m.get("train_loss"),
        "val_loss": m.get("val_loss"), "val_accuracy": m.get("val_accuracy"),
        "test_accuracy": holdout_scores(result.model, data)[1],
        "seconds": round(time.perf_counter() - t0, 3), "seed": result.seed, "config": config})))
    return EXIT_OK


def add_train(sub, common) -> None:
    p = add_command(sub, common, "train", cmd_train, "train one configuration, without Ray")
    p.add_argument("file", metavar="SWEEP_OR_SPACE", help="a sweep or search space YAML file")
    add_option(p, "--set", "set one hyperparameter, e.g. --set lr=0.01 (repeatable)")
    add_option(p, "--epochs", "epochs to train (default: the sweep's, else 20)")
    add_option(p, "--seed", "seed for initialisation and mini-batch order (default: the "
               "sweep's, else 0)")
    add_option(p, "--device", "auto (the GPU when there is one), cpu, cuda or cuda:N",
               default="auto")
    add_option(p, "--threads", "torch CPU threads (default: as a trial gets, one per CPU of "
               "the sweep's resources.cpu; 1 for a space file)")
