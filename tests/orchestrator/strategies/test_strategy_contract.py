"""The contract every strategy keeps, run against each kind (Optuna's ``BasicSamplerTestCase``).

Each strategy is built through ``make_strategy`` and driven as Ray Tune drives a
Searcher, without starting Ray: ``suggest(trial_id)``, then ``on_trial_result``
and ``on_trial_complete`` for the trials it handed out.
"""

from __future__ import annotations

import json
import math
from collections import deque

import pytest
from ray.tune.search import Searcher

from orchestrator.strategies import ROUND_KEY, SEED_KEY, Strategy, make_strategy
from searchspaces import ChoiceParameter, FixedParameter, IntParameter, SearchSpace

METRIC = "val_loss"
SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-5, "high": 1.0},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9999},
    "hidden_units": {"scale": "linear", "type": "int", "low": 50, "high": 100},
    "batch_size": {"choice": [32, 64, 128]},
    "optimizer": {"fixed": "momentum"},
}})


def _c2f(sampler: str) -> dict:
    return {"kind": "coarse_to_fine", "rounds": 3, "trials_per_round": 4, "keep": 0.5,
            "margin": 0.05, "sampler": sampler}


# id -> (the sweep file's strategy section, the budget it implies for SPACE)
KINDS = {
    "random": ({"kind": "random", "trials": 10}, 10),
    "quasi_random": ({"kind": "quasi_random", "trials": 10}, 10),
    # 2 points on each of the 4 tuned parameters (the choice's are 32 and 128)
    "grid": ({"kind": "grid", "points": 2}, 16),
    "coarse_to_fine-random": (_c2f("random"), 12),
    "coarse_to_fine-quasi_random": (_c2f("quasi_random"), 12),
    # beyond TPE's 10 random start-up trials, so the model-based part is covered too
    "tpe": ({"kind": "tpe", "trials": 14}, 14),
}
SEEDED = [k for k in KINDS if k != "grid"]  # grid ignores the seed


def build(kind: str, seed: int = 0, mode: str = "min") -> Strategy:
    return make_strategy(dict(KINDS[kind][0]), SPACE, METRIC, mode, seed)


def objective(config: dict) -> float:
    """A smooth bowl, lowest at lr 3e-3, momentum 0.99, 80 hidden units, batch 64."""
    return ((math.log10(config["lr"]) - math.log10(3e-3)) ** 2
            + (math.log10(1.0 - config["momentum"]) + 2.0) ** 2
            + ((config["hidden_units"] - 80) / 50) ** 2
            + (0.0 if config["batch_size"] == 64 else 0.5))


class Tune:
    """Drives a strategy as Ray Tune does: up to ``concurrency`` trials run, the oldest ends first.

    ``configs`` holds every configuration suggested, in order; ``running`` the
    trials suggested and not yet ended.
    """

    def __init__(self, strategy: Strategy, concurrency: int = 1):
        self.strategy = strategy
        self.concurrency = concurrency
        self.configs: list[dict] = []
        self.running: deque = deque()
        self.finished = False

    def end_oldest(self) -> None:
        trial_id, config = self.running.popleft()
        value = objective(config)
        self.strategy.on_trial_result(trial_id, {METRIC: value, "training_iteration": 1})
        self.strategy.on_trial_complete(trial_id, {METRIC: value, "training_iteration": 1})

    def step(self) -> bool:
        """One scheduling step; False once the strategy said FINISHED and every trial ended."""
        if len(self.running) >= self.concurrency or (self.finished and self.running):
            self.end_oldest()
            return True
        if self.finished:
            return False
        trial_id = f"trial_{len(self.configs):04d}"
        config = self.strategy.suggest(trial_id)
        if config == Searcher.FINISHED:
            self.finished = True
        elif config is None:
            assert self.running, "suggest() said 'not now' with no trial running"
            self.end_oldest()
        else:
            assert isinstance(config, dict), config
            self.configs.append(config)
            self.running.append((trial_id, config))
        return True

    def run(self, until: int | None = None) -> Tune:
        """Steps until ``until`` configurations were suggested, or to the end of the sweep."""
        for _ in range(10_000):
            if until is not None and len(self.configs) >= until:
                return self
            if not self.step():
                return self
        raise AssertionError("the sweep never finished")


