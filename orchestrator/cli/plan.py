"""``caviar plan``: panda or caviar, from one trial measured here or on a cluster."""

from __future__ import annotations

import json
import sys
import textwrap

from orchestrator.cli._common import (
    UsageError,
    add_address,
    add_command,
    add_option,
    json_safe,
)
from orchestrator.panda.plan import (
    DEFAULT_HOURS,
    MIN_SEARCH_TRIALS,
    SWEEP_STARTUP_SECONDS,
    TRIAL_OVERHEAD_SECONDS,
)
from searchspaces.errors import EXIT_OK


def _size(n: float | None) -> str:
    return "not reported" if n is None else f"{n / 2**20:,.0f} MiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never (no trial fits)"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min" if seconds < 7200 else f"{seconds / 3600:.3g} h"


def _figures(p: dict) -> list[str]:
    m, free, w, r = p["measured"], p["free"], p["as_written"], p["resources"]
    limits = ", ".join(f"{k} {v}" for k, v in p["slots_by"].items() if v is not None)
    config = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in p["trial_config"].items())
    gpu = (f"; peak CUDA {_size(m['peak_cuda_bytes'])} of {_size(m['gpu_total_bytes'])} "
           f"({m['gpu_name']}): {p['gpu_fraction']:g} of a GPU fits its memory"
           if m["device"] == "cuda" else "")
    bound = " (an upper bound: asha stops poor trials early)" if w["upper_bound"] else ""
    where = "this machine" if p["where"] == "local" else p["where"]
    rows = [
        ("one trial", f"cpu {r['cpu']:g}, gpu {r['gpu']:g}; on {m['device']} with "
         f"{m['threads']} torch thread(s); {m['train_rows']:,} training rows"),
        ("its config", config),
        ("one epoch", f"{m['epoch_seconds']:.3g} s (timed after a warm-up epoch)"),
        ("one trial", f"{_duration(p['trial_seconds'])} ({p['epochs']} epochs, and "
         f"{TRIAL_OVERHEAD_SECONDS:g} s a sweep adds per trial)"),
        ("peak memory", f"{_size(m['peak_rss_bytes'])} RSS{gpu}"),
        ("free now", f"{free['cpu']:g} CPU, {free['gpu']:g} GPU, "
         f"{_size(free['memory_bytes'])} memory"),
        ("at once", f"{p['slots']} trial(s) (by {limits})"),
        ("as written", f"{w['budget']} trials ({w['strategy']}) in {w['waves']} wave(s) of "
         f"{w['slots']}: {_duration(w['hours'] and w['hours'] * 3600)}, "
         f"{SWEEP_STARTUP_SECONDS:g} s of start-up included{bound}"),
        (f"in {p['hours']:g} h", f"{p['trials_that_fit']:,} trials fit"),
    ]
    return [f"caviar plan: sweep {p['sweep']!r} ({p['file']}), measured on {where} "
            f"(node {m['node']})"] + [textwrap.fill(text, 100, initial_indent=f"  {label:<12} ",
                                                    subsequent_indent=" " * 15)
                                      for label, text in rows]


def _advice(p: dict) -> list[str]:
    r = p["recommendation"]
    lines = ["", f"verdict: {p['verdict']}: {p['why']}."]
    if p["verdict"] == "panda":
        return lines + [f"babysit one model: one run of {p['epochs']} epochs takes "
                        f"{_duration(r['run_seconds'])}.", f"  {r['command']}"]
    lines.append(f"run {r['parallel_trials']} trials in parallel: {r['budget']} trials, "
                 f"{r['note']}, in about {_duration(r['hours'] * 3600)}:")
    if r["note"] != "the sweep as written":
        lines += ["  # in the sweep file:"] + [f"  {s}" for s in r["snippet"].splitlines()]
    return lines + [f"  {r['command']}"]


def cmd_plan(args) -> int:
    from orchestrator.panda.plan import plan
    from orchestrator.sweep.spec import load_sweep

    if not 0 < args.hours < 24 * 365:  # NaN and inf too
        raise UsageError(f"--hours: the wall-clock target must be > 0 and under a year, got "
                         f"{args.hours:g}")
    result = plan(load_sweep(args.file), address=args.address, hours=args.hours,
                  stream=sys.stderr)
    if args.json:
        print(json.dumps(json_safe(result)))
    else:
        print("\n".join(_figures(result) + _advice(result)))
    return EXIT_OK


def add_plan(sub, common) -> None:
    p = add_command(
        sub, common, "plan", cmd_plan, "say panda or caviar for a sweep",
        description="Time one epoch of the sweep's net on its data (its space's defaults, "
        "else the centre of each range) as a Ray task holding one trial's resources, here "
        "or on a cluster node, after a warm-up epoch; measure the trial's peak memory (RSS, "
        "and CUDA memory on a GPU); read the cluster's free CPUs, GPUs and memory. From "
        "those: how many trials fit at once (on a GPU, at the share of a GPU that fits "
        "their memory), how long the sweep takes as written, and how many trials fit in "
        "--hours. The verdict is panda (babysit one model) when fewer than 2 trials fit at "
        f"once or fewer than {MIN_SEARCH_TRIALS} (two rounds of eight, the smallest "
        "coarse-to-fine search) fit in --hours; else caviar, with the parallel trials and "
        "a strategy and budget that fit --hours. Prints the figures, the verdict and what to run.",
        epilog="Exit codes: 0 done, 1 failure, 2 bad input.")
    add_option(p, "sweep")
    p.add_argument("--hours", type=float, default=DEFAULT_HOURS,
                   help="the wall-clock target for the search, in hours (default: "
                   f"{DEFAULT_HOURS:g}, the "
                   "course's 'a fixed time, like one day')")
    add_option(p, "--json", "print one JSON object with every figure, the verdict and the "
               "recommendation instead of the report")
    add_address(p, "a Ray cluster to measure a trial on and read free resources from")
