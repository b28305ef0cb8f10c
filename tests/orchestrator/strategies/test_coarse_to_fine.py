"""Coarse to fine on an analytic objective with a known optimum, its rounds and its waiting.

Round 0 samples the whole space; after each round
the top ``keep`` fraction of trials defines a box in unit space (their min and
max, widened by ``margin``) and the next round samples inside it; choices narrow
to the values the top trials used; its best point on the space's edge gets the sweep
report's warning.
The box's mechanics are tested with uniform draws in it and whole rounds
(``MECHANICS``); the defaults (TPE's ratio among draws, points on the space's
bounds, asynchronous rounds) at the end of the file.
"""

from __future__ import annotations

import math

import pytest
from ray.tune.search import Searcher

from orchestrator.strategies import ROUND_KEY, CoarseToFineStrategy, make_strategy
from orchestrator.sweep import report
from searchspaces import ChoiceParameter, SearchSpace

METRIC = "loss"
SPACE = SearchSpace.from_dict({"parameters": {
    "lr": {"scale": "log", "low": 1e-5, "high": 1.0},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9999},
    "activation": {"choice": ["relu", "tanh", "sigmoid"]},
    "optimizer": {"fixed": "momentum"},
}})
NUMERIC = ("lr", "momentum")
BEST = {"lr": 3e-3, "momentum": 0.99, "activation": "tanh"}


def bowl(config: dict, best: dict = BEST) -> float:
    """Squared distance in decades of lr and of 1 - momentum, plus 1 for the wrong activation."""
    return ((math.log10(config["lr"]) - math.log10(best["lr"])) ** 2
            + (math.log10(1.0 - config["momentum"]) - math.log10(1.0 - best["momentum"])) ** 2
            + (0.0 if config["activation"] == best["activation"] else 1.0))


# Uniform draws in the box, no point put on a bound, a round waits for all of its trials.
MECHANICS = {"pick": "uniform", "bound_share": 0.0, "zoom_after": 1.0}


def c2f(mode: str = "min", seed: int = 1, sampler: str = "random", rounds: int = 4,
        trials_per_round: int = 12, keep: float = 0.25, **settings) -> CoarseToFineStrategy:
    strategy = make_strategy(
        {"kind": "coarse_to_fine", "rounds": rounds, "trials_per_round": trials_per_round,
         "keep": keep, "margin": 0.05, "sampler": sampler, **(settings or MECHANICS)},
        SPACE, METRIC, mode, seed)
    assert isinstance(strategy, CoarseToFineStrategy)
    return strategy


def sweep(strategy, best: dict = BEST) -> list[tuple[dict, float]]:
    """Runs every trial to its end before the next (the metric: the bowl, negated for max)."""
    sign = 1.0 if strategy.mode == "min" else -1.0
    trials = []
    for i in range(1000):
        trial_id = f"trial_{i:04d}"
        config = strategy.suggest(trial_id)
        if config == Searcher.FINISHED:
            return trials
        assert isinstance(config, dict), config  # one trial at a time: never a reason to wait
        value = sign * bowl(config, best)
        strategy.on_trial_result(trial_id, {METRIC: value, "training_iteration": 1})
        strategy.on_trial_complete(trial_id, {METRIC: value, "training_iteration": 1})
        trials.append((config, value))
    raise AssertionError("never finished")


def in_box(config: dict, box: dict) -> bool:
    for name, allowed in box.items():
        v = config[name]
        if isinstance(SPACE[name], ChoiceParameter):
            if v not in allowed:
                return False
        elif not allowed[0] * (1 - 1e-9) <= v <= allowed[1] * (1 + 1e-9):
            return False
    return True


def unit_width(name: str, interval: list) -> float:
    p = SPACE[name]
    return p.to_unit(interval[1]) - p.to_unit(interval[0])


# --- zooming in on a known optimum ---------------------------------------------------

