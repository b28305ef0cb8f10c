"""``caviar sweep``, ``submit``, ``sync`` and ``ui``: a sweep run here or on a cluster,
its records written to MLflow, and the MLflow UI to browse them."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from orchestrator.cli._common import (
    UsageError,
    add_address,
    add_command,
    add_flag,
    add_option,
    add_storage,
    add_tracking_uri,
    checked_storage,
)
from searchspaces.errors import EXIT_FAILURE, EXIT_OK
from searchspaces.yamlio import load_mapping


def cmd_sweep(args) -> int:
    """Run a whole study with Ray Tune: the sweep file's strategy, scheduler and budget,
    on a local Ray started in this process or on a cluster (--address). Progress goes to
    stderr; the best trial's JSON to stdout; summary.json and trials.csv to
    WORKDIR/NAME/."""
    from orchestrator.sweep.spec import load_sweep

    spec = load_sweep(args.file)
    if args.resume and args.fresh:
        raise UsageError("--resume and --fresh exclude each other")
    from orchestrator.sweep.run import run_sweep

    summary = run_sweep(spec, args.workdir, address=args.address, resume=args.resume,
                        fresh=args.fresh, tracking_uri=args.tracking_uri, storage=args.storage)
    print(json.dumps(summary["best"]))
    return EXIT_OK


def cmd_sync(args) -> int:
    """Write to MLflow what sweeps in WORKDIR recorded while the tracking server could not
    be reached. Nothing already written is written again."""
    from orchestrator.sweep.export import sync_workdir

    return EXIT_FAILURE if sync_workdir(args.workdir, args.tracking_uri, sys.stderr) else EXIT_OK


def cmd_ui(args) -> int:
    """Start the MLflow UI for WORKDIR's embedded store (sqlite:///WORKDIR/mlflow.db) on
    127.0.0.1 and print its address. Ctrl-C stops it."""
    from orchestrator.tracking.store import embedded_uri
    from orchestrator.tracking.ui import start_ui, stop_ui

    server, url, pages = start_ui(args.workdir, args.port)
    print(f"caviar: MLflow UI for {embedded_uri(args.workdir)} at {url} (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    for line in pages:
        print(line, file=sys.stderr, flush=True)

    def on_term(signum, frame):  # `kill`, systemd, a closed terminal: as Ctrl-C
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        stop_ui(server)  # the server's whole process group, whatever ended the wait


def cmd_submit(args) -> int:
    """Send a sweep to a Ray cluster as a Ray Job: caviar's code, the sweep with its space
    inline and a local data file go as the job's working directory; the job runs `caviar
    sweep` on the cluster. Streams the job's log to stderr and prints the job id on
    stdout. Exit 0 when the job succeeded, 1 when it failed or was stopped."""
    from orchestrator.cluster.submit import submit
    from orchestrator.sweep.spec import job_file, parse_sweep

    raw = load_mapping(args.file)
    spec = parse_sweep(raw, args.file, Path(args.file).resolve().parent)
    sweep, files = job_file(spec, raw)
    job_id, status = submit(spec.name, sweep, files, args.address, args.workdir,
                            wait=not args.no_wait, resume=args.resume,
                            storage=checked_storage(args.storage))
    print(job_id)
    if status in ("FAILED", "STOPPED"):
        print(f"caviar: job {job_id} {status.lower()}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_sweep(sub, common) -> None:
    p = add_command(sub, common, "sweep", cmd_sweep, "run a sweep with Ray Tune")
    add_option(p, "sweep")
    add_address(p, "a Ray cluster to join from one of its nodes, e.g. HEAD:6379 (from "
                "elsewhere, send the sweep with caviar submit)")
    add_option(p, "--resume", "continue the sweep whose driver died: finished trials are "
               "kept, unfinished ones continue from their last checkpoint")
    add_flag(p, "--fresh", help="start over: an earlier sweep of the same name is moved aside")
    add_tracking_uri(p, "MLflow tracking server or store", "the sweep's tracking.uri")
    add_storage(p)


def add_sync(sub, common) -> None:
    p = add_command(sub, common, "sync", cmd_sync, "write records that waited to MLflow")
    add_tracking_uri(p, "where to write", default="where each sweep was tracking")


def add_ui(sub, common) -> None:
    p = add_command(sub, common, "ui", cmd_ui, "the MLflow UI for the embedded store")
    p.add_argument("--port", type=int, default=5000, help="default %(default)s")


def add_submit(sub, common) -> None:
    # Not ``common``: its --workdir is the cluster's, with a default of its own.
    p = add_command(sub, None, "submit", cmd_submit, "send a sweep to a Ray cluster as a "
                    "Ray Job")
    add_option(p, "sweep")
    p.add_argument("--address", required=True,
                   help="the cluster's dashboard, e.g. http://HEAD:8265")
    p.add_argument("--workdir", default="~/caviar-runs",
                   help="the workdir on the cluster's head, where the sweep's records go "
                   "(default: %(default)s of the job's user); on a multi-node cluster put "
                   "trial storage on an object store or NFS (--storage)")
    add_flag(p, "--no-wait", help="print the job id and return without following the job")
    add_option(p, "--resume", "resume the sweep on the cluster")
    add_storage(p, " on the cluster")
