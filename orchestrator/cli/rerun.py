"""``caviar rerun``: a finished trial trained again from its MLflow record."""

from __future__ import annotations

import json
import sys

from orchestrator.cli._common import (
    UsageError,
    add_address,
    add_command,
    add_flag,
    add_option,
    add_tracking_uri,
    json_safe,
)
from searchspaces.errors import EXIT_FAILURE, EXIT_OK


def _client(args):
    from orchestrator.tracking.store import (
        check_store,
        ensure_sqlite_store,
        mlflow_client,
        resolve_uri,
    )

    uri = resolve_uri(args.tracking_uri, None, args.workdir)
    check_store(uri, what="the trial")
    ensure_sqlite_store(uri)
    return mlflow_client(uri)


def _run_id(args, client) -> str:
    from orchestrator.rerun.recipe import find_trial

    if args.run_id and (args.trial or args.sweep):
        raise UsageError("give RUN_ID, or --trial ID --sweep NAME, not both")
    if args.run_id:
        return args.run_id
    return find_trial(client, args.sweep, args.trial)


def _check_args(args) -> None:
    """What the command line asks, checked before any store is opened or data read."""
    import torch

    if not args.run_id and not (args.trial and args.sweep):
        raise UsageError("caviar rerun needs a trial's RUN_ID, or --trial ID --sweep NAME")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.device is None or args.device == "cpu":
        return
    if not args.device.startswith("cuda") or args.device not in (
            "cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise UsageError(f"--device {args.device!r}: this machine has cpu"
                         + (f" and cuda:0 to cuda:{found - 1}" if found else " only (no GPU "
                            "torch can use)"))


def _print_table(rows: list[dict], out) -> None:
    print(f"{'epoch':>5}  {'val_loss recorded':>22}  {'val_loss re-run':>22}  "
          f"{'val_acc recorded':>16}  {'val_acc re-run':>14}  {'max |diff|':>10}", file=out)
    for r in rows:
        print(f"{r['epoch']:>5}  {r['recorded_val_loss']!r:>22}  {r['rerun_val_loss']!r:>22}  "
              f"{r['recorded_val_accuracy']!r:>16}  {r['rerun_val_accuracy']!r:>14}  "
              f"{r['max_diff']:>10.3g}", file=out)


def cmd_rerun(args) -> int:
    """Rebuild a trial from its MLflow record (its hyperparameters, seed, epochs, the
    sweep's net and data, torch threads, device) and train it again, here or on
    --address. Prints each epoch's recorded and re-run metrics side by side on stderr,
    and one JSON line on stdout. The re-run is logged as its own run (tag
    caviar.rerun_of)."""
    from orchestrator.rerun.recipe import read_recipe
    from orchestrator.rerun.replay import default_device, log_rerun, retrain, retrain_on_ray

    _check_args(args)
    client = _client(args)
    recipe = read_recipe(client, _run_id(args, client))
    threads = args.threads or recipe.threads or 1
    device = args.device or default_device(recipe)
    print(f"caviar: re-running trial {recipe.trial_id} (run {recipe.run_id}): {recipe.epochs} "
          f"epochs, seed {recipe.seed}, {threads} torch thread(s), {device}", file=sys.stderr)
    if args.address:
        outcome = retrain_on_ray(recipe, threads, device, args.address, args.deterministic)
    else:
        outcome = retrain(recipe, threads, device, args.deterministic)
    rows = outcome.diffs(recipe)
    _print_table(rows, sys.stderr)
    identical, differences = outcome.identical(recipe), outcome.differences(recipe)
    rerun_id = log_rerun(client, recipe, outcome)
    gap = max((r["max_diff"] for r in rows), default=0.0)
    if identical:
        print(f"caviar: identical: every one of {len(rows)} epochs matches the record to the "
              f"last digit (logged as run {rerun_id})", file=sys.stderr)
    else:
        why = "; ".join(differences) or ("nothing recorded differs: a nondeterministic kernel "
                                         "(on a GPU, try --deterministic)")
        print(f"caviar: differs by up to {gap:.3g}: {why} (logged as run {rerun_id})",
              file=sys.stderr)
    print(json.dumps(json_safe({"run_id": recipe.run_id, "rerun_run_id": rerun_id,
                                "identical": identical, "max_diff": gap,
                                "differences": differences, "epochs": rows})))
    return EXIT_OK if identical else EXIT_FAILURE


def add_rerun(sub, common) -> None:
    p = add_command(sub, common, "rerun", cmd_rerun, "train a finished trial again from its "
                    "record", epilog="Exit codes: 0 identical to the last digit; 1 it "
                    "differs (the message says what: data, threads, device, versions) or "
                    "failed; 2 no such trial.")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the trial's MLflow run id")
    p.add_argument("--trial", metavar="ID", help="the trial's id (with --sweep)")
    p.add_argument("--sweep", metavar="NAME", help="the sweep's name (with --trial)")
    add_option(p, "--threads", "torch threads (default: the trial's)")
    add_option(p, "--device", "cpu, cuda or cuda:N (default: the trial's when this machine "
               "has it, else cpu)")
    add_flag(p, "--deterministic", help="deterministic CUDA kernels (slower; makes GPU "
             "re-runs repeat each other)")
    add_address(p, "a Ray cluster to train on")
    add_tracking_uri(p, "the MLflow store holding the trial")
