"""``caviar retune``: re-tune production when it is stale (from cron)."""

from __future__ import annotations

import json

from orchestrator.cli._common import (
    UsageError,
    add_address,
    add_command,
    add_flag,
    add_storage,
    add_tracking_uri,
    checked_storage,
)
from searchspaces.errors import EXIT_OK

REPORTED = ("model", "decision", "stale", "reasons", "production_version", "new_version",
            "dry_run")


def cmd_retune(args) -> int:
    """Check whether the production version of a registered model is stale (age, data
    drift, hardware, accuracy decay); if it is, run a search warm-started from its
    hyperparameters on today's data, retrain production's and the challenger's
    hyperparameters with several seeds, and promote only a model that is really better.
    Safe to run from cron: one job per model at a time. Prints a report on stderr and,
    when it ends with exit 0, one JSON line with the decision on stdout (with --dry-run:
    not_stale or would_retune)."""
    from orchestrator.retune.job import run_retune
    from orchestrator.retune.spec import load_retune

    spec = load_retune(args.file)
    if not args.dry_run:  # a search may run: what it needs must work, not fail in months
        from orchestrator.cluster.connect import CLIENT_REFUSED, client_address

        if client_address(args.address):
            raise UsageError(f"--address / RAY_ADDRESS: {CLIENT_REFUSED} (a --dry-run may "
                             "use a ray:// address: it trains nothing)")
        checked_storage(args.storage or spec.sweep.storage, reach=True)
    report = run_retune(spec, args.workdir, tracking_uri=args.tracking_uri,
                        address=args.address, dry_run=args.dry_run, force=args.force,
                        storage=args.storage)
    print(json.dumps({k: report.get(k) for k in REPORTED}))
    return EXIT_OK


def add_retune(sub, common) -> None:
    p = add_command(sub, common, "retune", cmd_retune, "re-tune production when it is stale",
                    epilog="Exit codes: 0 done (whatever the decision: not_stale, "
                    "promoted, refreshed, kept), 1 failure (production unchanged), 2 bad "
                    "input, 3 another retune of this model holds the lock.")
    p.add_argument("file", metavar="RETUNE", help="a re-tune YAML file")
    add_flag(p, "--dry-run", help="measure the triggers and say whether it would re-tune "
             "(decision not_stale or would_retune); train and move nothing, take no lock; "
             "the job's MLflow run is still recorded")
    add_flag(p, "--force", help="re-tune even when no trigger fires")
    add_address(p, "a Ray cluster to run the search and the gate on")
    add_storage(p, " (the search's)")
    add_tracking_uri(p, "the MLflow store holding the model", "the file's tracking.uri",
                     "its sweep's tracking.uri")
