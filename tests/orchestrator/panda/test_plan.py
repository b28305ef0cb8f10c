"""``caviar plan`` (orchestrator/panda/plan.py, orchestrator/cli/plan.py).

First the verdict's arithmetic with the measured figures given as numbers (CUDA
memory too: there is no GPU here, so the GPU cases exist only as numbers). Then the
verdict flipping through real measurement on real Ray: a costlier trial (more data)
or fewer free CPUs (a one-CPU cluster) turns caviar into panda.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import assert_one_paragraph_error, caviar, run_main, sweep_dict
from ray.cluster_utils import Cluster

from orchestrator.panda.plan import (
    CUDA_CONTEXT_BYTES,
    MAX_TRIALS_PER_GPU,
    MIN_SEARCH_TRIALS,
    SWEEP_STARTUP_SECONDS,
    TRIAL_OVERHEAD_SECONDS,
    Free,
    Measurement,
    fit_strategy,
    gpu_fraction,
    verdict,
)
from orchestrator.sweep.spec import parse_sweep

GiB = 2**30
PLENTY = Free(cpu=64, gpu=0, memory_bytes=1000 * GiB)


def spec_of(**overrides):
    return parse_sweep(sweep_dict(**overrides), "s.yaml")


def cpu_trial(epoch_seconds: float = 0.1, rss: int = GiB) -> Measurement:
    return Measurement(epoch_seconds=epoch_seconds, peak_rss_bytes=rss)


def gpu_trial(peak_cuda: float, total: float = 80 * GiB) -> Measurement:
    return Measurement(epoch_seconds=0.1, peak_rss_bytes=GiB, device="cuda",
                       peak_cuda_bytes=int(peak_cuda), gpu_total_bytes=int(total))


# -- the arithmetic --------------------------------------------------------------------

@pytest.mark.parametrize("free, resources, slots, limits", [
    (Free(8, 0, 100 * GiB), {"cpu": 2}, 4, {"cpu": 4, "memory": 100}),
    (Free(8, 0, 3.5 * GiB), {"cpu": 1}, 3, {"cpu": 8, "memory": 3}),  # 1 GiB per trial
    (Free(8, 0, 100 * GiB), {"cpu": 1, "concurrency": 5}, 5, {"concurrency": 5}),
    (Free(3, 0, None), {"cpu": 0.1}, 30, {"cpu": 30, "memory": None}),  # 3 / 0.1 is 29.99..
    (Free(64, 2, 100 * GiB), {"cpu": 1, "gpu": 0.5}, 4, {"gpu": 4, "cpu": 64}),
    (Free(64, 1, 100 * GiB), {"cpu": 1, "gpu": 1}, 1, {"gpu": 1}),
])
def test_slots_are_the_tightest_of_cpu_gpu_memory_and_concurrency(free, resources, slots,
                                                                   limits):
    plan = verdict(spec_of(resources=resources), cpu_trial(), free)
    assert plan["slots"] == slots
    assert {k: plan["slots_by"][k] for k in limits} == limits


@pytest.mark.parametrize("peak_cuda, fraction", [
    (20 * GiB, 1 / 3),  # 3 x (20 GiB + the context) fit 0.9 x 80 GiB, 4 do not
    (8 * GiB, 1 / 8),
    (GiB, 1 / MAX_TRIALS_PER_GPU),  # memory would fit 40: compute caps the packing
    (100 * GiB, 1.0),  # bigger than the GPU: a whole one, the least that can be given
])
def test_the_fraction_of_a_gpu_is_the_largest_one_over_k_that_fits_memory(peak_cuda,
                                                                          fraction):
    assert gpu_fraction(gpu_trial(peak_cuda)) == pytest.approx(fraction)


def test_on_a_gpu_trials_are_packed_at_the_fraction_that_fits_their_memory():
    m = gpu_trial(20 * GiB)
    assert 3 * (20 * GiB + CUDA_CONTEXT_BYTES) <= 0.9 * 80 * GiB
    plan = verdict(spec_of(resources={"cpu": 1, "gpu": 1}), m, Free(16, 2, 100 * GiB))
    assert plan["gpu_fraction"] == pytest.approx(1 / 3)
    assert plan["slots"] == 6 and plan["as_written"]["slots"] == 2  # gpu: 1 as written
    assert plan["recommendation"]["resources"]["gpu"] == pytest.approx(1 / 3)
    assert gpu_fraction(cpu_trial()) is None
    assert verdict(spec_of(), cpu_trial(), PLENTY)["gpu_fraction"] is None


def _hours_for(waves: float, spec, m: Measurement) -> float:
    trial = m.epoch_seconds * spec.epochs + TRIAL_OVERHEAD_SECONDS
    return (SWEEP_STARTUP_SECONDS + waves * trial) / 3600


def test_caviar_needs_two_trials_at_once_and_a_search_worth_of_them_in_the_hours():
    spec, m = spec_of(resources={"cpu": 1}), cpu_trial(epoch_seconds=0.2)
    half = MIN_SEARCH_TRIALS // 2  # waves of two trials
    enough = verdict(spec, m, Free(2, 0, 100 * GiB), _hours_for(half + 0.5, spec, m))
    assert (enough["verdict"], enough["trials_that_fit"]) == ("caviar", MIN_SEARCH_TRIALS)
    short = verdict(spec, m, Free(2, 0, 100 * GiB), _hours_for(half - 0.5, spec, m))
    assert (short["verdict"], short["trials_that_fit"]) == ("panda", MIN_SEARCH_TRIALS - 2)
    assert f"fewer than the {MIN_SEARCH_TRIALS}" in short["why"]
    alone = verdict(spec, m, Free(1, 0, 100 * GiB), 24)
    assert alone["verdict"] == "panda" and "only one trial fits at once" in alone["why"]
    none = verdict(spec, m, Free(0, 0, 100 * GiB), 24)
    assert (none["verdict"], none["slots"], none["as_written"]["hours"]) == ("panda", 0, None)
    assert alone["recommendation"]["command"] == "caviar babysit start s.yaml"
    assert alone["recommendation"]["run_seconds"] == pytest.approx(0.2 * spec.epochs)


def test_a_sweep_that_fits_is_kept_as_written_and_asha_makes_it_an_upper_bound():
    spec = spec_of(strategy={"kind": "coarse_to_fine", "rounds": 3, "trials_per_round": 8},
                   scheduler={"kind": "asha"}, resources={"cpu": 1})
    plan = verdict(spec, cpu_trial(0.5), Free(4, 0, 100 * GiB), 24, address="ray://h:10001")
    written = plan["as_written"]
    assert (written["waves"], written["upper_bound"]) == (3 * 2, True)  # rounds wait
    assert written["hours"] == pytest.approx(_hours_for(6, spec, cpu_trial(0.5)))
    r = plan["recommendation"]
    assert (plan["verdict"], r["budget"], r["note"]) == ("caviar", 24, "the sweep as written")
    assert r["strategy"]["rounds"] == 3 and r["parallel_trials"] == 4
    assert r["command"] == "caviar submit s.yaml --address http://h:8265"  # not through ray://


@pytest.mark.parametrize("slots, waves, strategy", [
    (2, 13, {"kind": "coarse_to_fine", "rounds": 3, "trials_per_round": 8}),
    (4, 5, {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 8}),
    (2, 400, {"kind": "coarse_to_fine", "rounds": 4, "trials_per_round": 200}),
    (16, 1, {"kind": "random", "trials": 16}),  # one wave: no round to zoom from
    (2, 7, {"kind": "random", "trials": 14}),
])
def test_the_fitted_search_fills_whole_waves(slots, waves, strategy):
    assert fit_strategy(slots, waves) == strategy


@pytest.mark.parametrize("written, kind", [
    ({"kind": "coarse_to_fine", "rounds": 20, "trials_per_round": 50, "keep": 0.5},
     "coarse_to_fine"),
    ({"kind": "quasi_random", "trials": 5000}, "coarse_to_fine"),
])
def test_a_sweep_too_long_for_the_hours_is_shrunk_to_fit_them(written, kind):
    spec, m = spec_of(strategy=written, resources={"cpu": 1}), cpu_trial(0.25)
    hours = _hours_for(40.5, spec, m)  # 40 waves of 2 trials
    plan = verdict(spec, m, Free(2, 0, 100 * GiB), hours)
    r = plan["recommendation"]
    assert plan["verdict"] == "caviar" and plan["as_written"]["hours"] > hours
    assert r["strategy"]["kind"] == kind and r["budget"] <= plan["trials_that_fit"] == 80
    assert r["hours"] <= hours and r["note"] == f"fitted to {hours:g} h"
    assert (r["strategy"]["rounds"], r["strategy"]["trials_per_round"]) == (4, 20)
    if written["kind"] == "coarse_to_fine":  # its own settings kept, the budget fitted
        assert r["strategy"]["keep"] == 0.5
    assert "concurrency: 2" in r["snippet"] and "kind: coarse_to_fine" in r["snippet"]


def test_a_fitted_random_search_keeps_the_sweeps_own_kind_of_random():
    spec, m = spec_of(strategy={"kind": "quasi_random", "trials": 5000},
                      resources={"cpu": 1}), cpu_trial(0.25)
    plan = verdict(spec, m, Free(16, 0, 100 * GiB), _hours_for(1.5, spec, m))  # one wave
    assert plan["recommendation"]["strategy"] == {"kind": "quasi_random", "trials": 16}


# -- real measurement ------------------------------------------------------------------

# Trials of 100 epochs, two at once at most (concurrency: 2, whatever the cores), and a
# target of 72 s, 62 s after the sweep's start-up: the threshold is a trial of 62 / 8 =
# 7.75 s. The small data's trial takes about 1 s here (fits about 120), the big data's
# about 50 s (fits none): each side would have to be about 6 times off to flip.
HOURS = "0.02"
# The small sweep's budget: 16 of its trials fit in it even when a busy machine makes an
# epoch 30 times slower than a quiet one (seen: 0.6 s, quiet 0.02 s).
SMALL_HOURS = "0.5"
SMALL = {"source": "synthetic", "size": 1200, "n_features": 12, "classes": 3}
BIG = {"source": "synthetic", "size": 200_000, "n_features": 40, "classes": 3}


def _sweep(write_sweep, name, data):
    return write_sweep(name, data=data, epochs=100, resources={"cpu": 1, "concurrency": 2})


def test_a_costlier_trial_flips_the_verdict_from_caviar_to_panda(capsys, write_sweep,
                                                                 ray_shutdown,
                                                                 no_outside_services):
    # The small sweep's plan as a person reads it (the report: each figure checked in its
    # words), the big one's as a script does (--json); one trial measured for each. The big
    # one gets the time 64 small trials take, measured here: it needs over 4 times the
    # small one's work per trial to miss 16 (it is 900 times the data).
    code, out, err = run_main(capsys, "plan", _sweep(write_sweep, "small.yaml", SMALL),
                              "--hours", SMALL_HOURS)
    assert code == 0, err
    assert "caviar: timing one epoch of sweep 't'" in err

    def figure(pattern: str) -> str:
        found = re.search(pattern, out, re.MULTILINE)
        assert found, f"{pattern!r} not in the report:\n{out}"
        return found.group(1)

    small_epoch = float(figure(r"^  one epoch +(\S+) s \(timed after a warm-up epoch\)$"))
    assert small_epoch > 0
    assert int(figure(r"^  peak memory +([\d,]+) MiB RSS").replace(",", "")) > 0
    assert "measured on this machine" in out  # where: local
    assert "on cpu with 1 torch thread(s); 722 training rows" in out
    assert "\n  free now     " in out and "\n  at once      2 trial(s)" in out
    fit = int(figure(r"^  in 0\.5 h +([\d,]+) trials fit$").replace(",", ""))
    small_trial = float(figure(r"^  one trial +(\S+) s \(100 epochs"))
    assert fit >= MIN_SEARCH_TRIALS, out
    assert "\nverdict: caviar: 2 trials run at once" in out
    assert "\nrun 2 trials in parallel: " in out
    assert re.search(r"^  caviar sweep \S*small\.yaml$", out, re.MULTILINE), out

    hours = 64 * small_trial / 2 / 3600  # 2 at once
    code, out, err = run_main(capsys, "plan", _sweep(write_sweep, "big.yaml", BIG),
                              "--hours", f"{hours:.5f}", "--json")
    assert code == 0, err
    big = json.loads(out)
    m = big["measured"]
    assert m["epoch_seconds"] > 10 * small_epoch
    assert m["peak_rss_bytes"] > 0 and m["device"] == "cpu" and big["where"] == "local"
    assert big["slots"] == 2 and big["trials_that_fit"] < MIN_SEARCH_TRIALS, big
    assert big["verdict"] == "panda" and " h, fewer than the 16 " in big["why"], big["why"]
    assert big["recommendation"]["command"].startswith("caviar babysit start ")


@pytest.fixture
def one_cpu_cluster(monkeypatch):
    """A Ray head of one CPU; ray.cluster_utils stops only its own processes. No
    dashboard: nothing here uses it, and its fixed port may be another test's."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    yield cluster.address
    cluster.shutdown()