def assert_in_space(config: dict) -> None:
    assert set(config) == set(SPACE.names) | {ROUND_KEY, SEED_KEY}, config
    for p in SPACE.parameters:
        v = config[p.name]
        if isinstance(p, FixedParameter):
            assert v == p.value
        elif isinstance(p, ChoiceParameter):
            assert v in p.values
        else:
            assert p.scale.low <= v <= p.scale.high, (p.name, v)
            if isinstance(p, IntParameter):
                assert isinstance(v, int)
            assert math.isfinite(v)
    assert isinstance(config[ROUND_KEY], int) and config[ROUND_KEY] >= 0
    assert isinstance(config[SEED_KEY], int)


@pytest.fixture(params=list(KINDS))
def kind(request) -> str:
    return request.param


def test_suggestions_lie_in_the_space_and_carry_the_fixed_parameters(kind):
    configs = Tune(build(kind), concurrency=2).run().configs
    assert configs
    for config in configs:
        assert_in_space(config)
        assert config["optimizer"] == "momentum"


def test_finished_after_exactly_the_budget(kind):
    strategy = build(kind)
    tune = Tune(strategy, concurrency=3).run()
    assert tune.finished and not tune.running
    assert len(tune.configs) == KINDS[kind][1]
    # and it stays finished
    assert strategy.suggest("one_more") == Searcher.FINISHED
    assert strategy.suggest("and_another") == Searcher.FINISHED


def test_the_same_seed_gives_the_same_configs(kind):
    first = Tune(build(kind, seed=11), concurrency=2).run().configs
    second = Tune(build(kind, seed=11), concurrency=2).run().configs
    assert first == second


@pytest.mark.parametrize("kind", SEEDED)
def test_another_seed_gives_other_configs(kind):
    first = Tune(build(kind, seed=11)).run().configs
    other = Tune(build(kind, seed=12)).run().configs
    strip = [{k: v for k, v in c.items() if k != SEED_KEY} for c in first]
    assert strip != [{k: v for k, v in c.items() if k != SEED_KEY} for c in other]


def test_each_trial_gets_its_own_seed(kind):
    configs = Tune(build(kind, seed=5), concurrency=2).run().configs
    seeds = [c[SEED_KEY] for c in configs]
    assert len(set(seeds)) == len(seeds)


def _mid(kind: str) -> int:
    if kind.startswith("coarse_to_fine"):
        return 6  # round 1 (of 4 trials each) has 2 trials out, both still running
    return KINDS[kind][1] // 2


def test_restore_continues_with_the_configs_the_original_would_have_produced(kind, tmp_path):
    mid = _mid(kind)
    original = build(kind, seed=3)
    tune = Tune(original, concurrency=2).run(until=mid)
    path = tmp_path / "searcher.pkl"
    original.save(str(path))
    assert isinstance(json.loads(path.read_text()), dict)  # JSON, not a pickle: no code
    saved_report = original.report()
    running, done_so_far = list(tune.running), list(tune.configs)
    expected = tune.run().configs[mid:]
    assert expected, "nothing left to compare"
    if kind.startswith("coarse_to_fine"):
        # saved mid-round: the trials just before and after the save share round 1
        assert done_so_far[-1][ROUND_KEY] == 1 == expected[0][ROUND_KEY]

    restored = build(kind, seed=3)
    restored.restore(str(path))
    assert restored.report() == saved_report
    resumed = Tune(restored, concurrency=2)
    resumed.configs, resumed.running = done_so_far, deque(running)
    assert resumed.run().configs[mid:] == expected


