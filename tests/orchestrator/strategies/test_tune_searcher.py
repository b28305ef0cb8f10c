"""caviar's strategies in a plain Ray Tune program, as a Ray Tune user drives them:
``searcher()`` and the example in docs/ray-tune.md, ``param_space`` refused, TPE's metric
and mode, trials the strategy never suggested, known results (``add_evaluated_point``), and
``Tuner.restore`` that ends or replaces open trials without telling the searcher."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import ray
from conftest import REPO, kill_session
from ray import tune
from ray.tune.search import Searcher

from orchestrator.strategies import KINDS, budget, parse_strategy, searcher
from orchestrator.strategies._restored import tune_statuses
from searchspaces import SearchSpace, SpecError

# Ray's workers cannot import this test module: its trainables travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

METRIC = "val_loss"
SPACE = {"parameters": {
    "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.999},
    "batch_size": {"choice": [32, 64, 128]},
}}


def bowl(config: dict) -> float:
    return (math.log10(config["lr"]) + 2) ** 2 + (math.log10(1 - config["momentum"]) + 2) ** 2


def drive(strategy, n: int, metric: str = METRIC, value=bowl) -> list[dict]:
    """Suggests and completes up to ``n`` trials, one at a time, as Tune would."""
    configs = []
    for i in range(n):
        config = strategy.suggest(f"t{i}")
        if config is None or config == Searcher.FINISHED:
            break
        strategy.on_trial_complete(f"t{i}", {metric: value(config)})
        configs.append(config)
    return configs


# -- searcher(): any kind, the sweep file's defaults ----------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_searcher_builds_each_kind_with_the_sweep_files_defaults(kind, tmp_path):
    space = SearchSpace.from_dict(SPACE)
    path = tmp_path / "space.yaml"
    path.write_text(json.dumps(SPACE))  # JSON is YAML
    built = [searcher(kind, s, metric=METRIC, mode="min", seed=3)
             for s in (SPACE, space, str(path), path)]
    assert {s.budget for s in built} == {budget(parse_strategy({"kind": kind}, "x", space),
                                                space)}
    assert all(type(s) is KINDS[kind] for s in built)
    firsts = [s.suggest("a") for s in built]  # the same space, however given
    assert all(f == firsts[0] for f in firsts)
    assert set(firsts[0]) == {"lr", "momentum", "batch_size", "_round", "_seed"}


def test_searcher_takes_a_sections_keys_and_refuses_bad_ones():
    s = searcher({"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 5}, SPACE)
    assert s.budget == 10 and s.metric is None  # left to TuneConfig
    with pytest.raises(SpecError, match="strategy.kind"):
        searcher("annealing", SPACE)
    with pytest.raises(SpecError, match="rounds"):
        searcher({"kind": "coarse_to_fine", "rounds": 0}, SPACE)
    with pytest.raises(TypeError, match="needs a space"):
        searcher("random")
    with pytest.raises(ValueError, match="no metric and mode: give them to searcher"):
        s.suggest("t0")


DOCS_PAGE = "docs/ray-tune.md"  # its example is marked to be run by this file


def _docs_example() -> str:
    text = (REPO / DOCS_PAGE).read_text(encoding="utf-8")
    marker = text.index("<!-- run: tests/orchestrator/strategies/test_tune_searcher.py -->")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


@pytest.mark.usefixtures("ray_shutdown")
def test_the_docs_example_runs_a_plain_tuner(capsys):
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    ns = {"__name__": "docs_example"}
    exec(compile(_docs_example(), DOCS_PAGE, "exec"), ns)
    results = ns["tuner"].get_results()
    assert len(results) == 8 and results.num_errors == 0  # 2 rounds x 4: the budget ended it
    strategy, best = ns["strategy"], ns["best"]
    assert [r.round for r in strategy.rounds] == [0, 1]  # it zoomed once
    assert {r.config["_round"] for r in results} == {0, 1}
    assert 1e-4 <= best.config["lr"] <= 1.0 and 0.5 <= best.config["momentum"] <= 0.999
    assert best.metrics["val_loss"] == min(r.metrics["val_loss"] for r in results)
    assert capsys.readouterr().out.strip().endswith(
        f"{best.config['lr']} {best.config['momentum']}")


# -- param_space: refused when it holds search domains, merged when constants -------------


def _report_config(config):
    tune.report({METRIC: bowl(config), "width": config.get("width", -1)})


@pytest.mark.usefixtures("ray_shutdown")
def test_a_param_space_with_search_domains_is_refused_and_constants_reach_the_trainable(
        tmp_path):
    ray.init(address="local", num_cpus=1, include_dashboard=False)

    def tuner(param_space, strategy, metric=METRIC, mode="min"):
        return tune.Tuner(_report_config, param_space=param_space,
                          tune_config=tune.TuneConfig(search_alg=strategy, metric=metric,
                                                      mode=mode, num_samples=-1),
                          run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))

    own = searcher({"kind": "random", "trials": 2}, SPACE, metric=METRIC, mode="min")
    with pytest.raises(Exception, match="unresolved parameters"):
        tuner({"lr": tune.uniform(0.1, 0.2), "width": 7}, own, "width", "max").fit()
    assert (own.metric, own.mode) == (METRIC, "min")  # refused: it took nothing
    told = searcher({"kind": "random", "trials": 2}, SPACE)  # Tune passes the Tuner's along
    results = tuner({"width": 7}, told).fit()
    assert (told.metric, told.mode) == (METRIC, "min")
    assert [r.metrics["width"] for r in results] == [7, 7]
    assert all(1e-4 <= r.config["lr"] <= 1.0 for r in results)  # the strategy's, not raw


@pytest.mark.parametrize("kind", list(KINDS))
def test_set_search_properties_takes_the_metric_and_mode_only_when_it_accepts(kind):
    """True: the param_space's constants accepted, the metric and mode taken. False (a
    search domain there, as Ray's own searchers answer): nothing taken."""
    s = searcher(kind, SPACE, metric=METRIC, mode="min")
    for domains in ({"lr": tune.uniform(0.1, 0.2)}, {"width": tune.grid_search([1, 2])},
                    {"nested": {"lr": tune.loguniform(1e-3, 1.0)}}):
        assert s.set_search_properties("val_accuracy", "max", domains) is False
        assert (s.metric, s.mode) == (METRIC, "min")
    assert s.set_search_properties("val_accuracy", "max", {"width": 7}) is True
    assert (s.metric, s.mode) == ("val_accuracy", "max")