def test_a_one_cpu_cluster_flips_the_verdict_to_panda_and_refuses_a_trial_too_big(
        one_cpu_cluster, write_sweep):
    # Two plans from two processes of their own, at once (the refused one needs no
    # CPU of the cluster: it stops before measuring).
    too_big = write_sweep("two.yaml", resources={"cpu": 2})
    with ThreadPoolExecutor(2) as pool:
        planned = pool.submit(caviar, "plan", _sweep(write_sweep, "small.yaml", SMALL),
                              "--address", one_cpu_cluster, "--hours", HOURS, "--json")
        refused = pool.submit(caviar, "plan", too_big, "--address", one_cpu_cluster)
        done, refused = planned.result(), refused.result()
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["where"] == one_cpu_cluster and plan["free"]["cpu"] == 1
    assert plan["measured"]["epoch_seconds"] > 0 and plan["slots"] == 1
    assert plan["verdict"] == "panda" and "only one trial fits at once" in plan["why"]
    assert plan["recommendation"]["command"].endswith(f"--address {one_cpu_cluster}")

    assert refused.returncode == 2
    assert_one_paragraph_error(refused.stderr, "two.yaml: key 'resources'", "cpu: 2",
                               "the largest has 1 CPU")


@pytest.mark.parametrize("hours", ["0", "-1", "nan", "inf", "1e9"])
def test_hours_must_be_above_zero(capsys, write_sweep, hours):
    code, out, err = run_main(capsys, "plan", write_sweep(), "--hours", hours)
    assert (code, out) == (2, "")
    assert_one_paragraph_error(err, "--hours", "must be > 0")


def test_a_bad_sweep_file_is_bad_input_before_anything_runs(capsys, write_sweep):
    code, _, err = run_main(capsys, "plan", write_sweep(epochs=0))
    assert code == 2
    assert_one_paragraph_error(err, "sweep.yaml", "epochs")
