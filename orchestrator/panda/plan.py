"""The planner: panda or caviar, from one trial measured where the sweep would run.

The course's choice: with few resources for what one model costs, babysit one model
(panda); with plenty, train many in parallel (caviar). ``plan`` measures one trial of
the sweep (``measure``: its median configuration, one timed epoch, peak memory) as a
Ray task holding a trial's resources, so "here" (Ray in-process) and "a cluster node"
(``address``) are the same code, reads what the cluster has free, and hands both to
``verdict``: plain arithmetic, tested without Ray.

Every figure is an estimate from one trial measured alone: trials sharing a machine
or a GPU run somewhat slower than that.
"""

from __future__ import annotations

import math
import os
import resource
import socket
import time
from dataclasses import asdict, dataclass

import yaml

DEFAULT_HOURS = 24.0  # the course's "a fixed time, like one day"
# Two rounds of eight: the smallest coarse-to-fine search that zooms in once, on a box
# set by its top two trials (keep: 0.25). Fewer trials than that are not a search.
MIN_SEARCH_TRIALS = 16
MIN_ROUND_TRIALS = 8  # a round's trials, so its top quarter is at least two
MAX_ROUNDS = 4  # as many as the search benchmark ran (4 rounds of 16: docs/performance.md)
# What a sweep adds to each trial's training (starting it, reporting every epoch, the
# gaps between trials): 0.5 s per trial per slot was measured on 2 cores with Ray's
# defaults, benchmarks/bench_overhead.py's figures are 0.04-0.08 s (docs/performance.md).
# The larger, to be safe.
TRIAL_OVERHEAD_SECONDS = 0.5
# What a sweep spends outside its trials (Ray's start, the MLflow store, the best model,
# plots): digits' 18 s sweep spent about 8 s so on 2 cores here.
SWEEP_STARTUP_SECONDS = 10.0
GPU_MEMORY_SHARE = 0.9  # of a GPU's memory its packed trials may fill; the rest is slack
# Each trial process's CUDA context, which torch's allocator figures do not count: a
# few hundred MiB on recent GPUs (an estimate: not measured on this project's machines).
CUDA_CONTEXT_BYTES = 512 * 2**20
# More trials than this on one GPU share its compute, not just its memory: each would
# run much slower than it was measured alone.
MAX_TRIALS_PER_GPU = 8
SETTLE_SECONDS = 1.0  # how long free resources are watched for a finished task's share


@dataclass(frozen=True)
class Measurement:
    """One trial measured on the node Ray placed it on."""

    epoch_seconds: float  # one epoch (training and validation), after a warm-up epoch
    peak_rss_bytes: int  # the trial process's peak resident memory
    device: str = "cpu"  # cpu | cuda
    threads: int = 1  # torch's threads: one per CPU the trial holds
    train_rows: int = 0
    node: str = ""  # the host it ran on
    peak_cuda_bytes: int = 0  # torch's caching allocator at its peak (cuda only)
    gpu_total_bytes: int = 0  # the GPU's memory (cuda only)
    gpu_name: str = ""


@dataclass(frozen=True)
class Free:
    """What the cluster has free for trials, summed over its nodes."""

    cpu: float
    gpu: float = 0.0
    memory_bytes: float | None = None  # Ray's schedulable memory; None: not reported


def _device():
    """The GPU Ray assigned this task, else the CPU (as a trial picks it); outside Ray,
    this machine's GPU if it has one."""
    import ray
    import torch

    assigned = ray.get_gpu_ids() if ray.is_initialized() else [0]
    return torch.device("cuda" if assigned and torch.cuda.is_available() else "cpu")