# -- tpe: the Tuner's metric and mode reach Optuna ----------------------------------------


def test_tpe_takes_the_tuners_metric_and_mode():
    s = searcher({"kind": "tpe", "trials": 14}, SPACE)  # no metric: the Tuner's comes later
    assert s.set_search_properties("val_accuracy", "max", {}) is True
    assert (s.inner.metric, s.inner.mode) == ("val_accuracy", "max")
    configs = drive(s, 14, metric="val_accuracy", value=lambda c: -bowl(c))
    assert len(configs) == 14
    study = s.inner._ot_study
    assert study.direction.name == "MAXIMIZE"
    assert {t.state.name for t in study.trials} == {"COMPLETE"}  # none pruned or failed
    best = max(study.trials, key=lambda t: t.value)
    assert best.value == max(-bowl(c) for c in configs)
    with pytest.raises(ValueError, match="cannot change once it has trials"):
        s.set_search_properties(METRIC, "min", {})


def test_a_strategy_ignores_trials_it_never_suggested():
    for kind in KINDS:
        s = searcher(kind, SPACE, metric=METRIC, mode="min")
        s.on_trial_result("stranger", {METRIC: 0.1})
        s.on_trial_complete("stranger", {METRIC: 0.1})  # tpe raised KeyError here
        assert s.trials == {} and s.best_id is None, kind


def _fail_once(config):
    flag = config["flag"]
    if config["_seed"] == 1 and not os.path.exists(flag):
        open(flag, "w").close()
        raise RuntimeError("the first try of this trial fails")
    tune.report({METRIC: bowl(config)})


