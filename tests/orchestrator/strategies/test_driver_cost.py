"""What a strategy costs the driver per trial does not grow with the trials before it.

Counted, not timed: strategy.json is written when its content changes (a round opens or
its box changes), not at every trial's end, and what it holds does not grow with the
trials; coarse-to-fine's suggestions read kept counts, not every trial.
"""

from __future__ import annotations

import json

from ray.tune.search import Searcher

from orchestrator.strategies import ROUND_KEY, _base, make_strategy
from searchspaces import SearchSpace

SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-5, "high": 1.0},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9999}}})


def run(strategy, score) -> int:
    """Drives ``strategy`` to its end, one trial at a time; returns the trials run."""
    n = 0
    while (config := strategy.suggest(f"t{n}")) not in (None, Searcher.FINISHED):
        strategy.on_trial_complete(f"t{n}", {"loss": score(n, config)})
        n += 1
    return n


def counting_writes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = _base.atomic_write

    def counted(path, text):
        sizes.append(len(text))
        return real(path, text)

    monkeypatch.setattr(_base, "atomic_write", counted)
    return sizes


def test_random_writes_its_state_once_not_when_the_best_changes(tmp_path, monkeypatch):
    sizes = counting_writes(monkeypatch)
    state = tmp_path / "strategy.json"
    strategy = make_strategy({"kind": "random", "trials": 2000}, SPACE, "loss", "min", 0,
                             state_file=state)

    def score(n, config):
        return {0: 5.0, 10: 3.0, 500: 1.0}.get(n, 9.0)  # the best changes three times

    assert run(strategy, score) == 2000
    assert strategy.best_id == "t500"
    assert len(sizes) == 1  # its one round: the edge warnings are the summary's to find
    assert max(sizes) < 3000  # the report: rounds, no per-trial records
    # as of its only write (trial 0 ended then); summary.json counts from the event log
    assert json.loads(state.read_text())["rounds"][0]["trials"] == 1


def test_coarse_to_fine_writes_once_per_round_and_best(tmp_path, monkeypatch):
    sizes = counting_writes(monkeypatch)
    strategy = make_strategy({"kind": "coarse_to_fine", "rounds": 50, "trials_per_round": 40},
                             SPACE, "loss", "min", 0, state_file=tmp_path / "strategy.json")
    assert run(strategy, lambda n, config: 1.0) == 2000  # a tie: the first stays the best
    assert len(sizes) <= 50 + 1
    assert strategy.started == strategy.ended == {r: 40 for r in range(50)}
    assert len(strategy.rounds) == 50


def test_the_kept_counts_are_rebuilt_on_restore(tmp_path):
    a = make_strategy({"kind": "coarse_to_fine", "rounds": 3, "trials_per_round": 4},
                      SPACE, "loss", "min", 0)
    for i in range(4):
        a.suggest(f"t{i}")
        a.on_trial_complete(f"t{i}", {"loss": float(i)})
    assert a.suggest("t4")[ROUND_KEY] == a.suggest("t5")[ROUND_KEY] == 1
    a.on_trial_complete("t4", {"loss": 9.0})
    a.save(str(tmp_path / "state"))
    b = make_strategy({"kind": "coarse_to_fine", "rounds": 3, "trials_per_round": 4},
                      SPACE, "loss", "min", 0)
    b.restore(str(tmp_path / "state"))
    assert (b.started, b.ended, b.best_id) == ({0: 4, 1: 2}, {0: 4, 1: 1}, "t0")
    assert b.suggest("t6") == a.suggest("t6")
