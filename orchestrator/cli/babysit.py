"""``caviar babysit``: one expensive model trained, watched, nudged, paused, reverted and
stopped by hand (the course's panda way), every decision on record in MLflow."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

from orchestrator.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_tracking_uri,
    default_workdir,
    json_safe,
)
from orchestrator.cli.spaces import inside, parse_set_item, parse_sets

POLL_S = 0.5


def _uri(args, from_file: str | None = None) -> str:
    from orchestrator.tracking.store import resolve_uri

    return resolve_uri(args.tracking_uri, from_file, args.workdir)


def _find(args):
    from orchestrator.panda.channel import Record

    return Record.find(_uri(args), args.name)


# -- start ----------------------------------------------------------------------------

def _run_config(args, spec) -> dict:
    """What the worker trains (``babysit.json``): the sweep's net, data and seed with
    the command line's hyperparameters, paths made absolute for a worker elsewhere."""
    from pathlib import Path

    from models.config import split_config
    from models.data import FILE_SOURCES, resolve_path

    config = spec.trial_config(parse_sets(args.set, spec.space))
    try:
        model_config, hparams = split_config(config)
    except ValueError as e:
        raise UsageError(f"{spec.source}: {e}") from None
    data = spec.data.to_dict()
    if spec.data.source in FILE_SOURCES:
        data["path"] = str(resolve_path(spec.data.path, spec.base_dir))
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if args.keep is not None and args.keep < 1:
        raise UsageError(f"--keep must be >= 1, got {args.keep}")
    return {"sweep": spec.name, "source": spec.source, "data": data,
            "base_dir": str(Path(spec.base_dir).resolve()), "config": config,
            "model_config": asdict(model_config), "hparams": asdict(hparams),
            "epochs": args.epochs or spec.epochs, "seed": spec.seed,
            "metric": spec.metric.to_dict(), "resources": spec.resources.to_dict(),
            "register": spec.register.name if spec.register else None,
            "keep": args.keep or spec.babysit.keep, "delay": args.epoch_delay,
            "space": spec.space.to_dict()["parameters"]}


def _free_name(uri: str, sweep: str) -> str:
    from orchestrator.panda.channel import babysat_runs

    taken = {r.data.tags.get("caviar.babysit") for r in babysat_runs(uri)}
    return next(f"{sweep}-{n}" for n in range(1, len(taken) + 2) if f"{sweep}-{n}" not in taken)


def cmd_start(args) -> int:
    if args.resume:
        return _resume(args)
    if not args.file:
        raise UsageError("babysit start needs a SWEEP.yaml (or --resume NAME)")
    from models.data import DataSpec, load
    from orchestrator.panda.channel import BabysitError, Record, babysat_runs, check_name
    from orchestrator.sweep.spec import load_sweep

    spec = load_sweep(args.file)
    config = _run_config(args, spec)
    uri = _uri(args, spec.tracking.uri)
    load(DataSpec(**config["data"]), config["base_dir"])  # bad data: exit 2 before anything
    if args.address:  # a run no node can hold, or a store it cannot reach: exit 2 too
        _check_cluster(args.address, uri, spec.resources.to_dict(), spec.source)
    with _name_lock(uri, args.name or spec.name):
        name = check_name(args.name, "--name") if args.name else _free_name(uri, spec.name)
        if babysat_runs(uri, f"tags.`caviar.babysit` = '{name}'"):
            raise BabysitError(f"a babysat run named {name!r} exists in {uri}: pick another "
                               f"--name, or continue it with `caviar babysit start --resume "
                               f"{name}`")
        record = Record.create(uri, args.workdir, spec.tracking.experiment or spec.name,
                               {"name": name, **config})
        try:
            record.client.log_artifact(record.run_id, spec.source)
            code = _launch(args, record, name, config)
        except BaseException:
            record.forget()
            raise
        if code != EXIT_OK:
            record.forget()
        return code


