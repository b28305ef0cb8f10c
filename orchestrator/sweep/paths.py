"""Where a sweep keeps what, and that place's lifecycle around a run.

A sweep's own folder, ``<workdir>/<name>/`` (event log, strategy state, summary,
plots, model), is always on the driver's machine. Ray Tune's trial storage (a
folder per trial, checkpoints) is ``<workdir>/ray/<name>/`` unless ``storage``
(``--storage``, the sweep's ``storage:``) puts it on a shared folder or an object
store (``orchestrator.cluster.storage``).

Before a run everything is checked and nothing changed (``check_start``,
``check_free_space``, ``trial_storage``); then ``move_aside`` (``--fresh``) and
``record_origin``; after a failure, ``disk_full`` tells whether the disk was why.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from models.files import atomic_write
from orchestrator.cluster.storage import Storage
from orchestrator.sweep.records import LOG_FILE
from orchestrator.sweep.spec import SweepSpec
from searchspaces.errors import CaviarError, Failure

ORIGIN_FILE = "origin.json"  # where the sweep was started: Tune's snapshot holds that path
MIN_FREE_BYTES = 16 * 2**20  # below this the workdir's disk is full for a sweep's purposes


class SweepError(CaviarError):
    """The sweep cannot start or go on; the message says why and what to do (exit 2)."""


class DiskFull(Failure):
    """The disk holding the workdir filled up mid-sweep: exit 1, with the way on."""


@dataclass(frozen=True)
class SweepPaths:
    """Where a sweep keeps what: its own folder, and Ray Tune's trial storage."""

    workdir: Path  # resolved
    dir: Path  # <workdir>/<name>: the event log, summary.json, trials.csv, plots, model
    storage: Storage  # Tune's storage_path: <workdir>/ray, a shared folder or s3://...
    experiment: Storage  # <storage>/<name>: Tune's experiment, a folder per trial

    @classmethod
    def of(cls, name: str, workdir: str | Path, storage: str | None = None) -> SweepPaths:
        workdir = Path(workdir).expanduser().resolve()
        store = Storage(storage or workdir / "ray")
        return cls(workdir, workdir / name, store, store / name)


def _free(paths: SweepPaths) -> int:
    paths.workdir.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(paths.workdir).free


def check_free_space(spec: SweepSpec, paths: SweepPaths) -> None:
    """A disk already full is refused before anything is written (exit 2)."""
    free = _free(paths)
    if free < MIN_FREE_BYTES:
        raise SweepError(f"{paths.workdir}: its disk has {free / 2**20:.1f} MB free, under the "
                         f"{MIN_FREE_BYTES // 2**20} MB a sweep needs for its records and "
                         "checkpoints: free some space, or pass another --workdir")


def disk_full(spec: SweepSpec, paths: SweepPaths) -> DiskFull | None:
    """After a sweep failed or lost trials: the reason in one paragraph when it was the
    disk (a full disk shows up as torch's "unexpected pos", sqlite's "disk is full"...)."""
    free = _free(paths)
    if free >= MIN_FREE_BYTES:
        return None
    # no .tmp is left: models.files.atomic_path removes its own when a write fails
    return DiskFull(f"the disk holding {paths.workdir} is full ({free / 2**20:.1f} MB free): "
                    f"sweep {spec.name!r} stopped with what it had recorded; free some "
                    f"space, then `caviar sweep {spec.source} --resume --workdir {paths.workdir}`")


def check_start(spec: SweepSpec, paths: SweepPaths, resume: bool, fresh: bool) -> None:
    """A resume needs a sweep to resume; a new sweep needs its name free, or ``fresh``
    (then the old one is moved aside by ``move_aside``). Checks only: changes nothing."""
    from ray import tune

    problem = paths.storage.reachable()
    if problem:
        raise SweepError(f"trial storage {paths.storage} cannot be used: {problem}. Check "
                         "the sweep's 'storage' (or --storage) and, for an object store, "
                         "AWS_ENDPOINT_URL and the credentials in the environment")
    if resume:
        if not tune.Tuner.can_restore(*paths.experiment.tune_location()):
            where = "" if paths.storage.path == paths.workdir / "ray" else \
                f" (trial storage {paths.storage})"
            raise SweepError(f"nothing to resume: no sweep {spec.name!r} in {paths.workdir}"
                             f"{where} (run it without --resume)")
        _check_origin(spec, paths)
        return
    if not (paths.experiment.exists() or (paths.dir / LOG_FILE).exists()):
        return
    if not fresh:
        raise SweepError(f"sweep {spec.name!r} already exists in {paths.workdir}: "
                         "--resume to continue it, --fresh to start over (the old one is "
                         "moved aside), or change 'name'")


