"""Search quality on a public benchmark: LCBench's surrogate (YAHPO Gym), many tasks.

Each strategy picks ``--trials`` configurations of LCBench's space (funnel MLPs
trained with SGD + momentum for 52 epochs) for each task and seed; the surrogate
answers each configuration's val_accuracy after 52 epochs and its training time.
The strategies are driven as Ray Tune drives a Searcher, with ``--workers``
trials running at once in simulated time: the trial whose (simulated) training
ends first is completed first, and a strategy that answers "not now" (None)
leaves the worker idle until the next trial ends.

Peers in the same run: Optuna's TPESampler sequentially (one worker: its best
case) and with the workers through its constant-liar option, and Optuna's
RandomSampler, each on LCBench's own space as an Optuna user writes it.

Prints, over the tasks: each strategy's mean rank (1 = best; per task the mean
over seeds of the rank of its best val_accuracy), its win share against each other
strategy (share of task x seed pairs where its best is higher; ties count half),
and the share of worker time left idle. ``--stragglers K`` makes one trial in
every 12 take K times its time (the idle share with stragglers).

Develop on the dev tasks only (``dev_tasks.txt``); the others are held out for
acceptance. Needs the bench extra: ``pip install -e '.[bench]'`` (onnxruntime).

    python benchmarks/bench_lcbench.py [--tasks dev|heldout|all] [--trials 48]
        [--workers 4] [--seeds 5] [--strategies coarse_to_fine,optuna_tpe,...]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

LCBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "lcbench"
EPOCHS = 52
METRIC = "val_accuracy"  # maximised, after the last epoch
INPUTS = ("epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers",
          "max_units", "max_dropout")
# LCBench's space (config_space.json) in caviar's format: momentum on its linear scale,
# as the benchmark declares it ("_reverse_log" strategies put it on the course's 1-β).
SPACE = {"parameters": {
    "batch_size": {"scale": "log", "type": "int", "low": 16, "high": 512},
    "learning_rate": {"scale": "log", "low": 1e-4, "high": 1e-1},
    "momentum": {"scale": "linear", "low": 0.1, "high": 0.99},
    "weight_decay": {"scale": "linear", "low": 1e-5, "high": 0.1},
    "num_layers": {"scale": "linear", "type": "int", "low": 1, "high": 5},
    "max_units": {"scale": "log", "type": "int", "low": 64, "high": 1024},
    "max_dropout": {"scale": "linear", "low": 0.0, "high": 1.0},
}}
CAVIAR = ("random", "quasi_random", "grid", "tpe", "coarse_to_fine")
OPTUNA = ("optuna_tpe_sequential", "optuna_tpe", "optuna_random")
STRAGGLER_EVERY = 12


class Surrogate:
    """YAHPO Gym's LCBench surrogate through onnxruntime, one CPU thread."""

    def __init__(self, folder: Path = LCBENCH):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.codes = json.loads((folder / "encoding.json").read_text())["OpenML_task_id"]

    def __call__(self, task: str, config: dict) -> tuple[float, float]:
        """(val_accuracy, training seconds) of ``config`` after the last epoch."""
        x_cont = np.array([[EPOCHS if k == "epoch" else config[k] for k in INPUTS]],
                          dtype=np.float32)
        x_cat = np.array([[self.codes[task]]], dtype=np.int32)
        out = self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})[0][0]
        return float(out[1]), max(float(out[0]), 1e-3)


def tasks(which: str, folder: Path = LCBENCH) -> list[str]:
    dev = (folder / "dev_tasks.txt").read_text().split()
    if which == "dev":
        return dev
    space = json.loads((folder / "config_space.json").read_text())
    every = next(h["choices"] for h in space["hyperparameters"]
                 if h["name"] == "OpenML_task_id")
    return every if which == "all" else [t for t in every if t not in dev]


# -- the players: each as ask(trial_id) -> config | None | "FINISHED", and tell ----------


def settings_of(name: str) -> tuple[str, dict]:
    """``coarse_to_fine[pick=uniform;zoom_after=1]`` -> the kind and the keys given."""
    kind, _, rest = name.partition("[")
    keys = {}
    for item in filter(None, rest.rstrip("]").split(";")):
        key, _, value = item.partition("=")
        try:
            keys[key] = json.loads(value)
        except ValueError:
            keys[key] = value
    return kind, keys


def caviar_player(name: str, trials: int, seed: int):
    from ray.tune.search import Searcher

    from orchestrator.strategies import searcher

    kind, keys = settings_of(name)
    space = json.loads(json.dumps(SPACE))
    if kind.endswith("_reverse_log"):
        kind = kind.removesuffix("_reverse_log")
        space["parameters"]["momentum"]["scale"] = "reverse_log"
    section = {"kind": kind, **keys}
    if kind == "grid":
        section["points"] = 2  # 2**7 = 128: the grid's first 48 (the space's corners)
    elif kind == "coarse_to_fine":
        section.setdefault("trials_per_round", math.ceil(trials / section.get("rounds", 3)))
    else:
        section["trials"] = trials
    s = searcher(section, space, metric=METRIC, mode="max", seed=seed)

    def ask(tid):
        config = s.suggest(tid)
        if config == Searcher.FINISHED:
            return "FINISHED"
        return config and {k: v for k, v in config.items() if not k.startswith("_")}

    return ask, lambda tid, value: s.on_trial_complete(tid, {METRIC: value})