@pytest.mark.parametrize("sampler", ["random", "quasi_random"])
@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("seed", [1, 3])
def test_zooms_in_on_the_optimum(sampler, mode, seed):
    """Seeded runs, not a statistical claim: with 12 points a round, a lucky round-0 point can
    beat every later one for some seeds (quasi_random with seed 7 does)."""
    strategy = c2f(mode, seed, sampler)
    trials = sweep(strategy)
    assert len(trials) == 4 * 12
    rounds = strategy.report()["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert [r["trials"] for r in rounds] == [12] * 4
    first, last = rounds[0]["box"], rounds[-1]["box"]

    # the last box still holds the optimum ...
    assert last["lr"][0] <= BEST["lr"] <= last["lr"][1], last
    assert last["momentum"][0] <= BEST["momentum"] <= last["momentum"][1], last
    assert BEST["activation"] in last["activation"], last
    # ... and is narrower than the whole space round 0 sampled
    for name in NUMERIC:
        assert unit_width(name, first[name]) == pytest.approx(1.0)
        assert unit_width(name, last[name]) < unit_width(name, first[name]), name
    assert first["activation"] == ["relu", "tanh", "sigmoid"]
    assert len(last["activation"]) < len(first["activation"])

    pick = min if mode == "min" else max
    best_of = {r: pick(v for c, v in trials if c[ROUND_KEY] == r) for r in range(4)}
    assert best_of[3] == pick(best_of[0], best_of[3]) and best_of[3] != best_of[0], best_of
    assert best_edges(strategy) == []  # the optimum is in the middle of the space


@pytest.mark.parametrize("sampler", ["random", "quasi_random"])
def test_each_round_samples_inside_its_box(sampler):
    strategy = c2f(sampler=sampler)
    trials = sweep(strategy)
    rounds = strategy.report()["rounds"]
    for config, _ in trials:
        assert in_box(config, rounds[config[ROUND_KEY]]["box"]), (config, rounds)


def test_the_next_box_is_the_top_trials_widened_by_the_margin():
    """After round 0: the best ceil(keep * 12) = 3 trials, min and max in unit space, +-0.05."""
    strategy = c2f(rounds=2)
    trials = sweep(strategy)
    round0 = sorted((v, c) for c, v in trials if c[ROUND_KEY] == 0)
    top = [c for _, c in round0[:3]]
    box = strategy.report()["rounds"][1]["box"]
    for name in NUMERIC:
        p = SPACE[name]
        units = [p.to_unit(c[name]) for c in top]
        lo, hi = max(0.0, min(units) - 0.05), min(1.0, max(units) + 0.05)
        assert [p.to_unit(v) for v in box[name]] == pytest.approx([lo, hi], abs=1e-9), name
    used = {c["activation"] for c in top}
    assert box["activation"] == [v for v in SPACE["activation"].values if v in used]


def test_mode_max_mirrors_mode_min():
    """The negated bowl under mode max tries the very same configurations as the bowl under min."""
    low = sweep(c2f("min"))
    high = sweep(c2f("max"))
    assert [c for c, _ in low] == [c for c, _ in high]
    assert [v for _, v in low] == [-v for _, v in high]


# --- the best point on the space's edge ----------------------------------------------


def best_edges(strategy) -> list[dict]:
    """The sweep report's edge warnings for the strategy's best trial (within its margin)."""
    return report.edges(SPACE, strategy.trials[strategy.best_id].config, strategy.margin)


@pytest.mark.parametrize("sampler", ["random", "quasi_random"])
@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize(("name", "value", "side"), [
    ("lr", 1e-5, "lower"),
    ("momentum", 0.9999, "upper"),
])
def test_best_point_on_the_edge_is_reported(sampler, mode, name, value, side):
    best = {**BEST, name: value}
    strategy = c2f(mode, sampler=sampler)
    sweep(strategy, best)
    edges = best_edges(strategy)
    assert [e["parameter"] for e in edges] == [name], edges
    edge = edges[0]
    assert edge["edge"] == side
    assert "widen the space" in edge["message"]
    assert name in edge["message"]
    assert SPACE[name].to_unit(edge["value"]) == pytest.approx(0.0 if side == "lower" else 1.0,
                                                              abs=0.05)


# --- waiting for a round, and the round counter --------------------------------------

def _end(strategy, trial_id: str, value: float = 1.0, error: bool = False) -> None:
    strategy.on_trial_complete(trial_id, None if error else {METRIC: value}, error=error)


def test_waits_while_the_round_runs_and_zooms_only_when_all_of_it_ended():
    strategy = c2f(rounds=3, trials_per_round=4, keep=0.5)
    ids = [f"t{i}" for i in range(4)]
    configs = [strategy.suggest(t) for t in ids]
    assert all(isinstance(c, dict) and c[ROUND_KEY] == 0 for c in configs)

    assert strategy.suggest("t4") is None  # round 0 is out, none of it has ended
    for t, c in zip(ids, configs):  # epochs reported do not end a trial
        strategy.on_trial_result(t, {METRIC: bowl(c), "training_iteration": 1})
    assert strategy.suggest("t4") is None
    for t, c in zip(ids[:3], configs):
        _end(strategy, t, bowl(c))
        assert strategy.suggest("t4") is None
        assert len(strategy.report()["rounds"]) == 1  # no zoom yet
    assert len(strategy.trials) == 4  # waiting used up no budget

    _end(strategy, ids[3], error=True)  # a failed trial ends the round too
    nxt = strategy.suggest("t4")
    assert isinstance(nxt, dict) and nxt[ROUND_KEY] == 1
    rounds = strategy.report()["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert in_box(nxt, rounds[1]["box"])


def test_round_counts_up_round_by_round():
    """With a whole round running at once: 4 of round 0, wait, 4 of round 1, wait, 4 of 2."""
    strategy = c2f(rounds=3, trials_per_round=4, keep=0.5)
    rounds_seen, waits, running, n = [], 0, [], 0
    for _ in range(100):
        config = strategy.suggest(f"t{n}")
        if config == Searcher.FINISHED:
            break
        if config is None:
            waits += 1
            assert len(running) == 4  # it only waits when the whole round is out
            for trial_id, c in running:
                _end(strategy, trial_id, bowl(c))
            running = []
            continue
        rounds_seen.append(config[ROUND_KEY])
        running.append((f"t{n}", config))
        n += 1
    assert rounds_seen == [0] * 4 + [1] * 4 + [2] * 4
    assert waits == 2
    assert strategy.suggest("t_more") == Searcher.FINISHED
    report = strategy.report()
    assert [(r["round"], r["trials"]) for r in report["rounds"]] == [(0, 4), (1, 4), (2, 4)]


def test_a_warm_start_is_the_first_trial_and_centres_round_0():
    start = {"lr": 1e-2, "momentum": 0.95, "activation": "relu"}
    strategy = make_strategy(
        {"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 10, "keep": 0.25,
         "margin": 0.05, "sampler": "random", "start": start, "width": 0.1},
        SPACE, METRIC, "min", 3)
    trials = sweep(strategy)
    first = trials[0][0]
    assert first["lr"] == pytest.approx(1e-2) and first["momentum"] == pytest.approx(0.95)
    assert first["activation"] == "relu" and first[ROUND_KEY] == 0
    round0 = [c for c, _ in trials if c[ROUND_KEY] == 0]
    assert len(round0) == 10
    for c in round0:  # within 0.1 of the start in unit space, on each numeric parameter
        for name in NUMERIC:
            gap = SPACE[name].to_unit(c[name]) - SPACE[name].to_unit(start[name])
            assert abs(gap) <= 0.1 + 1e-9
    assert {c["activation"] for c in round0} != {"relu"}  # every choice stays open


def test_a_warm_start_outside_the_space_is_clipped_to_it():
    strategy = make_strategy(
        {"kind": "coarse_to_fine", "rounds": 1, "trials_per_round": 5, "keep": 0.25,
         "margin": 0.05, "sampler": "random", "start": {"lr": 5.0, "momentum": 0.9,
                                                        "activation": "tanh"}},
        SPACE, METRIC, "min", 0)
    configs = [c for c, _ in sweep(strategy)]
    assert configs[0]["lr"] == pytest.approx(1.0)
    assert all(1e-5 <= c["lr"] <= 1.0 for c in configs)


# --- the defaults: TPE's ratio among draws, points on bounds, asynchronous rounds ---------


def _best_of(settings: dict, seed: int, best: dict = BEST) -> float:
    strategy = make_strategy({"kind": "coarse_to_fine", **settings}, SPACE, METRIC, "min", seed)
    return min(v for _, v in sweep(strategy, best))


def test_the_default_pick_ends_nearer_the_optimum_than_uniform_draws():
    """20 seeded sweeps of the defaults (3 rounds of 16) against the same with uniform
    draws in each box: the median best is lower (0.009 against 0.045 when measured)."""
    seeds = range(20)
    ratio = sorted(_best_of({}, s) for s in seeds)
    uniform = sorted(_best_of({"pick": "uniform"}, s) for s in seeds)
    assert ratio[10] < uniform[10] / 2, (ratio[10], uniform[10])


def test_points_go_on_a_bound_of_the_space_once_the_box_reaches_it():
    on_edge = {**BEST, "lr": 1.0}  # the optimum on lr's upper bound

    def lrs(settings):
        strategy = make_strategy({"kind": "coarse_to_fine", **settings}, SPACE, METRIC,
                                 "min", 2)
        return [(c[ROUND_KEY], c["lr"]) for c, _ in sweep(strategy, on_edge)], strategy

    trials, strategy = lrs({})
    assert all(lr < 1.0 for r, lr in trials if r == 0)  # round 0's draws: never exactly
    later = [lr for r, lr in trials if r > 0]
    assert sum(lr == 1.0 for lr in later) >= len(later) // 4, later
    assert best_edges(strategy)[0]["edge"] == "upper"
    trials, _ = lrs({"bound_share": 0.0})
    assert all(lr < 1.0 for _, lr in trials)


def test_a_round_zooms_once_zoom_after_of_it_ended_and_the_box_follows_the_last():
    strategy = c2f(rounds=2, trials_per_round=4, keep=0.25, pick="uniform", bound_share=0.0,
                   zoom_after=0.75)
    ids = [f"t{i}" for i in range(4)]
    configs = [strategy.suggest(t) for t in ids]
    for t, c in zip(ids[:2], configs):
        _end(strategy, t, bowl(c))
    assert strategy.suggest("t4") is None  # 2 of 4 ended: 3 needed
    _end(strategy, ids[2], bowl(configs[2]))
    first = strategy.suggest("t4")  # a worker need not wait for the straggler
    assert first[ROUND_KEY] == 1
    box = strategy.report()["rounds"][1]["box"]
    assert in_box(first, box)
    # The straggler ends, the best of all: round 1's box is made again around it, and
    # the round's record is the union of the boxes it drew from.
    _end(strategy, ids[3], -1.0)
    second = strategy.suggest("t5")
    union = strategy.report()["rounds"][1]["box"]
    assert union != box and all(in_box(c, union) for c in (configs[3], first, second))
    assert strategy.box.intervals != strategy.rounds[1].box  # it draws from the new one
    assert strategy.rounds[1].trials == 2 and strategy.box_settled