# --- diverged and failed trials ------------------------------------------------------

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_diverged_and_silent_failed_trials_do_not_crash_and_rank_last(kind, mode):
    """Every 4th trial reports NaN, +inf or -inf; another fails without a result (error=True)."""
    strategy = build(kind, mode=mode)
    sign = 1.0 if mode == "min" else -1.0
    bad: set[str] = set()
    for i in range(1000):
        trial_id = f"trial_{i:04d}"
        config = strategy.suggest(trial_id)
        if config == Searcher.FINISHED:
            break
        assert isinstance(config, dict)
        assert_in_space(config)
        if i % 4 == 1:
            value = NON_FINITE[(i // 4) % 3]
            strategy.on_trial_result(trial_id, {METRIC: value, "training_iteration": 1})
            strategy.on_trial_complete(trial_id, {METRIC: value, "training_iteration": 1})
            bad.add(trial_id)
        elif i % 4 == 3:
            strategy.on_trial_complete(trial_id, None, error=True)  # crashed before epoch 1
            bad.add(trial_id)
        else:
            value = sign * objective(config)
            strategy.on_trial_result(trial_id, {METRIC: value, "training_iteration": 1})
            strategy.on_trial_complete(trial_id, {METRIC: value, "training_iteration": 1})
    else:
        raise AssertionError("never finished")
    assert i == KINDS[kind][1]
    assert bad

    ranked = strategy.ranked(list(strategy.trials.values()))
    ids = {id(rec): tid for tid, rec in strategy.trials.items()}
    order = [ids[id(rec)] for rec in ranked]
    assert set(order[-len(bad):]) == bad, order
    assert math.isfinite(strategy.score_of(ranked[0]))

    json.dumps(strategy.report(), allow_nan=False)  # the summary stays valid JSON


def test_a_trial_that_errors_after_reporting_ranks_last(kind):
    """A failed trial (error=True) ranks last even when an epoch before the failure was good.

    ``Strategy.score_of``: "failed, diverged or silent trials rank last"; a failed
    trial must not become the sweep's best nor steer coarse-to-fine's zoom.
    """
    strategy = build(kind)
    for i in range(3):
        trial_id = f"trial_{i}"
        config = strategy.suggest(trial_id)
        assert isinstance(config, dict)
        if i == 1:
            # better than the bowl ever gets (its lowest value is 0), then it crashes
            strategy.on_trial_result(trial_id, {METRIC: -1.0, "training_iteration": 1})
            strategy.on_trial_complete(trial_id, None, error=True)
        else:
            value = objective(config)
            strategy.on_trial_result(trial_id, {METRIC: value, "training_iteration": 1})
            strategy.on_trial_complete(trial_id, {METRIC: value, "training_iteration": 1})
    ranked = strategy.ranked(list(strategy.trials.values()))
    assert ranked[-1] is strategy.trials["trial_1"]
    assert ranked[-1].error


def test_a_trial_scores_its_best_epoch_even_inside_a_report_of_several(kind):
    """A trial with short epochs reports several at once: the score is the best of them,
    not the latest (the sweep's best and coarse-to-fine's zoom use it)."""
    strategy = build(kind)
    assert isinstance(strategy.suggest("t"), dict)
    epochs = [{"epoch": 1, METRIC: 0.9}, {"epoch": 2, METRIC: 0.2}, {"epoch": 3, METRIC: 0.5}]
    strategy.on_trial_result("t", {**epochs[-1], "caviar_epochs": epochs})
    strategy.on_trial_complete("t", {**epochs[-1], "caviar_epochs": epochs})
    assert strategy.score_of(strategy.trials["t"]) == 0.2


# --- report() ------------------------------------------------------------------------

def test_report_gives_rounds(kind):
    strategy = build(kind)
    Tune(strategy, concurrency=2).run()
    report = strategy.report()
    assert report["strategy"] == strategy.kind == KINDS[kind][0]["kind"]
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    expected_rounds = KINDS[kind][0].get("rounds", 1)
    assert len(rounds) == expected_rounds
    assert sum(r["trials"] for r in rounds) == KINDS[kind][1]
    for r in rounds:
        assert set(r["box"]) == {p.name for p in SPACE.tuned}
    json.dumps(report, allow_nan=False)


def test_first_round_box_is_the_whole_declared_space(kind):
    """Round 0 covers the space: each range from low to high, each choice with all its values."""
    strategy = build(kind)
    Tune(strategy).run(until=1)
    box = strategy.report()["rounds"][0]["box"]
    for p in SPACE.tuned:
        if isinstance(p, ChoiceParameter):
            assert box[p.name] == list(p.values), (p.name, box[p.name])
        else:
            assert box[p.name] == pytest.approx([p.scale.low, p.scale.high]), p.name


def test_no_trial_is_best_when_every_trial_diverged(kind):
    """With no finite score there is no best point (so no edge warning: a diverged
    trial's lr at the edge says nothing about where the optimum is)."""
    strategy = build(kind)
    for i in range(1000):
        trial_id = f"trial_{i:04d}"
        if strategy.suggest(trial_id) == Searcher.FINISHED:
            break
        strategy.on_trial_result(trial_id, {METRIC: math.nan, "training_iteration": 1})
        strategy.on_trial_complete(trial_id, {METRIC: math.nan})
    assert strategy.best_id is None