def _name_lock(uri: str, name: str):
    """Two `start`s (or `--resume`s) of one name at once: the second waits its turn and
    then finds the name taken (or the worker alive). The registry's lock, as re-tune's."""
    from orchestrator.tracking.registry import Lock
    from orchestrator.tracking.store import ensure_sqlite_store

    ensure_sqlite_store(uri)
    from mlflow import MlflowClient

    return _Waiting(Lock(MlflowClient(uri, registry_uri=uri), f"babysit.{name}", lease_s=300,
                         what="babysit start"))


class _Waiting:
    """Holds ``lock``, waiting up to a few minutes for another holder to let go."""

    def __init__(self, lock, wait_s: float = 240.0):
        self.lock, self.wait_s = lock, wait_s

    def __enter__(self):
        from orchestrator.tracking.registry import Locked

        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                self.lock.acquire()
                return self
            except Locked:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def __exit__(self, *exc):
        self.lock.release()


def _check_cluster(address: str, uri: str, resources: dict, source: str) -> None:
    """The cluster can hold one trial, and, for the embedded sqlite store, is this
    machine alone (the worker writes the store: another node would open its own file)."""
    import ray

    from orchestrator.cluster.connect import check_resources, connect

    connect(address)
    check_resources(float(resources["cpu"]), float(resources["gpu"]), source)
    here = ray.util.get_node_ip_address()
    others = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - {here}
    if uri.startswith("sqlite:") and others:
        raise UsageError(f"--address {address}: the cluster has nodes besides this machine "
                         f"({', '.join(sorted(others))}), and the worker records into "
                         f"{uri}, a file on this machine: pass --tracking-uri of an MLflow "
                         "server every node reaches (see the README's Panda section)")


def _launch(args, record, name: str, config: dict) -> int:
    from orchestrator.panda.launch import LaunchFailed, launch, log_path

    try:
        launch(record, name, args.workdir, args.address, config["resources"])
    except LaunchFailed as e:
        print(f"caviar: failed: babysat run {name!r}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    where = (f"a detached Ray actor on {args.address}" if args.address else
             f"a background process (log: {log_path(args.workdir, name)})")
    flags = _flags(args)
    print(f"caviar: babysat run {name!r} trains {config['epochs']} epochs as {where}; it "
          f"goes on without this terminal.\n  watch:  caviar babysit status {name}{flags} "
          f"--follow\n  nudge:  caviar babysit nudge {name}{flags} --set lr=...\n  stop:   "
          f"caviar babysit stop {name}{flags}", file=sys.stderr)
    print(name)
    return EXIT_OK


def _flags(args) -> str:
    out = f" --workdir {args.workdir}" if args.workdir != default_workdir() else ""
    return out + (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else "")


def _resume(args) -> int:
    """``start --resume NAME``: a new worker for a run whose worker is gone."""
    from orchestrator.panda.channel import BabysitError, Record
    from orchestrator.panda.launch import alive

    if args.set or args.file:
        raise UsageError("--resume NAME takes no SWEEP.yaml and no --set: it goes on with "
                         "the hyperparameters in force (nudge it once it runs)")
    args.name = args.resume
    uri = _uri(args)
    record = Record.find(uri, args.resume)
    with _name_lock(uri, args.resume):
        running, why = alive(record.tags())
        if running:
            raise BabysitError(f"babysat run {args.resume!r} is still running ({why}): "
                               "nothing to resume")
        lineage, config = record.lineage(), record.config()
        reached = int(record.tags().get("caviar.epoch", 0))
        if args.epochs is not None and args.epochs <= reached:
            raise UsageError(f"--epochs {args.epochs}: run {args.resume!r} has trained "
                             f"{reached} epochs already; ask for more")
        if args.epochs is None and reached >= lineage.epochs:
            raise BabysitError(f"babysat run {args.resume!r} has trained all its "
                               f"{lineage.epochs} epochs: pass --epochs N (more) to go on")
        if args.address:
            _check_cluster(args.address, uri, config["resources"], config["source"])
        if args.epochs is not None:
            record.post("epochs", epochs=args.epochs)
        return _launch(args, record, args.resume,
                       {**config, "epochs": args.epochs or lineage.epochs})


