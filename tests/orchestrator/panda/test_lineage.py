"""The lineage's bookkeeping (which branch holds which epoch), the status line's
sparkline, and the trainer's in-place hyperparameter change: pure, no services."""

from __future__ import annotations

import pytest
import torch

from models.config import HParams
from orchestrator.panda.lineage import Branch, Lineage
from orchestrator.panda.status import sparkline


def lineage_with_forks() -> Lineage:
    """b0 trained 1..9; b1 went on from b0@3 to 7; b2 from b1@5; b3 from b0@8."""
    lin = Lineage("x", {"lr": 0.1}, 20, [Branch("b0", "r0")])
    lin.fork("r1", "b0", 3)
    lin.fork("r2", "b1", 5)
    lin.fork("r3", "b0", 8)
    return lin


@pytest.mark.parametrize("epoch, line, owner", [
    (0, "b2", "b0"), (3, "b2", "b0"), (4, "b2", "b1"), (5, "b2", "b1"), (6, "b2", "b2"),
    (3, "b1", "b0"), (9, "b1", "b1"), (8, "b3", "b0"), (9, "b3", "b3"), (9, "b0", "b0"),
])
def test_the_owner_of_an_epoch_is_found_up_the_forks(epoch, line, owner):
    assert lineage_with_forks().owner(epoch, line).id == owner


def test_forks_abandon_the_branch_left_and_round_trip_through_json():
    lin = lineage_with_forks()
    assert lin.current == "b3" and [b.id for b in lin.line()] == ["b0", "b3"]
    assert [(b.id, upto) for b, upto in lin.spans("b2")] == [("b0", 3), ("b1", 5),
                                                             ("b2", float("inf"))]
    assert [b.status for b in lin.branches] == ["abandoned"] * 3 + ["running"]
    lin.record("nudge", 9, "req-1", set={"lr": 0.05})
    again = Lineage.from_dict(lin.to_dict())
    assert again == lin and again.handled("req-1") and not again.handled("req-2")
    with pytest.raises(KeyError):
        lin.branch("b9")


def test_the_sparkline_spans_the_range_and_marks_what_is_not_finite():
    assert sparkline([1.0, 0.5, 0.0]) == "█▅▁"
    assert sparkline([0.3, float("nan"), 0.3]) == "▁!▁"
    assert sparkline([]) == ""


def test_new_hyperparameters_go_into_the_optimizer_in_place_keeping_its_state(tiny_data):
    from models.config import MLPConfig
    from models.train import TrainingRun

    run = TrainingRun(tiny_data, MLPConfig(hidden_units=8), HParams(lr=0.1, momentum=0.9),
                      0, torch.device("cpu"))
    run.train_epoch()
    buffers = {k: v["momentum_buffer"].clone() for k, v in run.optimizer.state.items()}
    run.set_hparams(HParams(lr=0.01, momentum=0.5, lr_decay=1.0))
    group = run.optimizer.param_groups[0]
    assert group["momentum"] == 0.5 and group["lr"] == pytest.approx(0.01 / 2)  # decayed
    assert all(torch.equal(run.optimizer.state[k]["momentum_buffer"], v)
               for k, v in buffers.items())
    with pytest.raises(ValueError, match="cannot become 'adam' in place"):
        run.set_hparams(HParams(optimizer="adam"))