@pytest.mark.parametrize("again", ["restart_errored", "resume_errored"])
@pytest.mark.usefixtures("ray_shutdown")
def test_tpe_survives_a_restore_that_restarts_errored_trials(tmp_path, again):
    """restart_errored re-runs the failed trial under a new id, which the strategy never
    suggested; resume_errored under its own, which the restored Optuna study holds as
    ended (it raised KeyError): its outcome reaches the ledger and the study."""
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    first = tune.Tuner(
        _fail_once, param_space={"flag": str(tmp_path / "failed-once")},
        tune_config=tune.TuneConfig(search_alg=searcher({"kind": "tpe", "trials": 3}, SPACE,
                                                        metric=METRIC, mode="min"),
                                    metric=METRIC, mode="min", num_samples=-1),
        run_config=tune.RunConfig(name="tpe", storage_path=str(tmp_path), verbose=0))
    assert first.fit().num_errors == 1
    results = tune.Tuner.restore(str(tmp_path / "tpe"), trainable=_fail_once,
                                 **{again: True}).fit()
    assert results.num_errors == 0 and len(results) == 3
    assert sorted(r.config["_seed"] for r in results) == [0, 1, 2]
    state = _searcher_state(tmp_path / "tpe")
    errored = [t["error"] for t in state["trials"].values()]
    studied = sorted(t["state"] for t in state["study"])
    if again == "resume_errored":
        assert errored == [False] * 3
        assert studied == ["COMPLETE"] * 3 + ["FAIL"]  # its first try, then its outcome
    else:
        assert sorted(errored) == [False, False, True]  # the new id is not the strategy's
        assert studied == ["COMPLETE"] * 2 + ["FAIL"]


# -- add_evaluated_point: known results, outside the budget -------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_known_result_ranks_with_the_strategys_trials_outside_its_budget(kind):
    s = searcher(kind, SPACE, metric=METRIC, mode="min")
    s.add_evaluated_point({"lr": 0.01, "momentum": 0.99, "batch_size": 64}, -1.0)
    assert s.known == 1 and s.suggested == 0
    configs = drive(s, s.budget + 5, value=lambda c: bowl(c) + 0.5)
    assert len(configs) == s.budget  # the known trial spent none of it
    best = s.trials[s.best_id]
    assert best.known and best.config["lr"] == pytest.approx(0.01)  # nothing beat it
    restored = searcher(kind, SPACE, metric=METRIC, mode="min")
    restored._load_state(json.loads(json.dumps(s._state())))  # what save/restore keep
    assert restored.known == 1 and restored.best_id == s.best_id
    assert restored.suggest("after") == Searcher.FINISHED


def test_coarse_to_fine_zooms_around_a_known_best():
    s = searcher({"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 4, "keep": 0.2,
                  "margin": 0.05}, SPACE, metric=METRIC, mode="min")
    s.add_evaluated_point({"lr": 0.01, "momentum": 0.99, "batch_size": 64}, -1.0)
    drive(s, 5)  # round 0's four, then the first of round 1: the zoom
    assert len(s.rounds) == 2
    lr_box = s.report()["rounds"][1]["box"]["lr"]
    assert lr_box[0] < 0.01 < lr_box[1] and lr_box[1] / lr_box[0] < 10  # a tight box on it
    assert s.report()["rounds"][1]["box"]["batch_size"] == [64]


def test_tpe_hears_of_known_results():
    s = searcher({"kind": "tpe", "trials": 12}, SPACE, metric=METRIC, mode="min")
    s.add_evaluated_point({"lr": 0.01, "momentum": 0.99, "batch_size": 64}, 0.0)
    s.add_evaluated_point({"lr": 0.1, "momentum": 0.9, "batch_size": 32}, 5.0, error=True)
    states = [t.state.name for t in s.inner._ot_study.trials]
    assert states == ["COMPLETE", "FAIL"]
    assert s.inner._ot_study.trials[0].value == 0.0


@pytest.mark.parametrize("parameters, rule", [
    ({"lr": 0.01, "momentum": 0.99}, r"missing: \['batch_size'\]"),
    ({"lr": 0.01, "momentum": 0.99, "batch_size": 64, "depth": 3}, r"unknown: \['depth'\]"),
    ({"lr": 5.0, "momentum": 0.99, "batch_size": 64}, "lr=5.0 not in the space"),
    ({"lr": 0.01, "momentum": 0.99, "batch_size": 48}, "batch_size=48 not in"),
], ids=["missing", "unknown", "outside", "not-a-choice"])
def test_a_known_result_outside_the_space_is_refused(parameters, rule):
    s = searcher("random", SPACE, metric=METRIC, mode="min")
    with pytest.raises(ValueError, match=rule):
        s.add_evaluated_point(parameters, 0.5)
    assert s.trials == {} and s.known == 0  # nothing half-added


