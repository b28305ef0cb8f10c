"""``caviar predict``, ``promote`` and ``rollback``: the registered models, served and
moved between versions by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.cli._common import (
    UsageError,
    add_command,
    add_flag,
    add_option,
    add_tracking_uri,
)
from searchspaces.errors import EXIT_OK


def _model_dir(model: str, tracking_uri: str | None, workdir: str) -> Path:
    """A model folder as it is, else the files of a model URI from the registry."""
    from models.serving import META
    from orchestrator.tracking.registry import download_model
    from orchestrator.tracking.store import check_store, resolve_uri

    if (Path(model) / META).is_file():
        return Path(model)
    uri = resolve_uri(tracking_uri, None, workdir)
    check_store(uri)  # a --workdir without a store: exit 2, and no empty store made there
    try:
        model_dir = download_model(uri, model)
    except Exception as e:  # noqa: BLE001 - an unknown name, version or alias
        raise UsageError(f"{model}: cannot be fetched from {uri} ({e})") from None
    if not (model_dir / META).is_file():
        raise UsageError(f"{model}: not a caviar model (no {META})")
    return model_dir


def cmd_predict(args) -> int:
    """Print one JSON line per row of DATA: the predicted class and the probabilities,
    with the model's stored normalisation. MODEL is a model URI (models:/NAME/VERSION,
    models:/NAME@ALIAS, runs:/ID/model) or a model folder (WORKDIR/SWEEP/model)."""
    from models.serving import bad_rows, load_model, predict, read_rows

    net, meta = load_model(_model_dir(args.model, args.tracking_uri, args.workdir))
    names = meta["feature_names"]
    rows = read_rows(args.data, names, meta.get("label", "label"))
    bad = bad_rows(rows, names)
    if bad and not args.skip_bad_rows:
        shown = ", ".join(f"{i} ({feature})" for i, feature in list(bad.items())[:5])
        raise UsageError(f"{args.data}: {len(bad)} row(s) hold NaN or infinite values: {shown}"
                         f"{' ...' if len(bad) > 5 else ''} (rows count from 0); fix them, or "
                         "pass --skip-bad-rows to predict the others and report these")
    good = [i for i in range(len(rows)) if i not in bad]
    try:
        labels, probs = predict(net, meta, rows[good]) if good else ([], [])
    except ValueError as e:
        raise UsageError(f"{args.data}: {e}") from None
    answers = {i: (label, p) for i, label, p in zip(good, labels, probs)}
    for i in range(len(rows)):
        if i in bad:
            print(json.dumps({"row": i, "error": f"NaN or infinite value in {bad[i]!r}"}))
            continue
        label, p = answers[i]
        print(json.dumps({"row": i, "class": label, "probabilities": {
            str(c): round(float(v), 6) for c, v in zip(meta["classes"], p)}}, allow_nan=False))
    return EXIT_OK


def _client(args):
    from orchestrator.tracking.store import registry_client, resolve_uri

    return registry_client(resolve_uri(args.tracking_uri, None, args.workdir))


def cmd_promote(args) -> int:
    """Give VERSION of MODEL the alias 'production'; the version that had it gets the
    alias 'previous'."""
    # Under the model's lock, so a hand-made move never races the re-tune job.
    from orchestrator.tracking.registry import Lock, promote

    client = _client(args)
    with Lock(client, args.model, lease_s=60, what="promote"):
        old, new = promote(client, args.model, args.version)
    if old == new:
        print(f"caviar: {args.model!r} version {new} is production already", file=sys.stderr)
    else:
        print(f"caviar: {args.model!r} version {new} is now production"
              + (f"; version {old} is previous (undo: caviar rollback {args.model})" if old
                 else ""), file=sys.stderr)
    return EXIT_OK


def cmd_rollback(args) -> int:
    """Swap the aliases 'production' and 'previous' of MODEL: the version before the last
    promotion serves again."""
    from orchestrator.tracking.registry import Lock, rollback

    client = _client(args)
    with Lock(client, args.model, lease_s=60, what="rollback"):
        left, restored = rollback(client, args.model)
    print(f"caviar: {args.model!r} version {restored} is production again; version {left} is "
          "previous", file=sys.stderr)
    return EXIT_OK


REGISTRY = "the MLflow registry"


def add_predict(sub, common) -> None:
    p = add_command(sub, common, "predict", cmd_predict, "predict with a registered model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", metavar="DATA", help="a csv or parquet file whose header names "
                   "the model's feature columns (the label column may be there too, and is "
                   "ignored; any other column is refused), or an npz whose array X holds one "
                   "column per feature in training order")
    add_flag(p, "--skip-bad-rows", help="predict the rows that are whole and print "
             "{\"row\": N, \"error\": ...} for rows with NaN or infinite values (default: "
             "refuse the file, naming them)")
    add_tracking_uri(p, REGISTRY)


def add_promote(sub, common) -> None:
    p = add_command(sub, common, "promote", cmd_promote, "make a model version production")
    add_option(p, "model")
    p.add_argument("--version", required=True, help="the version to promote")
    add_tracking_uri(p, REGISTRY)


def add_rollback(sub, common) -> None:
    p = add_command(sub, common, "rollback", cmd_rollback, "undo the last promotion")
    add_option(p, "model")
    add_tracking_uri(p, REGISTRY)
