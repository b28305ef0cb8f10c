"""A babysat run's lineage: its branches and every decision made about it.

The first branch, ``b0``, starts at epoch 0. A revert to epoch K starts a new branch
that continues from K: its epochs are K+1, K+2, ... and the epochs up to K belong to
the branch it forked from (its checkpoints are there). So the model of any epoch on
any branch's line is found by walking up the forks (``owner``).

Every decision is an event: what was asked (a nudge's values, a revert's epoch), the
epoch the run had completed when it was applied, and the epoch it takes effect from.
Requests from the command line carry an id, so a worker restarted after applying one
but before clearing it does not apply it twice.

Pure data: the worker and the commands read and write it as ``lineage.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

FORMAT = 1


@dataclass
class Branch:
    id: str  # b0, b1, ...
    run_id: str  # its MLflow child run
    parent: str | None = None  # the branch it forked from
    from_epoch: int = 0  # it continues from this epoch's checkpoint
    status: str = "running"  # running, abandoned, stopped, completed


@dataclass
class Lineage:
    """What happened to one babysat model, in order."""

    name: str
    hparams: dict  # the trainer's hyperparameters in force now
    epochs: int  # the epochs to train in all
    branches: list[Branch] = field(default_factory=list)
    current: str = "b0"
    paused: bool = False
    events: list[dict] = field(default_factory=list)

    def branch(self, branch_id: str | None = None) -> Branch:
        """The branch named (default: the current one); KeyError when there is none."""
        branch_id = branch_id or self.current
        for b in self.branches:
            if b.id == branch_id:
                return b
        raise KeyError(branch_id)

    def line(self, branch_id: str | None = None) -> list[Branch]:
        """The branch and those it forked from, oldest first."""
        out, b = [], self.branch(branch_id)
        while True:
            out.insert(0, b)
            if b.parent is None:
                return out
            b = self.branch(b.parent)

    def spans(self, branch_id: str | None = None) -> list[tuple[Branch, float]]:
        """The line's branches, oldest first, each with the last epoch of the line it
        holds (the next branch's fork; the newest holds all that follow: inf)."""
        line = self.line(branch_id)
        return [(b, after.from_epoch if after else float("inf"))
                for b, after in zip(line, [*line[1:], None])]

    def owner(self, epoch: int, branch_id: str | None = None) -> Branch:
        """The branch whose run holds epoch ``epoch``'s checkpoint on ``branch_id``'s line."""
        for b in reversed(self.line(branch_id)):
            if b.parent is None or epoch > b.from_epoch:
                return b
        raise AssertionError("unreachable: the first branch owns every epoch")

    def fork(self, run_id: str, parent: str, from_epoch: int) -> Branch:
        """A new branch from ``parent``'s line at ``from_epoch``; it becomes current."""
        self.branch().status = "abandoned"
        new = Branch(f"b{len(self.branches)}", run_id, parent, from_epoch)
        self.branches.append(new)
        self.current = new.id
        return new

    def record(self, kind: str, epoch: int, request: str | None = None, **values) -> dict:
        """Appends one event: ``kind`` at ``epoch`` epochs completed, on the current branch."""
        event = {"kind": kind, "epoch": epoch, "branch": self.current, "time": time.time(),
                 **({"request": request} if request else {}), **values}
        self.events.append(event)
        return event

    def handled(self, request: str) -> bool:
        return any(e.get("request") == request for e in self.events)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Lineage:
        d = {k: v for k, v in d.items() if k != "format"}
        branches = [Branch(**b) for b in d.pop("branches")]
        return cls(branches=branches, **d)
