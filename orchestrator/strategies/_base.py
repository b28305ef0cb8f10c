"""The small interface every caviar strategy implements, as a Ray Tune Searcher.

Strategies work in unit space: they pick points of [0, 1]^d (d = the space's
tuned parameters) and the space turns each point into a configuration on the
parameters' own scales. So no strategy knows or cares which scale a parameter
has.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict

from ray.tune.search import Searcher
from ray.tune.search.variant_generator import parse_spec_vars

from models.files import atomic_write
from orchestrator.strategies._records import (
    Ranking,
    RoundRecord,
    TrialRecord,
    known_unit,
    rounds_in_values,
)
from orchestrator.strategies._restored import RestoredTrials
from orchestrator.trial_protocol import ROUND_KEY, SEED_KEY, reported_epochs
from searchspaces import SearchSpace


class Strategy(Ranking, Searcher):
    """Base of caviar's strategies.

    When Ray Tune calls each method:

    - ``suggest(trial_id)``: whenever it has room for another trial. Returns a
      configuration, ``None`` ("not now": e.g. a coarse-to-fine round is still
      running), or ``Searcher.FINISHED`` (the budget is spent).
    - ``on_trial_result(trial_id, result)``: after every epoch a trial reports.
    - ``on_trial_complete(trial_id, result, error)``: once per trial, when it
      ends: completed, stopped early by the scheduler, or failed.
    - ``save(path)`` / ``restore(path)``: with each experiment checkpoint, and on
      ``--resume``, so a resumed sweep goes on where it was; ``restore_from_dir``
      also notes the trials open then, which ``settle_restored`` ends once Tune's
      snapshot shows it will not run them again (``_restored``).
    - ``add_evaluated_point(...)``: a result known from elsewhere, outside the budget.

    Subclasses implement ``_next(trial_id)`` (a unit point and its round, None
    or FINISHED) and may override ``_on_complete``. Each declares its sweep-file
    keys as ``Settings`` (see ``_settings``), its budget for those settings, and
    how it is built from them.
    """

    kind = ""
    Settings: type = None  # the frozen dataclass of its sweep-file keys

    @classmethod
    def budget_of(cls, settings, space: SearchSpace) -> int:
        """How many trials the strategy runs with these settings over ``space``."""
        return settings.trials

    @classmethod
    def from_settings(cls, settings, space: SearchSpace, metric: str, mode: str, seed: int,
                      state_file=None) -> Strategy:
        return cls(space, metric, mode, settings.trials, seed=seed, state_file=state_file)

    def __init__(self, space: SearchSpace, metric: str, mode: str, budget: int, seed: int,
                 state_file: str | os.PathLike | None = None):
        super().__init__(metric=metric, mode=mode)
        self.space = space
        self.budget = int(budget)
        self.seed = int(seed)
        self.state_file = str(state_file) if state_file else None
        self.trials: dict[str, TrialRecord] = {}
        self.rounds: list[RoundRecord] = []
        self.restored: RestoredTrials | None = None  # the open trials at Tune's restore
        self._index()

    def _index(self) -> None:
        """What the driver would otherwise scan every trial for, per suggestion or per
        end: each round's trials ended, and the best ended trial. Kept as trials end,
        rebuilt from ``trials`` on restore (the trials started are the rounds' own count)."""
        self.ended: dict[int, int] = {}  # round -> trials of it that ended
        self.best_id: str | None = None  # the best ended trial with a finite score
        self.known = 0  # trials evaluated elsewhere (add_evaluated_point)
        self.open = {tid for tid, rec in self.trials.items() if not rec.done}  # running
        self._dirty = True  # strategy.json behind what report() says
        for tid, rec in self.trials.items():
            self.known += rec.known
            if rec.done:
                self._count_end(tid, rec)

    @property
    def suggested(self) -> int:
        """Trials this strategy suggested (its budget's count): not the known ones."""
        return len(self.trials) - self.known

    @property
    def started(self) -> dict[int, int]:
        """round -> trials suggested in it."""
        return {r.round: r.trials for r in self.rounds}

    # -- Ray Tune's interface ------------------------------------------------------------

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """The Tuner's metric, mode and ``param_space`` (Tune hands them over only with
        a param_space). One of constants is accepted, with the metric and mode (True):
        Tune merges the constants under each suggestion. One with search domains
        (``tune.uniform(...)``) is refused as Ray's own searchers refuse it, taking
        nothing (False): the space is the strategy's, so Tune stops with a clear error
        rather than hand the trainable a domain raw."""
        _, domains, grids = parse_spec_vars(config or {})
        if domains or grids:
            return False
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        return True

    def suggest(self, trial_id: str):
        if not self._metric or self._mode not in ("min", "max"):
            raise ValueError(
                f"the {self.kind} strategy has no metric and mode: give them to searcher() "
                "or make_strategy (Tune hands TuneConfig's to a searcher only with a "
                "param_space)")
        if self.suggested >= self.budget:
            return Searcher.FINISHED
        nxt = self._next(trial_id)
        if nxt is None or nxt == Searcher.FINISHED:
            return nxt
        round_, unit = nxt
        config = self.space.config_from_unit(unit)
        trial_seed = self.seed * 100_003 + self.suggested
        self.trials[trial_id] = TrialRecord(round_, [float(u) for u in unit], dict(config))
        self.open.add(trial_id)
        if self.rounds and self.rounds[-1].round == round_:
            self.rounds[-1].trials += 1
        return {**config, ROUND_KEY: round_, SEED_KEY: trial_seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.restored:
            self.restored.heard(trial_id)
        rec = self.trials.get(trial_id)
        if rec is not None:
            for metrics in reported_epochs(result):
                rec.score = self._better(rec.score, metrics.get(self.metric))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if self.restored:
            self.restored.heard(trial_id)
        rec = self.trials.get(trial_id)
        if rec is None:
            return
        if result:
            rec.score = self._better(rec.score, result.get(self.metric))
        if not rec.done:
            rec.done, rec.error = True, bool(error)
            self._count_end(trial_id, rec)
        elif rec.error and not error:  # Tune resumed it after it failed (resume_errored)
            rec.error = False
            self._index()  # ranked again, now with its score
        self._on_complete(trial_id)
        if self._dirty:
            self.write_state()

    def add_evaluated_point(self, parameters: dict, value, error: bool = False,
                            pruned: bool = False, intermediate_values=None) -> None:
        """A configuration evaluated elsewhere (Ray's hook for known results, e.g. earlier
        trials or production's hyperparameters): ranked with the strategy's own trials
        (the best, coarse-to-fine's next box, TPE's model), outside its budget.

        Raises:
            ValueError: a tuned parameter missing, an unknown one, or a value outside
                the space.
        """
        unit = known_unit(self.space, parameters)
        tid = f"known_{self.known:05d}"
        rec = TrialRecord(-1, unit, self.space.config_from_unit(unit), done=True,
                          error=bool(error), known=True)
        rec.score = self._better(None, value)
        for v in intermediate_values or ():
            rec.score = self._better(rec.score, v)
        self.trials[tid] = rec
        self.known += 1
        self._count_end(tid, rec)
        self._on_known(tid, rec, bool(pruned))

    def _on_known(self, trial_id: str, rec: TrialRecord, pruned: bool) -> None:
        """Subclasses with a model of their own (TPE) hear of a known trial here."""

    def _count_end(self, trial_id: str, rec: TrialRecord) -> None:
        self.open.discard(trial_id)
        self.ended[rec.round] = self.ended.get(rec.round, 0) + 1
        score = self.score_of(rec)
        if math.isfinite(score) and (self.best_id is None or self.objective.better(
                score, self.score_of(self.trials[self.best_id]))):
            self.best_id = trial_id

    def save(self, checkpoint_path: str) -> None:
        """The strategy's state as JSON, not a pickle: a file in the trial storage must
        not be able to run code on --resume (Tune's own tuner.pkl still can: see
        docs/reliability-security.md)."""
        atomic_write(checkpoint_path, json.dumps(self._state()))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, encoding="utf-8") as f:
            self._load_state(json.loads(f.read()))

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """Tune's restore: also notes the trials still open, for ``settle_restored``."""
        super().restore_from_dir(checkpoint_dir)
        self.restored = RestoredTrials(
            checkpoint_dir, [tid for tid, rec in self.trials.items() if not rec.done])

    settle_s = 60.0  # after a restore: how long a trial open at the snapshot may stay silent

    def settle_restored(self) -> bool:
        """Ends the trials open at a restore that Tune will not run again (see
        ``_restored``); each keeps its best score so far, and still counts if it reports
        after all. Returns whether any ended."""
        ended = self.restored.ended(self.settle_s) if self.restored else {}
        for tid, error in ended.items():
            self.on_trial_complete(tid, None, error=error)
        return bool(ended)

    # -- for subclasses ------------------------------------------------------------------

    def _next(self, trial_id: str):
        raise NotImplementedError

    def _on_complete(self, trial_id: str) -> None:
        """Called after a trial is marked done; coarse-to-fine closes rounds here."""

    def _state(self) -> dict:
        """What save writes: plain JSON values only (subclasses add theirs)."""
        return {"trials": {k: asdict(v) for k, v in self.trials.items()},
                "rounds": [asdict(r) for r in self.rounds], "metric": self._metric,
                "mode": self._mode}

    def _load_state(self, state: dict) -> None:
        self.trials = {k: TrialRecord(**v) for k, v in state["trials"].items()}
        self.rounds = [RoundRecord(**r) for r in state["rounds"]]
        self._metric, self._mode = state["metric"], state["mode"]
        self._index()

    # -- the strategy.json the sweep's summary reads ----------------------------------

    def report(self) -> dict:
        """What the sweep's summary needs: the rounds with their boxes, in values."""
        return {"strategy": self.kind, "rounds": rounds_in_values(self.space, self.rounds)}

    def write_state(self) -> None:
        """Writes ``report()`` as JSON beside the sweep, for the driver's summary: when a
        round opens or its box changes, not at every trial's end (its size does not grow
        with the trials: each round's count of trials is the event log's to tell)."""
        self._dirty = False
        if not self.state_file:
            return
        os.makedirs(os.path.dirname(self.state_file) or ".", exist_ok=True)
        atomic_write(self.state_file, json.dumps(self.report(), indent=1, default=str))
