"""After ``Tuner.restore``: which trials open at the snapshot Tune will not run again.

``Tuner.restore`` with ``resume_unfinished=False`` ends the trials open at the
snapshot, and with ``restart_*`` re-runs them under new ids, without telling the
searcher (a coarse-to-fine round would wait for them forever). Tune's own experiment
snapshot says which it ended or replaced; a trial it says nothing of counts as ended
once it has stayed silent for a while (Tune writes no snapshot while it waits for a
suggestion with nothing running).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def tune_statuses(directory: str, since: float) -> dict[str, str] | None:
    """trial id -> status in Tune's newest experiment snapshot in ``directory`` written
    at or after ``since`` (read as plain JSON: nothing in it is unpickled); None if none."""
    files = [(p.stat().st_mtime, p) for p in Path(directory).glob("experiment_state-*.json")]
    files = [f for f in files if f[0] >= since]
    if not files:
        return None
    try:
        state = json.loads(max(files)[1].read_text(encoding="utf-8"))
        return {t["trial_id"]: t["status"]
                for t in (json.loads(s) for s, _ in state["trial_data"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # mid-write or another layout: try again later


class RestoredTrials:
    """The trials open when Tune restored a strategy from ``tune_dir`` that have not
    been heard of since."""

    def __init__(self, tune_dir: str, open_ids, every_s: float = 2.0):
        self.tune_dir = tune_dir
        self.unheard = set(open_ids)
        self.restored_at = time.time()
        self.every_s = every_s  # how often to read Tune's snapshot
        self._looked_at = 0.0

    def heard(self, trial_id: str) -> None:
        """Tune reported on the trial: it runs, or has ended and said so."""
        self.unheard.discard(trial_id)

    def ended(self, silent_s: float) -> dict[str, bool]:
        """trial id -> whether it errored, for each unheard trial Tune will not run
        again: one that Tune's snapshot since the restore shows ended or gone, or any
        once ``silent_s`` have passed since the restore. Empty when looked less than
        ``every_s`` ago."""
        if not self.unheard or time.monotonic() - self._looked_at < self.every_s:
            return {}
        self._looked_at = time.monotonic()
        silent = time.time() - self.restored_at >= silent_s
        statuses = tune_statuses(self.tune_dir, since=self.restored_at) or {}
        return {tid: statuses.get(tid) == "ERROR" for tid in sorted(self.unheard)
                if silent or statuses
                and statuses.get(tid, "TERMINATED") in ("TERMINATED", "ERROR")}