# -- Tuner.restore(resume_unfinished=False): a coarse-to-fine round still closes ----------


DRIVER = """
import os, sys, time
import ray
from ray import tune
from orchestrator.strategies import searcher

SPACE = {space!r}

def trainable(config):
    while config["_seed"] == 2:  # round 0's third trial runs until the driver is killed
        tune.report({{"val_loss": 9.0}})
        time.sleep(0.2)
    tune.report({{"val_loss": config["lr"]}})

ray.init(address="local", num_cpus=3, include_dashboard=False)
strategy = searcher({{"kind": "coarse_to_fine", "rounds": 2, "trials_per_round": 3}}, SPACE,
                    metric="val_loss", mode="min")
strategy.settle_s = 10.0  # the restored copy's too: how long a skipped trial may stay silent
tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=strategy, num_samples=-1),
           run_config=tune.RunConfig(name="c2f", storage_path=sys.argv[1], verbose=0,
                                     sync_config=tune.SyncConfig(sync_period=1))).fit()
"""


def trainable(config):  # the driver's name: Tune.restore checks it
    tune.report({METRIC: config["lr"]})


def _kill_mid_round(tmp_path) -> None:
    """Runs the driver until Tune's snapshot shows two trials of round 0 ended and the
    third running, and the searcher's state saved beside it says so too, then waits for
    one more snapshot (the two are synced one after the other) and SIGKILLs it."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(space=SPACE))
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1",
                                   "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    directory, ready_at = tmp_path / "c2f", None
    deadline = time.time() + 180
    try:
        while time.time() < deadline and driver.poll() is None:
            statuses = tune_statuses(str(directory), since=0) or {}
            if sorted(statuses.values()) == ["RUNNING", "TERMINATED", "TERMINATED"] and \
                    _searcher_done(directory) == [False, True, True]:
                if ready_at is None:
                    ready_at = _newest_snapshot(directory)
                elif _newest_snapshot(directory) > ready_at:
                    return
            time.sleep(0.2)  # polling Tune's files
        raise AssertionError(f"the driver never reached round 0's end: {driver.stderr.read()}")
    finally:
        kill_session(driver.pid)  # its Ray processes too, and waits for them to go
        driver.wait()


def _newest_snapshot(directory) -> float:
    return max(p.stat().st_mtime for p in directory.glob("experiment_state-*.json"))


def _searcher_state(directory) -> dict | None:
    """The searcher's newest saved state (caviar writes it as JSON, a file per Tune
    session, named by its start: a sync at the end touches them all); None while there
    is none or it is being written."""
    try:
        newest = max(directory.glob("searcher-state-*.pkl"), key=lambda p: p.name)
        return json.loads(newest.read_text())
    except (OSError, ValueError):  # none yet, or mid-write: the next look
        return None


def _searcher_done(directory) -> list[bool] | None:
    """Each trial's ``done`` in the searcher's saved state."""
    try:
        return sorted(t["done"] for t in _searcher_state(directory)["trials"].values())
    except (TypeError, KeyError):
        return None


@pytest.mark.usefixtures("ray_shutdown")
def test_coarse_to_fine_restored_without_its_unfinished_trials_closes_the_round(tmp_path):
    _kill_mid_round(tmp_path)
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    tuner = tune.Tuner.restore(str(tmp_path / "c2f"), trainable=trainable,
                               resume_unfinished=False)
    out = {}
    fit = threading.Thread(target=lambda: out.setdefault("results", tuner.fit()), daemon=True)
    fit.start()
    fit.join(timeout=180)
    assert "results" in out, "the restored run waited forever for the skipped trial"
    results = out["results"]
    seeds = sorted(r.config["_seed"] for r in results)
    assert seeds == [0, 1, 2, 3, 4, 5]  # round 0's three (one ended by Tune), round 1's three
    assert sorted(r.config["_round"] for r in results) == [0, 0, 0, 1, 1, 1]