# -- requests -------------------------------------------------------------------------

def nudge_values(items: list[str], config: dict) -> dict:
    """``--set`` items a running model can take: tuned trainer hyperparameters, inside
    the sweep's search space (what validate would accept there)."""
    from models.config import MODEL_KEYS, RULES
    from searchspaces import SearchSpace
    from searchspaces.errors import did_you_mean

    space = SearchSpace.from_dict({"parameters": config["space"]}, config["source"], RULES)
    out = {}
    for item in items:
        name, value = parse_set_item(item)
        where = f"--set {item!r}: the sweep's search space ({config['source']})"
        if name in MODEL_KEYS or name == "optimizer":
            raise UsageError(f"--set {item!r}: {name} shapes the net or its optimizer; a "
                             "nudge changes the trainer's hyperparameters in place (lr, "
                             "momentum, ...): start another run for another " + name)
        if name not in space.names:
            raise UsageError(f"{where} has no parameter {name!r}{did_you_mean(name, space.names)}"
                             f"; it tunes {', '.join(p.name for p in space.tuned)}")
        if not space[name].is_tuned:
            raise UsageError(f"{where} fixes {name} at {space[name].value!r}; a nudge moves "
                             "a tuned parameter")
        if not inside(space[name], value):
            raise UsageError(f"{where} has {name} in {_bounds(space[name])}, got {value!r}; "
                             "the run is unchanged")
        out[name] = value
    return out


def _bounds(p) -> str:
    d = p.to_dict()
    return str(d["choice"]) if "choice" in d else f"[{d['low']:g}, {d['high']:g}] ({d['scale']})"


def _open_for_requests(args, quiet: bool = False):
    """(record, tags, lineage) of a run that takes requests; a stopped one does not."""
    from orchestrator.panda.channel import FINAL_STATES, BabysitError
    from orchestrator.panda.launch import alive

    record = _find(args)
    tags = record.tags()
    state = tags.get("caviar.state")
    if state in FINAL_STATES:
        raise BabysitError(f"babysat run {args.name!r} is {state} (at epoch "
                           f"{tags.get('caviar.epoch')}): it takes no requests; `caviar "
                           f"babysit start --resume {args.name}` brings it back")
    running, why = alive(tags)
    if not running and not quiet:
        print(f"caviar: note: the worker of {args.name!r} is not running ({why}); the "
              f"request waits for `caviar babysit start --resume {args.name}`", file=sys.stderr)
    return record, tags, record.lineage()


def _post(args, record, op: str, what: str, **values) -> int:
    request = record.post(op, **values)
    print(f"caviar: {what}: queued for {args.name!r} at its next epoch boundary (it has "
          f"trained {record.tags().get('caviar.epoch')} epochs)", file=sys.stderr)
    if args.wait is None:
        return EXIT_OK
    return _wait_for(args, record, request)