def _check_origin(spec: SweepSpec, paths: SweepPaths) -> None:
    """Refuses to resume a sweep whose workdir was moved or copied: Tune's snapshot
    (a pickle) holds the old paths, so the resumed driver would write its event log and
    strategy state there, into the original of a copy."""
    origin = paths.dir / ORIGIN_FILE
    if not origin.exists():
        return  # started by an earlier caviar, which did not record it
    started_in = json.loads(origin.read_text()).get("workdir")
    if started_in != str(paths.workdir):
        raise SweepError(f"sweep {spec.name!r} was started in {started_in} and has been moved "
                         f"or copied to {paths.workdir}: Ray Tune's snapshot keeps the old "
                         "paths, so a resume here would write into the old place. Resume it "
                         f"in {started_in} (move it back), or start over here with --fresh")


def record_origin(paths: SweepPaths) -> None:
    if not (paths.dir / ORIGIN_FILE).exists():
        atomic_write(paths.dir / ORIGIN_FILE, json.dumps(
            {"workdir": str(paths.workdir), "storage": str(paths.storage)}))


def started_storage(name: str, workdir: str | Path) -> str | None:
    """The trial storage the sweep ``name`` in ``workdir`` was started with (a resume
    goes on there unless told otherwise); None when unknown."""
    origin = Path(workdir).expanduser().resolve() / name / ORIGIN_FILE
    try:
        return json.loads(origin.read_text()).get("storage")
    except (OSError, ValueError):
        return None


def trial_storage(spec: SweepSpec, workdir: str | Path, storage: str | None,
                  resume: bool) -> str | None:
    """The sweep's trial storage: ``storage`` (checked), else the sweep's; on resume the
    one it started with, and nothing else. None: the default, ``<workdir>/ray``."""
    from orchestrator.cluster.storage import check_location

    if storage is not None:
        problem = check_location(storage)
        if problem:
            raise SweepError(f"--storage: {problem}")
    chosen = storage or spec.storage
    started = started_storage(spec.name, workdir) if resume else None
    if started is None:
        return chosen
    if chosen is not None and Storage(chosen) != Storage(started):
        raise SweepError(f"sweep {spec.name!r} was started with its trials in {started}; "
                         f"resuming it with {chosen} (from --storage, $CAVIAR_STORAGE or "
                         f"its file) would find none of them: resume with {started}, or "
                         "start over there with --fresh")
    return started


def move_aside(paths: SweepPaths) -> None:
    """``--fresh``: the earlier sweep of the name moved aside, stamped with the time. Done
    only once the whole input is checked: a bad data file must not cost the old sweep."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if paths.dir.exists():
        shutil.move(str(paths.dir), str(paths.dir.with_name(f"{paths.dir.name}.old-{stamp}")))
    name = paths.experiment.name
    if paths.storage.exists(name):
        paths.storage.move(name, paths.storage / f"{name}.old-{stamp}")


def warn_local_storage(paths: SweepPaths, stream) -> None:
    """On a cluster of several nodes, trial storage on this machine's disk is a mistake
    unless it is a shared mount: trials on other nodes write their checkpoints (and
    best.pt, which the model is exported from) to their own disks."""
    import ray

    if paths.storage.remote or len([n for n in ray.nodes() if n.get("Alive")]) < 2:
        return
    print(f"caviar: warning: trial storage {paths.storage} is a folder, and this cluster has "
          "several nodes: unless it is mounted at that path on every node (NFS), trials "
          "elsewhere keep their checkpoints on their own disks (no resume elsewhere, no "
          "exported model). Use an object store: --storage s3://BUCKET/PREFIX",
          file=stream, flush=True)
