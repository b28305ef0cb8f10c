"""The trial schedulers a sweep file names: fifo, asha (early stopping) or pbt.

PBT takes no search algorithm in Ray Tune: its initial population is the
strategy's first points, handed to Tune as a grid over population members.
"""

from __future__ import annotations

import math
from functools import partial

from ray import tune

from searchspaces import ChoiceParameter

MEMBER_KEY = "_member"  # which member of PBT's initial population a trial is


def make_scheduler(spec):
    """fifo, asha or pbt, from the sweep's (checked) ``scheduler:`` section."""
    s = spec.scheduler
    if s.kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # Its time is the epoch, not Tune's training_iteration: a trial with short
        # epochs reports several at once (trainable._Pace), and always at these rungs.
        return ASHAScheduler(time_attr="epoch", max_t=spec.epochs,
                             grace_period=s.grace_epochs, reduction_factor=s.reduction_factor)
    if s.kind == "pbt":
        return _pbt(spec.space, s)
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def decision_epochs(spec) -> list[int]:
    """The epochs the scheduler decides at, which every trial reports: ASHA's rungs
    (grace x reduction_factor^k, below the last epoch). PBT trials report every epoch."""
    s = spec.scheduler
    if s.kind != "asha":
        return []
    rungs, t = [], float(s.grace_epochs)
    while t < spec.epochs:
        rungs.append(math.ceil(t))
        t *= s.reduction_factor
    return rungs


def _pbt(space, s):
    from ray.tune.schedulers import PopulationBasedTraining

    names = s.hyperparameters

    def resample(name):
        import numpy as np

        rng = np.random.default_rng()
        return lambda: space[name].from_unit(float(rng.random()))

    def mutation(name):
        # A choice shifts along its list (Ray's PBT moves to a neighbouring value); a
        # number is multiplied by 0.8 or 1.2, or resampled, then clipped to the space.
        p = space[name]
        return list(p.values) if isinstance(p, ChoiceParameter) else resample(name)

    return PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
        hyperparam_mutations={n: mutation(n) for n in names},
        quantile_fraction=s.quantile_fraction, custom_explore_fn=partial(clip, space, names),
        synch=False)


def clip(space, names, config: dict) -> dict:
    """PBT multiplies values by 0.8 or 1.2: bring them back inside the declared space
    (momentum 0.99 * 1.2 is not a momentum)."""
    for name in names:
        p = space[name]
        if hasattr(p, "scale"):
            config[name] = p.from_unit(min(1.0, max(0.0, p.to_unit(
                min(max(config[name], p.scale.low), p.scale.high)))))
    return config


def _member(configs: list[dict], key: str, spec) -> object:
    return configs[spec["config"][MEMBER_KEY]][key]


def population_space(strategy) -> dict:
    """A Tune param_space giving PBT's initial population: the strategy's first points."""
    configs = [strategy.suggest(f"member_{i}") for i in range(strategy.budget)]
    strategy.write_state()
    space = {MEMBER_KEY: tune.grid_search(list(range(len(configs))))}
    for key in configs[0]:
        space[key] = tune.sample_from(partial(_member, configs, key))
    return space