def _wait_for(args, record, request: str) -> int:
    from orchestrator.panda.channel import REQUEST

    deadline = time.monotonic() + args.wait
    while REQUEST + request in record.tags():
        if time.monotonic() > deadline:
            print(f"caviar: failed: not taken in {args.wait:g} s (still queued)",
                  file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(POLL_S)
    event = next((e for e in record.lineage().events if e.get("request") == request), None)
    if event is None or event["kind"] == "refused":
        print(f"caviar: failed: refused: {(event or {}).get('reason', 'no record')}",
              file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(json_safe(event)))
    return EXIT_OK


def cmd_nudge(args) -> int:
    record, _, _ = _open_for_requests(args)
    values = nudge_values(args.set, record.config())
    if not values:
        raise UsageError("babysit nudge needs at least one --set NAME=VALUE")
    shown = " ".join(f"{k}={v!r}" for k, v in values.items())
    return _post(args, record, "nudge", f"nudge {shown}", set=values)


def cmd_pause(args) -> int:
    record, _, lineage = _open_for_requests(args)
    if lineage.paused:
        print(f"caviar: {args.name!r} is paused already", file=sys.stderr)
        return EXIT_OK
    return _post(args, record, "pause", "pause")


def cmd_resume(args) -> int:
    record, _, lineage = _open_for_requests(args)
    if not lineage.paused:
        print(f"caviar: {args.name!r} is not paused", file=sys.stderr)
        return EXIT_OK
    return _post(args, record, "resume", "resume")


def cmd_revert(args) -> int:
    from orchestrator.panda.channel import BabysitError

    record, _, lineage = _open_for_requests(args)
    try:
        owner = lineage.owner(args.epoch, args.branch)
    except KeyError:
        raise BabysitError(f"babysat run {args.name!r} has no branch {args.branch!r}; it has "
                           + ", ".join(b.id for b in lineage.branches)) from None
    held = record.checkpoint_epochs(owner)
    if args.epoch not in held:
        line = args.branch or lineage.current
        raise BabysitError(f"babysat run {args.name!r} has no checkpoint of epoch {args.epoch} "
                           f"on branch {line}'s line (branch {owner.id} holds epochs "
                           f"{_ranges(held) or 'none'})")
    values = nudge_values(args.set, record.config())
    what = f"revert to epoch {args.epoch} of {owner.id}" + (f" with {values}" if values else "")
    return _post(args, record, "revert", what, epoch=args.epoch, branch=args.branch,
                 set=values)


def _ranges(epochs: list[int]) -> str:
    """[0, 1, 2, 5, 6] as '0-2, 5-6'."""
    out, start = [], None
    for i, e in enumerate(epochs):
        start = e if start is None else start
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            out.append(f"{start}" if start == e else f"{start}-{e}")
            start = None
    return ", ".join(out)


def cmd_stop(args) -> int:
    from orchestrator.panda.launch import alive
    from orchestrator.tracking.registry import check_model_name

    if args.register:
        check_model_name(args.register, "--register")
    record, tags, _ = _open_for_requests(args, quiet=True)
    if not alive(tags)[0]:
        return _stop_dead(args, record)
    request = record.post("stop", register=args.register)
    print(f"caviar: stop: queued for {args.name!r} at its next epoch boundary"
          + (f"; then its best epoch is registered as {args.register!r}" if args.register
             else ""), file=sys.stderr)
    if args.wait is None:
        return EXIT_OK
    code = _wait_for(args, record, request)
    return code if code != EXIT_OK else _wait_stopped(args, record)


def _wait_stopped(args, record) -> int:
    """After the stop was taken: the run's end, and its registration when asked."""
    from orchestrator.panda.channel import FINAL_STATES

    deadline = time.monotonic() + args.wait
    while record.tags().get("caviar.state") not in FINAL_STATES:
        if time.monotonic() > deadline:
            print(f"caviar: failed: not stopped in {args.wait:g} s", file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(POLL_S)
    if not args.register:
        return EXIT_OK
    last = next((e for e in reversed(record.lineage().events)
                 if e["kind"] in ("register", "refused")), {})
    if last.get("kind") != "register":
        print(f"caviar: failed: stopped, but not registered: {last.get('reason')}",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"caviar: registered epoch {last['epoch_registered']} of {last['branch_registered']} "
          f"as {last['model']!r} version {last['version']}", file=sys.stderr)
    return EXIT_OK


def _stop_dead(args, record) -> int:
    """The worker is gone: the record is closed from here (no one else writes it)."""
    lineage = record.lineage()
    epoch = int(record.tags().get("caviar.epoch", 0))
    lineage.record("stopped", epoch, by="caviar babysit stop (the worker was gone)")
    record.end_branch(lineage.branch(), "stopped")
    record.save_lineage(lineage)
    record.set_tags(**{"caviar.state": "stopped"})
    record.client.set_terminated(record.run_id, "FINISHED")
    print(f"caviar: {args.name!r} stopped at epoch {epoch} (its worker was gone)",
          file=sys.stderr)
    if not args.register:
        return EXIT_OK
    from orchestrator.panda.channel import BabysitError
    from orchestrator.panda.register import best_epoch

    found = best_epoch(record, lineage, record.config()["metric"])
    if found is None:
        raise BabysitError(f"babysat run {args.name!r}: no epoch of its line has a checkpoint "
                           "to register")
    args.model, (args.epoch, owner) = args.register, found
    args.branch = owner.id
    return cmd_register(args)


# -- reading --------------------------------------------------------------------------

def _event_line(e: dict) -> str:
    what = {"nudge": lambda: "nudge " + ", ".join(f"{k} {e['before'].get(k)!r} -> {v!r}"
                                                 for k, v in e["set"].items())
                     + f" (from epoch {e['from_epoch']})",
            "revert": lambda: f"revert to epoch {e['to_epoch']} of {e['to_branch']}, as "
                              f"{e['branch']}" + (f" with {e['set']}" if e.get("set") else ""),
            "worker": lambda: "worker started " + _where_words(e.get("where", {})),
            "refused": lambda: f"refused {e.get('op')}: {e.get('reason')}",
            "epochs": lambda: f"epochs in all set to {e.get('epochs')}",
            "register": lambda: f"registered epoch {e['epoch_registered']} as "
                                f"{e['model']!r} version {e['version']}"}
    text = what.get(e["kind"], lambda: e["kind"] + (f" ({e['reason']})" if e.get("reason")
                                                     else ""))()
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
    return f"  {when}  epoch {e['epoch']:>4}  {e['branch']:<4} {text}"


def _where_words(where: dict) -> str:
    if where.get("launcher") == "ray":
        return f"in a Ray actor on {where.get('node_ip')} ({where.get('host')})"
    return f"as process {where.get('pid')} on {where.get('host')}"


def print_status(s: dict, out=None) -> None:
    out = out or sys.stdout  # looked up now: the caller may have redirected it
    paused = " (paused)" if s["paused"] and s["state"] != "paused" else ""
    print(f"babysat run {s['name']!r}: {s['state']}{paused}, "
          f"epoch {s['epoch']} of {s['epochs']}, branch {s['branch']}\n  worker: {s['where']}",
          file=out)
    hp = "  ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in s["hyperparameters"].items())
    print(f"  in force: {hp}", file=out)
    rows = s["metrics"]
    from orchestrator.panda.status import sparkline

    print(f"  val_loss {sparkline([r.get('val_loss', float('nan')) for r in rows])}", file=out)
    print(f"  {'epoch':>5} {'branch':<6} {'train_loss':>10} {'val_loss':>10} "
          f"{'val_acc':>8} {'lr':>9}", file=out)
    for r in rows:
        print(f"  {r['epoch']:>5} {r['branch']:<6} {r.get('train_loss', 0):>10.4f} "
              f"{r.get('val_loss', 0):>10.4f} {r.get('val_accuracy', 0):>8.4f} "
              f"{r.get('lr', 0):>9.3g}", file=out)
    print("  history:", file=out)
    for e in s["history"]:
        print(_event_line(e), file=out)
    for p in s["pending"]:
        print(f"  pending: {p['op']} {p.get('set') or p.get('epoch') or ''}", file=out)


def cmd_status(args) -> int:
    from orchestrator.panda.status import status

    record = _find(args)
    while True:
        s = status(record)
        if args.json:
            print(json.dumps(json_safe(s)))
        else:
            print_status(s)
        if not args.follow or s["state"] in ("stopped", "completed", "failed", "lost"):
            return EXIT_OK
        time.sleep(args.every)
        if not args.json:
            print("\033[2J\033[H", end="")  # clear the terminal between refreshes


def cmd_list(args) -> int:
    from orchestrator.panda.channel import babysat_runs
    from orchestrator.panda.launch import alive

    rows = []
    for run in babysat_runs(_uri(args)):
        tags = run.data.tags
        running, why = alive(tags)
        state = tags.get("caviar.state", "")
        rows.append({"name": tags.get("caviar.babysit"), "sweep": tags.get("caviar.sweep"),
                     "state": state if running or state in ("stopped", "completed", "failed")
                     else "lost", "epoch": int(tags.get("caviar.epoch", 0)),
                     "branch": tags.get("caviar.branch"), "worker": why,
                     "run_id": run.info.run_id})
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"caviar: no babysat runs in {_uri(args)}", file=sys.stderr)
    for r in rows if not args.json else ():
        print(f"{r['name']:<24} {r['state']:<10} epoch {r['epoch']:>4}  branch {r['branch']:<4} "
              f"sweep {r['sweep']}  ({r['worker']})")
    return EXIT_OK


def cmd_register(args) -> int:
    from models.data import DataSpec, load
    from orchestrator.panda.channel import BabysitError
    from orchestrator.panda.register import register_epoch
    from orchestrator.tracking.registry import check_model_name

    record = _find(args)
    lineage, config = record.lineage(), record.config()
    model = check_model_name(args.model or _sweep_model(config), "MODEL")
    try:
        owner = lineage.owner(args.epoch, args.branch)
    except KeyError:
        raise BabysitError(f"babysat run {args.name!r} has no branch {args.branch!r}") from None
    if args.epoch not in record.checkpoint_epochs(owner):
        raise BabysitError(f"babysat run {args.name!r} has no checkpoint of epoch {args.epoch} "
                           f"on branch {args.branch or lineage.current}'s line")
    data = load(DataSpec(**config["data"]), config["base_dir"])
    version = register_epoch(record, lineage, owner, args.epoch, model, data)
    _on_record(record, model=model, version=version, epoch_registered=args.epoch,
               branch_registered=owner.id)
    print(f"caviar: registered epoch {args.epoch} of {owner.id} as {model!r} version {version} "
          f"(models:/{model}/{version})", file=sys.stderr)
    print(json.dumps({"model": model, "version": version, "epoch": args.epoch,
                      "branch": owner.id}))
    return EXIT_OK


def _on_record(record, **registered) -> None:
    """A registration in the run's history: through the worker when it runs (it alone
    writes the lineage then), else written here."""
    from orchestrator.panda.launch import alive

    if alive(record.tags())[0]:
        record.post("registered", **registered)
        return
    lineage = record.lineage()
    lineage.record("register", int(record.tags().get("caviar.epoch", 0)), **registered)
    record.save_lineage(lineage)


def _sweep_model(config: dict) -> str:
    if config.get("register"):
        return config["register"]
    raise UsageError("babysit register needs the model's name: caviar babysit register "
                     f"NAME MODEL --epoch K (the sweep {config['sweep']!r} has no "
                     "register.name to default to)")


# -- the parser -----------------------------------------------------------------------

def _common_run(p, wait: bool = True) -> None:
    p.add_argument("name", metavar="NAME", help="the babysat run's name (babysit list)")
    add_tracking_uri(p, "the MLflow store holding the run")
    if wait:
        p.add_argument("--wait", type=float, nargs="?", const=600.0, default=None,
                       metavar="SECONDS", help="wait until the worker has taken the request "
                       "(at most SECONDS, default 600) and print its event as JSON")


def _add_start(sub, common) -> None:
    p = sub.add_parser("start", parents=[common], help="start a babysat run",
                       description="Train one configuration of the sweep's net on its data, "
                       "checkpointing every epoch, as a run that goes on without this "
                       "command: a background process here, or a detached Ray actor on "
                       "--address. Prints its name on stdout.")
    p.add_argument("file", nargs="?", metavar="SWEEP.yaml", help="the sweep file")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="a starting hyperparameter (repeatable); the rest take the space's "
                   "default, else its centre")
    p.add_argument("--name", help="the run's name (default: SWEEP-N)")
    p.add_argument("--epochs", type=int, help="epochs in all (default: the sweep's)")
    p.add_argument("--keep", type=int, help="checkpoints kept per branch (default: the "
                   "sweep's babysit.keep, else every epoch's); forks are always kept")
    p.add_argument("--resume", metavar="NAME", help="give a run whose worker died (or that "
                   "was stopped) a new worker, from its newest checkpoint")
    p.add_argument("--epoch-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="a Ray cluster to train on, as a detached actor (default: "
                   "$RAY_ADDRESS, else a background process here)")
    add_tracking_uri(p, "the MLflow store to record the run in", "the sweep's tracking.uri")
    p.set_defaults(func=cmd_start)


def _add_requests(sub, common) -> None:
    p = sub.add_parser("nudge", parents=[common], help="change hyperparameters from the "
                       "next epoch", description="Change tuned hyperparameters from the "
                       "next epoch on, in the optimizer in place (no restart). Values must "
                       "lie in the sweep's search space.")
    _common_run(p)
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[], required=True,
                   help="a tuned hyperparameter's new value, inside the sweep's search space "
                   "(repeatable)")
    p.set_defaults(func=cmd_nudge)
    for op, func, text in (("pause", cmd_pause, "hold the run at the next epoch boundary"),
                           ("resume", cmd_resume, "let a paused run go on")):
        p = sub.add_parser(op, parents=[common], help=text, description=text + ".")
        _common_run(p)
        p.set_defaults(func=func)
    p = sub.add_parser("revert", parents=[common], help="go back to an epoch's checkpoint",
                       description="Restore epoch K's checkpoint and go on from K+1 as a new "
                       "branch, optionally with new hyperparameters. The branch left stays "
                       "on record with its checkpoints. A paused run stays paused. The "
                       "worker checks the epoch again when it takes the request (another "
                       "revert may come first): --wait, or status, shows a refusal.")
    _common_run(p)
    p.add_argument("--epoch", type=int, required=True, help="the epoch to go back to")
    p.add_argument("--branch", help="the branch whose line holds it (default: the current)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="also change a tuned hyperparameter, as nudge does (repeatable)")
    p.set_defaults(func=cmd_revert)
    p = sub.add_parser("stop", parents=[common], help="end the run at the next epoch boundary",
                       description="End the run at the next epoch boundary.")
    _common_run(p)
    p.add_argument("--register", metavar="MODEL", help="register the best epoch of the "
                   "current line (the sweep's metric) as a version of MODEL")
    p.set_defaults(func=cmd_stop)


def _add_reading(sub, common) -> None:
    p = sub.add_parser("status", parents=[common], help="the learning curve and history",
                       description="The run's state, where it runs, the hyperparameters in "
                       "force, its learning curve (a table and a sparkline of val_loss) and "
                       "every nudge, pause and revert.")
    _common_run(p, wait=False)
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument("--follow", action="store_true", help="refresh until the run ends")
    p.add_argument("--every", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("list", parents=[common], help="every babysat run",
                       description="Every babysat run in the store, newest first.")
    add_tracking_uri(p, "the MLflow store")
    p.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("register", parents=[common], help="register an epoch's model",
                       description="Register the model of any epoch as a new version of "
                       "MODEL, like a sweep's best (loadable without unpickling).")
    _common_run(p, wait=False)
    p.add_argument("model", nargs="?", metavar="MODEL", help="the registered model's name "
                   "(default: the sweep's register.name)")
    p.add_argument("--epoch", type=int, required=True, help="the epoch whose model to register")
    p.add_argument("--branch", help="the branch whose line holds it (default: the current)")
    p.set_defaults(func=cmd_register)


def add_babysit(sub, common) -> None:
    p = sub.add_parser("babysit", help="babysit one model (the panda way)",
                       description="The panda way: one expensive model trained, watched and "
                       "nudged by hand. Every decision is on record in MLflow.",
                       epilog="Every action takes --workdir (where the embedded MLflow store "
                       "is) and --tracking-uri; see `caviar babysit ACTION --help`. A day "
                       "of babysitting: start; status --follow; nudge --set lr=...; pause; "
                       "revert --epoch K --set lr=...; resume; stop --register MODEL.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _add_start(actions, common)
    _add_reading(actions, common)
    _add_requests(actions, common)