def optuna_player(kind: str, seed: int, workers: int):
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    dists = {}
    for name, p in SPACE["parameters"].items():
        cls = IntDistribution if p.get("type") == "int" else FloatDistribution
        dists[name] = cls(p["low"], p["high"], log=p["scale"] == "log")
    if kind == "optuna_random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    asked = {}

    def ask(tid):
        asked[tid] = study.ask(dists)
        return dict(asked[tid].params)

    return ask, lambda tid, value: study.tell(asked.pop(tid), value)


# -- the simulation ---------------------------------------------------------------------


def simulate(ask: Callable, tell: Callable, evaluate: Callable, trials: int, workers: int,
             straggle: float = 1.0) -> dict:
    """Runs one search in simulated time; returns its best value and the idle share."""
    clock, idle, started, best, finished = 0.0, 0.0, 0, -math.inf, False
    running: list[tuple[float, int, str, float]] = []
    while True:
        while not finished and len(running) < workers and started < trials:
            tid = f"t{started:05d}"
            config = ask(tid)
            if config is None:
                break  # "not now": the worker waits for the next trial to end
            if config == "FINISHED":
                finished = True
                break
            value, seconds = evaluate(config)
            if started % STRAGGLER_EVERY == STRAGGLER_EVERY - 1:
                seconds *= straggle
            heapq.heappush(running, (clock + seconds, started, tid, value))
            started += 1
        if not running:
            break
        end, _, tid, value = heapq.heappop(running)
        idle += (workers - len(running) - 1) * (end - clock)
        clock = end
        tell(tid, value)
        best = max(best, value)
    return {"best": best, "idle": idle / (workers * clock) if clock else 0.0,
            "trials": started}


def player(name: str, trials: int, seed: int, workers: int):
    if name in OPTUNA:
        return optuna_player(name, seed, 1 if name.endswith("_sequential") else workers)
    return caviar_player(name, trials, seed)


def run(names: list[str], task_ids: list[str], trials: int, workers: int, seeds: int,
        straggle: float, progress=print) -> dict:
    """name -> task -> list of per-seed results."""
    surrogate, out = Surrogate(), {n: {} for n in names}
    for i, task in enumerate(task_ids):
        t0 = time.perf_counter()
        for name in names:
            w = 1 if name.endswith("_sequential") else workers
            out[name][task] = [simulate(*player(name, trials, seed, workers),
                                        lambda c, task=task: surrogate(task, c),
                                        trials, w, straggle) for seed in range(seeds)]
        progress(f"  task {task} ({i + 1}/{len(task_ids)}): {time.perf_counter() - t0:.1f} s")
    return out


# -- the tables -------------------------------------------------------------------------


def ranks(values: dict[str, float]) -> dict[str, float]:
    """1 = the highest value; ties share their mean rank."""
    order = sorted(values, key=lambda n: -values[n])
    out, i = {}, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for n in order[i:j + 1]:
            out[n] = (i + j) / 2 + 1
        i = j + 1
    return out


def mean_ranks(results: dict) -> dict[str, float]:
    names = list(results)
    task_ids = list(next(iter(results.values())))
    per_task = []
    for task in task_ids:
        n_seeds = len(results[names[0]][task])
        seed_ranks = [ranks({n: results[n][task][s]["best"] for n in names})
                      for s in range(n_seeds)]
        per_task.append({n: statistics.mean(r[n] for r in seed_ranks) for n in names})
    return {n: statistics.mean(t[n] for t in per_task) for n in names}


def win_share(results: dict, a: str, b: str) -> float:
    wins = []
    for task, runs in results[a].items():
        for ra, rb in zip(runs, results[b][task]):
            wins.append(1.0 if ra["best"] > rb["best"] else 0.5 if ra["best"] == rb["best"]
                        else 0.0)
    return statistics.mean(wins)


def idle_share(results: dict, name: str) -> float:
    return statistics.mean(r["idle"] for runs in results[name].values() for r in runs)


def table(results: dict) -> str:
    mr = mean_ranks(results)
    names = sorted(results, key=mr.get)
    short = {n: n.replace("optuna_", "o_").replace("coarse_to_fine", "c2f")[:9] for n in names}
    head = f"{'strategy':<30}{'mean rank':>10}{'idle':>7}  " + " ".join(
        f"{short[n]:>9}" for n in names)
    lines = [head, "-" * len(head)]
    for a in names:
        wins = " ".join(f"{'':>9}" if a == b else f"{win_share(results, a, b):>9.2f}"
                        for b in names)
        lines.append(f"{a:<30}{mr[a]:>10.2f}{idle_share(results, a):>7.2f}  {wins}")
    lines.append("(win share: the row's strategy against the column's, over task x seed)")
    return "\n".join(lines)


def main(argv=None) -> None:
    import optuna

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", choices=("dev", "heldout", "all"), default="dev")
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--stragglers", type=float, default=1.0, metavar="K",
                    help="one trial in every 12 takes K times its time (default 1: none)")
    ap.add_argument("--strategies", default=",".join(CAVIAR + OPTUNA),
                    help="comma-separated; caviar's kinds (a _reverse_log suffix puts "
                         "momentum on the course's 1-β scale; keys in brackets, e.g. "
                         "'coarse_to_fine[pick=uniform;zoom_after=1]') and "
                         + ", ".join(OPTUNA))
    ap.add_argument("--json", metavar="PATH", help="also write every result here")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = args.strategies.split(",")
    task_ids = tasks(args.tasks)
    print(f"LCBench surrogate: {len(task_ids)} {args.tasks} tasks x {args.seeds} seeds, "
          f"{args.trials} trials, {args.workers} workers, stragglers x{args.stragglers:g}")
    t0 = time.perf_counter()
    results = run(names, task_ids, args.trials, args.workers, args.seeds, args.stragglers)
    print(table(results))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
