"""The ``caviar`` command.

Exit codes: 0 done; 1 failure (a bug or the environment: the message says
which); 2 bad input (a one-paragraph error naming the file, the key and the
rule; nothing is started); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

from searchspaces import STRATEGIES, SearchSpace, SpecError
from searchspaces.yamlio import load_mapping, parse_yaml

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_WORKDIR = "./caviar-runs"


class UsageError(Exception):
    """Bad command-line input (not in a file): exit 2."""


def _rules():
    from models.config import RULES

    return RULES


def _load_any(path: str):
    """(kind, SearchSpace, SweepSpec | None) for a space or sweep file."""
    from orchestrator.sweep.spec import file_kind, parse_sweep

    raw = load_mapping(path)
    kind = file_kind(raw)
    if kind == "space":
        return kind, SearchSpace.from_dict(raw, path, _rules()), None
    if kind == "retune":
        raise SpecError(path, "", "this is a re-tune job file; caviar sample and train take "
                        "a search space or a sweep file (caviar validate and caviar retune "
                        "take it)")
    sweep = parse_sweep(raw, path, Path(path).resolve().parent)
    return kind, sweep.space, sweep


def _describe(space: SearchSpace) -> str:
    lines = []
    for p in space.parameters:
        d = p.to_dict()
        prio = f", priority {p.priority}" if p.priority else ""
        if "fixed" in d:
            lines.append(f"  {p.name}: fixed {d['fixed']!r}{prio}")
        elif "choice" in d:
            lines.append(f"  {p.name}: choice of {d['choice']}{prio}")
        else:
            lines.append(f"  {p.name}: {d.get('type', 'float')} on {d['scale']} scale "
                         f"[{d['low']:g}, {d['high']:g}]{prio}")
    return "\n".join(lines)


def _validate_retune(path: str) -> None:
    from orchestrator.retune.spec import load_retune

    r = load_retune(path)
    print(f"{path}: OK: re-tune job for model {r.model!r}: triggers {', '.join(r.triggers)}; "
          f"warm search {r.search['rounds']} x {r.search['trials_per_round']} trials of sweep "
          f"{r.sweep.name!r}; gate {r.seeds} seeds, margin {r.margin:g} "
          f"({r.sweep.metric['name']}); data {r.data.source}")


def cmd_validate(args) -> int:
    from orchestrator.sweep.spec import file_kind

    for path in args.files:
        if file_kind(load_mapping(path)) == "retune":
            _validate_retune(path)
            continue
        kind, space, sweep = _load_any(path)
        tuned = len(space.tuned)
        what = f"search space with {len(space.parameters)} parameters ({tuned} tuned)"
        if sweep is not None:
            s = sweep.strategy
            what = (f"sweep {sweep.name!r}: strategy {s['kind']}, scheduler "
                    f"{sweep.scheduler['kind']}, {sweep.epochs} epochs, metric "
                    f"{sweep.metric['name']} ({sweep.metric['mode']}), data "
                    f"{sweep.data.source}; {what}")
        print(f"{path}: OK: {what}")
        if not args.quiet:
            print(_describe(space))
    return EXIT_OK


def _seed_or_draw(seed: int | None) -> int:
    if seed is not None:
        return seed
    seed = random.SystemRandom().randrange(2**31)
    print(f"caviar: no --seed given; drew seed {seed} (pass --seed {seed} to repeat)",
          file=sys.stderr)
    return seed


def cmd_sample(args) -> int:
    from searchspaces.sampling import grid_points_per_parameter, sample

    _, space, _ = _load_any(args.file)
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    seed = args.seed if args.strategy == "grid" else _seed_or_draw(args.seed)
    configs = sample(space, args.strategy, args.n, seed or 0)
    if args.strategy == "grid":
        k = grid_points_per_parameter(args.n, len(space.tuned))
        print(f"caviar: grid of {k} point(s) per tuned parameter over {len(space.tuned)} "
              f"parameter(s): {len(configs)} configurations", file=sys.stderr)
    for config in configs:
        print(json.dumps(config))
    return EXIT_OK


def _parse_sets(items: list[str], space: SearchSpace) -> dict:
    rules = _rules()
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected NAME=VALUE, e.g. --set lr=0.01")
        name, text = item.split("=", 1)
        name = name.strip()
        if name not in rules:
            import difflib

            close = difflib.get_close_matches(name, list(rules), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"--set {item!r}: the model has no parameter {name!r}{hint}; "
                             "it accepts " + ", ".join(sorted(rules)))
        try:
            value = parse_yaml(text, f"--set {name}")
        except SpecError:
            value = text
        if isinstance(value, int) and not isinstance(value, bool) and rules[name].type is float:
            value = float(value)
        problem = rules[name].check(value)
        if problem:
            raise UsageError(f"--set {item!r}: {name} {problem}, got {value!r}")
        if name in space.names and space[name].is_tuned:
            p = space[name]
            if not _inside(p, value):
                print(f"caviar: note: --set {name}={value!r} lies outside the search space "
                      f"{p.to_dict()}", file=sys.stderr)
        out[name] = value
    return out


def _inside(p, value) -> bool:
    d = p.to_dict()
    if "choice" in d:
        return value in d["choice"]
    return d["low"] <= value <= d["high"]


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def cmd_train(args) -> int:
    from models.config import split_config
    from models.data import DataSpec
    from models.data import load as load_data

    kind, space, sweep = _load_any(args.file)
    overrides = _parse_sets(args.set, space)
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if sweep is not None:
        config = sweep.trial_config(overrides)
        data_spec, base_dir = sweep.data, sweep.base_dir
        epochs = args.epochs or sweep.epochs
        seed = sweep.seed if args.seed is None else args.seed
    else:
        config = {**space.centre(), **overrides}
        data_spec, base_dir = DataSpec(), None
        epochs = args.epochs or 20
        seed = 0 if args.seed is None else args.seed
    try:
        model_config, hparams = split_config(config)
    except ValueError as e:
        raise UsageError(f"{args.file}: {e}") from None

    t0 = time.perf_counter()
    data = load_data(data_spec, base_dir)
    print(f"caviar: data {data_spec.source}: {len(data.x_train)} train / {len(data.x_val)} val "
          f"/ {len(data.x_test)} test rows, {data.n_features} features, {data.n_classes} "
          f"classes", file=sys.stderr)
    print("caviar: config " + json.dumps(config), file=sys.stderr)

    def progress(m: dict, _run) -> None:
        print(f"epoch {m['epoch']:>3}/{epochs}  train_loss {m['train_loss']:.4f}  "
              f"val_loss {m['val_loss']:.4f}  val_accuracy {m['val_accuracy']:.4f}  "
              f"lr {m['lr']:.3g}  {m['samples_per_second']:,.0f} samples/s", file=sys.stderr)

    from models.train import evaluate, fit

    result = fit(data, model_config, hparams, epochs=epochs, seed=seed, device=args.device,
                 callback=progress, num_threads=args.threads)
    import torch

    x_test = torch.as_tensor(data.x_test, device=next(result.model.parameters()).device)
    y_test = torch.as_tensor(data.y_test, device=x_test.device)
    _, test_accuracy = evaluate(result.model, x_test, y_test)
    m = result.metrics
    out = {
        "status": result.status,
        "epochs": result.epochs,
        "train_loss": m.get("train_loss"),
        "val_loss": m.get("val_loss"),
        "val_accuracy": m.get("val_accuracy"),
        "test_accuracy": test_accuracy,
        "seconds": round(time.perf_counter() - t0, 3),
        "seed": result.seed,
        "config": config,
    }
    print(json.dumps(_json_safe(out)))
    return EXIT_OK


def cmd_sweep(args) -> int:
    from orchestrator.sweep.spec import load_sweep

    spec = load_sweep(args.file)
    if args.resume and args.fresh:
        raise UsageError("--resume and --fresh exclude each other")
    from orchestrator.sweep.run import SweepError, SweepInterrupted, run_sweep

    try:
        summary = run_sweep(spec, args.workdir, address=args.address, resume=args.resume,
                            fresh=args.fresh, tracking_uri=args.tracking_uri)
    except SweepError as e:
        raise UsageError(str(e)) from None
    except SweepInterrupted as e:
        print(f"caviar: interrupted: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(summary["best"]))
    return EXIT_OK


def cmd_sync(args) -> int:
    from orchestrator.sweep.records import LOG_FILE
    from orchestrator.tracking.sink import STATE_FILE, MlflowSink, sweep_artifacts

    workdir = Path(args.workdir).expanduser()
    dirs = sorted(p.parent for p in workdir.glob(f"*/{STATE_FILE}"))
    if not dirs:
        print(f"caviar: nothing to sync in {workdir}", file=sys.stderr)
        return EXIT_OK
    failed = 0
    for d in dirs:
        state = json.loads((d / STATE_FILE).read_text())
        uri = args.tracking_uri or state["tracking_uri"]
        sink = MlflowSink(uri, state.get("experiment") or d.name, d, d / LOG_FILE, workdir)
        try:
            n = sink.sync()
            summary = d / "summary.json"
            if summary.exists() and json.loads(summary.read_text()).get("complete"):
                sink.finish(sweep_artifacts(d))
        except Exception as e:  # noqa: BLE001 - report and go on with the next sweep
            print(f"caviar: {d.name}: MLflow at {uri} failed ({type(e).__name__}: {e})",
                  file=sys.stderr)
            failed += 1
            continue
        print(f"caviar: {d.name}: {n} records written to {uri}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def _read_rows(path: str, feature_names: list):
    """Raw feature rows from a csv, parquet or npz file, in the model's feature order."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as npz:
            if "X" not in npz.files:
                raise UsageError(f"{path}: no array 'X' (the feature rows)")
            return npz["X"]
    import pandas as pd

    frame = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    missing = [c for c in feature_names if c not in frame.columns]
    if missing and frame.shape[1] == len(feature_names):
        return frame.to_numpy(dtype=float)  # unnamed columns, in training order
    if missing:
        raise UsageError(f"{path}: missing feature column(s) {', '.join(missing[:5])}; the "
                         f"model was trained on {', '.join(feature_names[:8])}...")
    return frame[feature_names].to_numpy(dtype=float)