def measure(data, config: dict, threads: int, seed: int = 0) -> Measurement:
    """Times one epoch of ``config`` on ``data`` and reads this process's peak memory.

    Runs in a fresh Ray worker holding a trial's resources. The first epoch in a fresh
    process is several times slower than later ones (torch initialises lazily), so one
    warm-up epoch is trained before the timed one.
    """
    import torch

    from models.config import split_config
    from models.train import TrainingRun

    torch.set_num_threads(threads)
    device = _device()
    run = TrainingRun(data, *split_config(config), seed, device)
    run.train_epoch()  # warm-up
    seconds = run.train_epoch()["epoch_seconds"]
    cuda = {}
    if device.type == "cuda":
        # Reserved, not allocated: the caching allocator holds that much from the GPU.
        cuda = {"peak_cuda_bytes": int(torch.cuda.max_memory_reserved()),
                "gpu_total_bytes": int(torch.cuda.get_device_properties(0).total_memory),
                "gpu_name": torch.cuda.get_device_name(0)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return Measurement(seconds, rss, device.type, threads, len(data.x_train),
                       socket.gethostname(), **cuda)


def gpu_fraction(m: Measurement) -> float | None:
    """The largest 1/k of a GPU whose memory fits k such trials (None on the CPU)."""
    if m.device != "cuda" or not m.gpu_total_bytes:
        return None
    per_trial = m.peak_cuda_bytes + CUDA_CONTEXT_BYTES
    k = int(GPU_MEMORY_SHARE * m.gpu_total_bytes // per_trial)
    return 1.0 / min(max(k, 1), MAX_TRIALS_PER_GPU)


def slots_by(m: Measurement, free: Free, cpu: float, gpu: float,
             concurrency: int | None) -> dict[str, int | None]:
    """How many trials of ``cpu`` CPUs and ``gpu`` GPUs fit at once by each limit
    (None: no limit from it)."""
    return {"cpu": _fits(free.cpu, cpu) if cpu > 0 else None,
            "gpu": _fits(free.gpu, gpu) if gpu > 0 else None,
            "memory": int(free.memory_bytes // m.peak_rss_bytes)
            if free.memory_bytes is not None and m.peak_rss_bytes else None,
            "concurrency": concurrency}


def _fits(free: float, each: float) -> int:
    """Whole trials of ``each`` in ``free``: 3 / 0.1 is 29.999..., so the float's noise is
    rounded off before the floor."""
    return math.floor(round(free / each, 6))


def _slots(limits: dict) -> int:
    return min(v for v in limits.values() if v is not None)


def _waves(strategy, budget: int, slots: int) -> int:
    """Rounds of ``slots`` trials at once a budget takes; a coarse-to-fine round waits
    for all its trials before the next starts."""
    if strategy.kind == "coarse_to_fine":
        return strategy.rounds * math.ceil(strategy.trials_per_round / slots)
    return math.ceil(budget / slots)


def fit_strategy(slots: int, fit_waves: int) -> dict:
    """A search filling ``fit_waves`` waves of ``slots`` trials: coarse to fine when a
    few rounds of at least MIN_ROUND_TRIALS trials fit (each round whole waves: a round
    waits for its last trial), else random."""
    round_waves = math.ceil(max(MIN_ROUND_TRIALS, slots) / slots)
    rounds = min(MAX_ROUNDS, fit_waves // round_waves)
    if rounds >= 2:
        return {"kind": "coarse_to_fine", "rounds": rounds,
                "trials_per_round": slots * (fit_waves // rounds)}
    return {"kind": "random", "trials": slots * fit_waves}


def _hours(waves: int, trial_seconds: float) -> float:
    """A sweep's wall-clock hours: its start-up, then ``waves`` trials one after another."""
    return (SWEEP_STARTUP_SECONDS + waves * trial_seconds) / 3600


def _waves_in(hours: float, trial_seconds: float) -> int:
    """Waves of trials that fit in ``hours`` after the sweep's start-up."""
    return max(0, math.floor((hours * 3600 - SWEEP_STARTUP_SECONDS) / trial_seconds))


def _caviar(spec, slots: int, share: float, trial_seconds: float, hours: float,
            address: str | None) -> dict:
    """How many in parallel, and the strategy and budget that fit ``hours``: the sweep's
    own when it fits (judged by its upper bound: every trial runs all its epochs), else
    one that fills the hours."""
    from orchestrator.strategies import to_dict  # Ray Tune: not at import, the CLI reads this

    waves = _waves(spec.strategy, spec.budget, slots)
    if _hours(waves, trial_seconds) <= hours:
        strategy, budget, note = to_dict(spec.strategy), spec.budget, "the sweep as written"
    else:
        strategy = _keep_settings(to_dict(spec.strategy), fit_strategy(
            slots, _waves_in(hours, trial_seconds)))
        budget = strategy.get("trials") or strategy["rounds"] * strategy["trials_per_round"]
        waves = budget // slots
        note = f"fitted to {hours:g} h"
    resources = {"cpu": _plain(spec.resources.cpu), "gpu": _plain(share), "concurrency": slots}
    snippet = yaml.safe_dump({"strategy": strategy, "resources": resources},
                             default_flow_style=None, sort_keys=False, width=1000)
    return {"parallel_trials": slots, "strategy": strategy, "budget": budget, "note": note,
            "hours": _hours(waves, trial_seconds), "resources": resources,
            "snippet": snippet, "command": _sweep_command(spec, address)}


def _plain(x: float) -> float | int:
    """1.0 as 1: how a sweep file would say it."""
    return int(x) if float(x).is_integer() else x


def _keep_settings(written: dict, fitted: dict) -> dict:
    """The fitted budget in the sweep's own strategy where it has the same knobs (its
    keep, margin, start; quasi-random or TPE instead of random), else the fitted one."""
    if written["kind"] == fitted["kind"] == "coarse_to_fine":
        return {**written, **fitted}
    if fitted["kind"] == "random" and "trials" in written:
        return {**written, "trials": fitted["trials"]}
    return fitted


def _panda(spec, m: Measurement, address: str | None) -> dict:
    run_seconds = m.epoch_seconds * spec.epochs
    return {"command": _command("caviar babysit start", spec, address),
            "run_seconds": run_seconds, "run_hours": run_seconds / 3600}


def _sweep_command(spec, address: str | None) -> str:
    """``caviar sweep``, or from a Ray Client address (which a sweep refuses) ``caviar
    submit`` to the same head's Jobs API (Ray's default dashboard port)."""
    from urllib.parse import urlsplit

    from orchestrator.cluster.connect import client_address

    if address and client_address(address):
        return f"caviar submit {spec.source} --address http://{urlsplit(address).hostname}:8265"
    return _command("caviar sweep", spec, address)


def _command(what: str, spec, address: str | None) -> str:
    return f"{what} {spec.source}" + (f" --address {address}" if address else "")


def verdict(spec, m: Measurement, free: Free, hours: float = DEFAULT_HOURS,
            address: str | None = None) -> dict:
    """The figures behind the choice, the verdict (``panda`` or ``caviar``), why, and
    what to run.

    Panda when fewer than two trials fit at once (a search would run its trials one
    after another) or fewer than MIN_SEARCH_TRIALS fit in ``hours``; else caviar.
    On a GPU, trials are counted at the share of a GPU that fits their memory.

    Args:
        spec: the sweep (its resources, epochs, strategy, scheduler).
        m: one trial measured (``measure``).
        free: what the cluster has free.
        hours: the wall-clock target.
        address: the cluster the commands it prints should name (None: here).
    """
    r, fraction = spec.resources, gpu_fraction(m)
    share = fraction if r.gpu > 0 and fraction else r.gpu
    limits = slots_by(m, free, r.cpu, share, r.concurrency)
    slots = _slots(limits)
    written = _slots(slots_by(m, free, r.cpu, r.gpu, r.concurrency))
    trial_seconds = m.epoch_seconds * spec.epochs + TRIAL_OVERHEAD_SECONDS
    waves = _waves(spec.strategy, spec.budget, written) if written else None
    fit = slots * _waves_in(hours, trial_seconds)
    out = {"sweep": spec.name, "file": spec.source, "measured": asdict(m),
           "free": asdict(free), "epochs": spec.epochs, "trial_seconds": trial_seconds,
           "resources": r.to_dict(), "gpu_fraction": share if r.gpu > 0 else None,
           "slots": slots, "slots_by": limits,
           "as_written": {"strategy": spec.strategy.kind, "budget": spec.budget,
                          "slots": written, "waves": waves,
                          "hours": _hours(waves, trial_seconds) if waves else None,
                          "upper_bound": spec.scheduler.kind == "asha"},
           "hours": hours, "trials_that_fit": fit, "min_search_trials": MIN_SEARCH_TRIALS}
    out["verdict"], out["why"] = _decide(slots, fit, hours)
    out["recommendation"] = _panda(spec, m, address) if out["verdict"] == "panda" else \
        _caviar(spec, slots, share, trial_seconds, hours, address)
    return out


def _decide(slots: int, fit: int, hours: float) -> tuple[str, str]:
    """(verdict, why)."""
    if slots < 2:
        at_once = "no trial fits" if slots == 0 else "only one trial fits"
        return "panda", f"{at_once} at once: a search would run its trials one after another"
    if fit < MIN_SEARCH_TRIALS:
        return "panda", (f"only {fit:,} trials fit in {hours:g} h, fewer than the "
                         f"{MIN_SEARCH_TRIALS} a search needs to zoom in once")
    return "caviar", (f"{slots} trials run at once and {fit:,} fit in {hours:g} h (a search "
                      f"needs {MIN_SEARCH_TRIALS})")


def free_resources(settle: float = SETTLE_SECONDS) -> Free:
    """What the connected cluster has free, summed over its nodes: the most seen within
    ``settle`` seconds, or at once when all of it is free. Ray counts a finished task's
    share as free again only a moment after the task ends (up to 0.1 s here), so one
    reading right after a task would miss it."""
    import ray

    total = ray.cluster_resources()
    deadline = time.monotonic() + settle
    seen = ray.available_resources()
    while (seen.get("CPU", 0) < total.get("CPU", 0) or seen.get("GPU", 0) < total.get("GPU", 0)) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
        now = ray.available_resources()
        seen = {k: max(seen.get(k, 0), now.get(k, 0)) for k in {*seen, *now}}
    return Free(seen.get("CPU", 0.0), seen.get("GPU", 0.0), seen.get("memory"))


def measure_on_ray(spec, data) -> Measurement:
    """``measure`` as a Ray task holding one trial's resources, in a worker of its own
    (``max_calls=1``: no earlier task's peak memory in its figures)."""
    import ray

    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu,
                      max_calls=1)(measure)
    threads = max(1, int(spec.resources.cpu))
    return ray.get(task.remote(data, spec.trial_config(), threads, spec.seed))


def plan(spec, address: str | None = None, hours: float = DEFAULT_HOURS,
         stream=None) -> dict:
    """Measures one trial of ``spec`` where its sweep would run and says panda or caviar.

    Free resources are read once the measuring task is done and its share is back.
    ``stream`` (e.g. stderr) gets a line when the timing starts.

    Raises:
        SpecError: no node of the cluster can give a trial its resources.
        DataError: the sweep's data cannot be read.
    """
    from models.data import load
    from orchestrator.cluster.connect import check_resources, connect

    data = load(spec.data, spec.base_dir)  # bad data fails here, before Ray starts
    connect(address)
    check_resources(spec.resources.cpu, spec.resources.gpu, spec.source)
    where = address or os.environ.get("RAY_ADDRESS") or "local"
    if stream is not None:
        on = "this machine (Ray in-process)" if where == "local" else f"the cluster at {where}"
        print(f"caviar: timing one epoch of sweep {spec.name!r} ({len(data.x_train):,} "
              f"training rows; after a warm-up epoch) on {on}", file=stream, flush=True)
    measured = measure_on_ray(spec, data)
    free = free_resources()
    return {"where": where,
            "trial_config": spec.trial_config(),
            **verdict(spec, measured, free, hours, address)}
