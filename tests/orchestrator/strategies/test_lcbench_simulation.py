"""benchmarks/bench_lcbench.py's simulation of N workers and its tables, on made-up
trials (the surrogate itself needs the bench extra, onnxruntime)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO


def _benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: pickling and typing find it there
    spec.loader.exec_module(module)
    return module


bench = _benchmark("bench_lcbench")


class Script:
    """A player that hands out given configurations, says "not now" when told, and
    records the order it hears of ends."""

    def __init__(self, plan):
        self.plan, self.ended = list(plan), []

    def ask(self, tid):
        if not self.plan:
            return "FINISHED"
        head = self.plan[0]
        if head == "wait" and self.ended:
            self.plan.pop(0)
            return self.ask(tid)
        if head == "wait":
            return None
        return self.plan.pop(0)

    def tell(self, tid, value):
        self.ended.append((tid, value))


def evaluate(config):
    return config["value"], config["seconds"]


def test_the_trial_that_ends_first_is_told_first_and_the_best_is_kept():
    s = Script([{"value": 1.0, "seconds": 5.0}, {"value": 3.0, "seconds": 1.0},
                {"value": 2.0, "seconds": 1.0}])
    out = bench.simulate(s.ask, s.tell, evaluate, trials=3, workers=2)
    assert [tid for tid, _ in s.ended] == ["t00001", "t00002", "t00000"]
    assert out["best"] == 3.0 and out["trials"] == 3
    # 2 workers over 5 s; from 2 s on, one idles (nothing left to start): 3 of 10 s idle
    assert out["idle"] == pytest.approx(3.0 / 10.0)


def test_a_strategy_that_says_not_now_leaves_its_worker_idle_until_an_end():
    s = Script([{"value": 1.0, "seconds": 4.0}, "wait", {"value": 2.0, "seconds": 4.0}])
    out = bench.simulate(s.ask, s.tell, evaluate, trials=2, workers=2)
    # worker 2 waits 4 s for the first end, then both run 4 s more (one of them idle)
    assert out["idle"] == pytest.approx((4.0 + 4.0) / (2 * 8.0))
    assert out["best"] == 2.0


def test_the_budget_caps_the_trials_and_stragglers_take_longer():
    plan = [{"value": float(i), "seconds": 1.0} for i in range(30)]
    s = Script(plan)
    out = bench.simulate(s.ask, s.tell, evaluate, trials=24, workers=1, straggle=3.0)
    assert out["trials"] == 24 and out["best"] == 23.0 and out["idle"] == 0.0
    assert len(s.ended) == 24


def test_ranks_share_ties_and_tables_count_wins():
    assert bench.ranks({"a": 3.0, "b": 1.0, "c": 3.0}) == {"a": 1.5, "c": 1.5, "b": 3.0}
    results = {"x": {"t1": [{"best": 2.0, "idle": 0.0}, {"best": 1.0, "idle": 0.5}]},
               "y": {"t1": [{"best": 1.0, "idle": 0.1}, {"best": 1.0, "idle": 0.1}]}}
    assert bench.mean_ranks(results) == {"x": 1.25, "y": 1.75}
    assert bench.win_share(results, "x", "y") == 0.75
    assert bench.idle_share(results, "x") == 0.25
    assert bench.table(results).splitlines()[2].startswith("x")


def test_a_strategy_name_may_carry_its_keys():
    assert bench.settings_of("coarse_to_fine") == ("coarse_to_fine", {})
    assert bench.settings_of("coarse_to_fine[pick=uniform;zoom_after=1;keep=0.5]") == (
        "coarse_to_fine", {"pick": "uniform", "zoom_after": 1, "keep": 0.5})