def cmd_predict(args) -> int:
    from models.serving import META, load_model, predict
    from orchestrator.tracking.sink import resolve_uri

    model_dir = Path(args.model)
    if not (model_dir / META).is_file():
        import mlflow

        uri = resolve_uri(args.tracking_uri, None, args.workdir)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)  # models:/ URIs are looked up in the registry
        try:
            model_dir = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=args.model, tracking_uri=uri))
        except Exception as e:  # noqa: BLE001 - an unknown name, version or alias
            raise UsageError(f"{args.model}: cannot be fetched from {uri} ({e})") from None
        if not (model_dir / META).is_file():
            raise UsageError(f"{args.model}: not a caviar model (no {META})")
    net, meta = load_model(model_dir)
    rows = _read_rows(args.data, meta["feature_names"])
    try:
        labels, probs = predict(net, meta, rows)
    except ValueError as e:
        raise UsageError(f"{args.data}: {e}") from None
    for i, (label, p) in enumerate(zip(labels, probs)):
        print(json.dumps({"row": i, "class": label, "probabilities": {
            str(c): round(float(v), 6) for c, v in zip(meta["classes"], p)}}))
    return EXIT_OK


def cmd_ui(args) -> int:
    """The MLflow UI for the embedded store, on 127.0.0.1, until Ctrl-C."""
    import socket
    import subprocess

    from orchestrator.tracking.sink import embedded_uri, ensure_sqlite_store

    workdir = Path(args.workdir).expanduser().resolve()
    if not (workdir / "mlflow.db").exists():
        raise UsageError(f"{workdir}: no MLflow store here (mlflow.db) yet: run a sweep "
                         "first, or pass the --workdir it used")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            raise UsageError(f"port {args.port} on 127.0.0.1 is taken: pass --port")
    uri = embedded_uri(workdir)
    ensure_sqlite_store(uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", (workdir / "mlartifacts").as_uri(),
           "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{args.port}"
    print(f"caviar: MLflow UI for {uri} at {url} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    from mlflow import MlflowClient

    for exp in MlflowClient(uri).search_experiments():
        if exp.name != "Default":  # each sweep's runs: the parent, its trials nested under it
            print(f"  {exp.name}: {url}/#/experiments/{exp.experiment_id}/runs",
                  file=sys.stderr, flush=True)
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait(timeout=30)
        return EXIT_OK


def cmd_submit(args) -> int:
    from orchestrator.cluster.submit import submit
    from orchestrator.sweep.spec import parse_sweep

    raw = load_mapping(args.file)
    spec = parse_sweep(raw, args.file, Path(args.file).resolve().parent)
    try:
        job_id, status = submit(spec, raw, args.address, args.workdir, wait=not args.no_wait,
                                resume=args.resume)
    except ConnectionError as e:
        print(f"caviar: failed: cannot reach the Ray dashboard at {args.address} ({e}); "
              "is the cluster up, and is its dashboard port (8265) reachable?", file=sys.stderr)
        return EXIT_FAILURE
    print(job_id)
    if status in ("FAILED", "STOPPED"):
        print(f"caviar: job {job_id} {status.lower()}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _registry_client(args):
    from mlflow import MlflowClient

    from orchestrator.tracking.sink import ensure_sqlite_store, resolve_uri, store_missing

    uri = resolve_uri(args.tracking_uri, None, args.workdir)
    if store_missing(uri):
        raise UsageError(f"no MLflow store at {uri}: pass --tracking-uri, or the --workdir "
                         "of the sweep that registered the model")
    ensure_sqlite_store(uri)
    return MlflowClient(uri, registry_uri=uri), uri


def _registry_call(fn, *args):
    """A registry operation; an unknown model or version is bad input (exit 2)."""
    from orchestrator.tracking.registry import RegistryError

    try:
        return fn(*args)
    except RegistryError as e:
        raise UsageError(str(e)) from None


@contextlib.contextmanager
def _locked(client, model: str, what: str):
    """The model's re-tune lock, so that a hand-made move never races the job."""
    from orchestrator.tracking.registry import Lock, Locked

    lock = Lock(client, model, lease_s=60, what=what)
    try:
        lock.acquire()
    except Locked as e:
        print(f"caviar: locked: {e}", file=sys.stderr)
        raise SystemExit(EXIT_LOCKED) from None
    try:
        yield lock
    finally:
        lock.release()


def cmd_promote(args) -> int:
    from orchestrator.tracking.registry import promote

    client, uri = _registry_client(args)
    with _locked(client, args.model, "promote"):
        old, new = _registry_call(promote, client, args.model, args.version)
    if old == new:
        print(f"caviar: {args.model!r} version {new} is production already", file=sys.stderr)
    else:
        print(f"caviar: {args.model!r} version {new} is now production"
              + (f"; version {old} is previous (undo: caviar rollback {args.model})" if old
                 else ""), file=sys.stderr)
    return EXIT_OK


def cmd_rollback(args) -> int:
    from orchestrator.tracking.registry import rollback

    client, uri = _registry_client(args)
    with _locked(client, args.model, "rollback"):
        left, restored = _registry_call(rollback, client, args.model)
    print(f"caviar: {args.model!r} version {restored} is production again; version {left} is "
          "previous", file=sys.stderr)
    return EXIT_OK


def cmd_retune(args) -> int:
    from orchestrator.retune.job import RetuneFailed, StoreMissing, run_retune
    from orchestrator.retune.spec import load_retune
    from orchestrator.tracking.registry import Locked, RegistryError

    spec = load_retune(args.file)
    try:
        report = run_retune(spec, args.workdir, tracking_uri=args.tracking_uri,
                            address=args.address, dry_run=args.dry_run, force=args.force)
    except Locked as e:
        print(f"caviar: locked: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except StoreMissing as e:
        raise UsageError(str(e)) from None
    except RegistryError as e:
        raise SpecError(args.file, "key 'model'", str(e)) from None
    except RetuneFailed as e:
        print(f"caviar: failed: {e}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps({k: report.get(k) for k in (
        "model", "decision", "stale", "reasons", "production_version", "new_version",
        "dry_run")}))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workdir", default=os.environ.get("CAVIAR_WORKDIR", DEFAULT_WORKDIR),
                        help="where runs, checkpoints and the embedded MLflow store live "
                        "(default: $CAVIAR_WORKDIR, else ./caviar-runs; now %(default)s)")
    parser = argparse.ArgumentParser(
        prog="caviar",
        description="Tune the hyperparameters of PyTorch classifiers with Ray Tune and MLflow.",
        epilog="Exit codes: 0 done, 1 failure, 2 bad input, 3 locked (retune), 130 "
               "interrupted. "
               "Set CAVIAR_DEBUG=1 to see tracebacks of failures.",
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("caviar")
    except PackageNotFoundError:  # run from a source tree without installing
        v = "unknown"
    parser.add_argument("--version", action="version", version=f"caviar {v}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", parents=[common],
                       help="check search space, sweep or re-tune files",
                       description="Check search space, sweep or re-tune files without "
                       "running anything: every parameter's scale, bounds and names, every "
                       "sweep and re-tune key.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="a search space, sweep or re-tune YAML file")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the OK line per file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sample", parents=[common], help="print the configs a search would try",
                       description="Print the configurations a search would try, one JSON "
                       "object per line, fixed parameters included.")
    p.add_argument("file", metavar="SPACE_OR_SWEEP", help="a search space or sweep YAML file")
    p.add_argument("--strategy", choices=STRATEGIES, default="random",
                   help="random (seeded), quasi_random (scrambled Halton) or grid "
                   "(k = round(N ** (1/d)) points per tuned parameter); default %(default)s")
    p.add_argument("--n", type=int, default=10, help="how many configurations (default "
                   "%(default)s; for grid, the budget that sets k)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: drawn, and printed on stderr)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", parents=[common], help="train one configuration, without Ray",
                       description="Train one configuration locally, without Ray. Tuned "
                       "parameters not --set take their default, else the centre of their "
                       "range in unit space. A space file alone trains on the digits data. "
                       "Prints a line per epoch on stderr and, last, one JSON line with the "
                       "result on stdout.")
    p.add_argument("file", metavar="SWEEP_OR_SPACE", help="a sweep or search space YAML file")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="set one hyperparameter, e.g. --set lr=0.01 (repeatable)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (default: the sweep's, else 20)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for initialisation and mini-batch order (default: the "
                   "sweep's, else 0)")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", parents=[common], help="run a sweep with Ray Tune",
                       description="Run a whole study with Ray Tune: the sweep file's strategy, "
                       "scheduler and budget, on a local Ray started in this process or on a "
                       "cluster (--address). Progress goes to stderr; the best trial's JSON to "
                       "stdout; summary.json and trials.csv to WORKDIR/NAME/.")
    p.add_argument("file", metavar="SWEEP", help="a sweep YAML file")
    p.add_argument("--address", default=None,
                   help="a Ray cluster to join, e.g. ray://HEAD:10001 (default: $RAY_ADDRESS, "
                   "else Ray starts here on the local cores)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep whose driver died: finished trials are kept, "
                   "unfinished ones continue from their last checkpoint")
    p.add_argument("--fresh", action="store_true",
                   help="start over: an earlier sweep of the same name is moved aside")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking server or store (default: $MLFLOW_TRACKING_URI, the "
                   "sweep's tracking.uri, else sqlite:///WORKDIR/mlflow.db)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sync", parents=[common], help="write records that waited to MLflow",
                       description="Write to MLflow what sweeps in WORKDIR recorded while the "
                       "tracking server could not be reached. Nothing already written is "
                       "written again.")
    p.add_argument("--tracking-uri", default=None,
                   help="where to write (default: where each sweep was tracking)")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("ui", parents=[common], help="the MLflow UI for the embedded store",
                       description="Start the MLflow UI for WORKDIR's embedded store "
                       "(sqlite:///WORKDIR/mlflow.db) on 127.0.0.1 and print its address. "
                       "Ctrl-C stops it.")
    p.add_argument("--port", type=int, default=5000, help="default %(default)s")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("predict", parents=[common], help="predict with a registered model",
                       description="Print one JSON line per row of DATA: the predicted class "
                       "and the probabilities, with the model's stored normalisation. MODEL is "
                       "a model URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model) "
                       "or a model folder (WORKDIR/SWEEP/model).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", metavar="DATA", help="a csv or parquet file with the model's "
                   "feature columns (a label column is ignored), or an npz with an array X")
    p.add_argument("--tracking-uri", default=None,
                   help="the MLflow registry (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///WORKDIR/mlflow.db)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("submit", help="send a sweep to a Ray cluster as a Ray Job",
                       description="Send a sweep to a Ray cluster as a Ray Job: caviar's code, "
                       "the sweep with its space inline and a local data file go as the job's "
                       "working directory; the job runs `caviar sweep` on the cluster. Streams "
                       "the job's log to stderr and prints the job id on stdout. Exit 0 when "
                       "the job succeeded, 1 when it failed or was stopped.")
    p.add_argument("file", metavar="SWEEP", help="a sweep YAML file")
    p.add_argument("--address", required=True,
                   help="the cluster's dashboard, e.g. http://HEAD:8265")
    p.add_argument("--workdir", default="~/caviar-runs",
                   help="the workdir on the cluster (default: %(default)s of the job's user; "
                   "use shared storage on a multi-node cluster)")
    p.add_argument("--no-wait", action="store_true",
                   help="print the job id and return without following the job")
    p.add_argument("--resume", action="store_true", help="resume the sweep on the cluster")
    p.set_defaults(func=cmd_submit)

    uri_help = ("the MLflow registry (default: $MLFLOW_TRACKING_URI, else "
                "sqlite:///WORKDIR/mlflow.db)")
    p = sub.add_parser("retune", parents=[common], help="re-tune production when it is stale",
                       description="Check whether the production version of a registered "
                       "model is stale (age, data drift, hardware, accuracy decay); if it is, "
                       "run a search warm-started from its hyperparameters on today's data, "
                       "retrain production's and the challenger's hyperparameters with "
                       "several seeds, and promote only a model that is really better. Safe "
                       "to run from cron: one job per model at a time. Prints a report on "
                       "stderr and, when it ends with exit 0, one JSON line with the decision "
                       "on stdout (with --dry-run: not_stale or would_retune).",
                       epilog="Exit codes: 0 done (whatever the decision: not_stale, "
                       "promoted, refreshed, kept), 1 failure (production unchanged), 2 bad "
                       "input, 3 another retune of this model holds the lock.")
    p.add_argument("file", metavar="RETUNE", help="a re-tune YAML file")
    p.add_argument("--dry-run", action="store_true",
                   help="measure the triggers and say whether it would re-tune (decision "
                   "not_stale or would_retune); train and move nothing, take no lock; the "
                   "job's MLflow run is still recorded")
    p.add_argument("--force", action="store_true",
                   help="re-tune even when no trigger fires")
    p.add_argument("--address", default=None,
                   help="a Ray cluster to run the search and the gate on (default: "
                   "$RAY_ADDRESS, else Ray starts here)")
    p.add_argument("--tracking-uri", default=None,
                   help="the MLflow store holding the model (default: $MLFLOW_TRACKING_URI, "
                   "else the file's tracking.uri, else its sweep's tracking.uri, else "
                   "sqlite:///WORKDIR/mlflow.db)")
    p.set_defaults(func=cmd_retune)

    p = sub.add_parser("promote", parents=[common], help="make a model version production",
                       description="Give VERSION of MODEL the alias 'production'; the version "
                       "that had it gets the alias 'previous'.")
    p.add_argument("model", metavar="MODEL", help="the registered model's name")
    p.add_argument("--version", required=True, help="the version to promote")
    p.add_argument("--tracking-uri", default=None, help=uri_help)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", parents=[common], help="undo the last promotion",
                       description="Swap the aliases 'production' and 'previous' of MODEL: "
                       "the version before the last promotion serves again.")
    p.add_argument("model", metavar="MODEL", help="the registered model's name")
    p.add_argument("--tracking-uri", default=None, help=uri_help)
    p.set_defaults(func=cmd_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from models.data import DataError

    try:
        return args.func(args)
    except (SpecError, DataError, UsageError) as e:
        print(f"caviar: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("caviar: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a failure, not bad input: one line unless debugging
        if os.environ.get("CAVIAR_DEBUG"):
            raise
        print(f"caviar: failed: {type(e).__name__}: {e} (set CAVIAR_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
