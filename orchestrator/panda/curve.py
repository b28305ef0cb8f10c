"""The babysat run's learning curve: val_loss (and train_loss) by epoch for every
branch, the current line solid and abandoned branches dashed, each nudge and revert
marked at the epoch it took effect from. Logged to the parent run as ``curve.png``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from models.files import atomic_path
from orchestrator.panda.channel import CURVE_FILE, Record
from orchestrator.panda.lineage import Lineage


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no screen: the worker may run anywhere
    import matplotlib.pyplot as plt

    return plt


def _line_points(lineage: Lineage, histories: dict, branch_id: str) -> list[tuple[int, float]]:
    """(epoch, val_loss) along a branch, joined to the epoch it forked from."""
    b = lineage.branch(branch_id)
    points = sorted((e, m["val_loss"]) for e, m in histories.get(b.id, {}).items()
                    if "val_loss" in m)
    if b.parent is not None:
        start = histories.get(lineage.owner(b.from_epoch, b.parent).id, {}).get(b.from_epoch)
        if start and "val_loss" in start:
            points.insert(0, (b.from_epoch, start["val_loss"]))
    return points


def plot_curve(lineage: Lineage, histories: dict[str, dict[int, dict]], out: Path) -> Path:
    """Draws the curve into ``out`` (PNG, written atomically)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    kept_until = {b.id: upto for b, upto in lineage.spans()}
    for b in lineage.branches:
        points = _line_points(lineage, histories, b.id)
        upto = kept_until.get(b.id, -1)  # the current line: solid; what was left: dashed
        on = [p for p in points if p[0] <= upto]
        off = [p for p in points if p[0] >= upto] if upto >= 0 else points
        for part, style in ((on, "-"), (off, "--")):
            if len(part) > 1 or (part and style == "-"):
                xs, ys = zip(*part)
                ax.plot(xs, ys, style, marker=".", alpha=1.0 if style == "-" else 0.5,
                        color=f"C{int(b.id[1:]) % 10}",
                        label=f"{b.id} val_loss" + (" (left)" if style == "--" else ""))
    for e in lineage.events:
        if e["kind"] in ("nudge", "revert"):
            x = e["from_epoch"] - 0.5
            what = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in e.get("set", {}).items())
            if e["kind"] == "revert":
                what = f"revert to {e['to_branch']}@{e['to_epoch']}" + (f" {what}" if what else "")
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax.annotate(what, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_loss")
    ax.set_title(f"babysat run {lineage.name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return out


def log_curve(record: Record, lineage: Lineage) -> None:
    """The curve of every branch as the parent run's ``curve.png``; a failure is said,
    not raised (the record stands without its picture)."""
    try:
        histories = {b.id: record.history(b, ("train_loss", "val_loss"))
                     for b in lineage.branches}
        with tempfile.TemporaryDirectory(prefix="caviar-") as d:
            out = plot_curve(lineage, histories, Path(d) / CURVE_FILE)
            record.client.log_artifact(record.run_id, str(out))
    except Exception as e:  # noqa: BLE001 - the record stands without its picture
        print(f"caviar: could not draw the curve ({type(e).__name__}: {e})", file=sys.stderr)
