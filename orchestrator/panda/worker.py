"""The babysat run's worker: trains epoch after epoch and, between two epochs, does
what was asked.

Each epoch: train it, write its checkpoint (weights, optimizer, BN statistics, RNG),
then log its metrics, in that order: a worker killed between the two is resumed from
that checkpoint and logs the epoch it holds but MLflow lacks, so no epoch is lost or
logged twice. Then, at the epoch boundary, the queued requests in the order they were
asked: a nudge changes the optimizer's param_groups in place (in effect from the next
epoch, never mid-epoch), a pause holds the run here until a resume, a revert loads
another epoch's checkpoint as a new branch, a stop ends the run. A loss that becomes
NaN or infinite pauses the run (a person decides: revert or stop).

Started by ``launch`` as ``python -m orchestrator.panda.worker`` (a background
process) or inside a detached Ray actor; either way it knows only the tracking URI
and the parent run's id.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, replace

from models.config import HParams, MLPConfig
from models.train import TrainingRun, resolve_device
from orchestrator.cluster.hardware import hardware_fingerprint
from orchestrator.panda import channel
from orchestrator.panda.channel import Record
from orchestrator.panda.curve import log_curve

POLL_S = 1.0  # how often a paused run looks for requests
HEARTBEAT_S = 5.0
HP_METRICS = ("lr", "momentum", "beta1", "beta2", "eps", "lr_decay", "weight_decay",
              "batch_size")


def hp_metrics(hparams: HParams) -> dict:
    """The hyperparameters in force, as ``hp_NAME`` metrics of the epoch they trained."""
    return {f"hp_{k}": float(getattr(hparams, k)) for k in HP_METRICS}


def where(launcher: str) -> dict:
    """Where this worker runs: the host and process, and the Ray node inside an actor."""
    out = {"launcher": launcher, "host": socket.gethostname(), "pid": os.getpid(),
           **hardware_fingerprint()}
    if launcher == "ray":
        import ray

        context = ray.get_runtime_context()
        out.update(node_ip=ray.util.get_node_ip_address(), node_id=context.get_node_id(),
                   actor=context.get_actor_name())
    return out


class Worker:
    """One babysat run's training, restored from its record."""

    def __init__(self, record: Record, launcher: str = "local"):
        from models.data import DataSpec, load

        self.record, self.launcher = record, launcher
        self.config = record.config()
        self.lineage = record.lineage()
        self.data = load(DataSpec(**self.config["data"]), self.config["base_dir"])
        self.run = TrainingRun(self.data, MLPConfig(**self.config["model_config"]),
                               HParams(**self.lineage.hparams), self.config["seed"],
                               resolve_device(self.config.get("device", "auto")))
        self.stopping: dict | None = None
        self._beat = threading.Event()

    # -- the loop ---------------------------------------------------------------------

    def serve(self) -> str:
        """Trains until stopped or done; returns the final state."""
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        try:
            self._restore()
            self._boundary()
            while self.stopping is None and self.run.epoch < self.lineage.epochs:
                self._epoch()
                self._boundary()
            return self._finish("stopped" if self.stopping is not None else "completed")
        except BaseException as e:
            self._failed(e)
            raise
        finally:
            self._beat.set()
            beat.join()

    def _heartbeat(self) -> None:
        while not self._beat.wait(HEARTBEAT_S):
            try:
                self.record.set_tags(**{channel.HEARTBEAT: f"{time.time():.3f}"})
            except Exception:  # noqa: BLE001 - a missed beat is not worth the run
                pass

    def _restore(self) -> None:
        """Continues from the newest checkpoint on the current branch's line, with the
        hyperparameters then in force; logs epochs the checkpoint holds but MLflow lacks."""
        branch = self.lineage.branch()
        state = self.record.newest_checkpoint(self.lineage)
        if state is None:
            self.record.save_checkpoint(branch, self.run)  # epoch 0: day 0 to go back to
        else:
            self.run.load_state_dict(state)
            self.run.set_hparams(HParams(**self.lineage.hparams))
            self.record.log_missing_epochs(branch, self.run.history)
        if branch.status != "running":  # a stopped or completed run given more epochs
            self.record.set_branch_status(branch, "running")
        self.lineage.record("worker", self.run.epoch, where=where(self.launcher))
        self._save(state="paused" if self.lineage.paused else "running",
                   **{channel.WHERE: json.dumps(where(self.launcher)),
                      channel.HEARTBEAT: f"{time.time():.3f}"})

    def _epoch(self) -> None:
        branch = self.lineage.branch()
        metrics = self.run.train_epoch()
        metrics.update(hp_metrics(self.run.hparams))  # kept in the checkpoint's history too
        time.sleep(float(self.config.get("delay") or 0))
        self.record.save_checkpoint(branch, self.run)
        self.record.log_epoch(branch, metrics)
        self.record.set_tags(**{channel.EPOCH: self.run.epoch})
        if self.config.get("keep"):  # keep: N, and every epoch another branch forked from
            self.record.keep_newest(branch, self.config["keep"], {
                b.from_epoch for b in self.lineage.branches if b.parent == branch.id})
        if not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss")):
            self.lineage.paused = True
            self.lineage.record("diverged", self.run.epoch)
            self._save(state="paused")

    # -- requests ---------------------------------------------------------------------

    def _boundary(self) -> None:
        """Applies the queued requests; while paused, waits here for more."""
        while True:
            for request, body in self.record.pending():
                if not self.lineage.handled(request):
                    self._try(request, body)
                self.record.clear(request)
            if not self.lineage.paused or self.stopping is not None:
                return
            time.sleep(POLL_S)

    def _try(self, request: str, body: dict) -> None:
        """Applies one request; one the run cannot take is refused on record (the
        commands check first: this is for a request written by another version)."""
        try:
            self._apply(request, body)
        except (ValueError, TypeError, KeyError) as e:
            self.lineage.record("refused", self.run.epoch, request, op=body.get("op"),
                                reason=f"{type(e).__name__}: {e}")
            self._save()

    def _apply(self, request: str, body: dict) -> None:
        op, epoch = body["op"], self.run.epoch
        if op == "nudge":
            before = {k: getattr(self.run.hparams, k) for k in body["set"]}
            self._set(body["set"])
            self.lineage.record("nudge", epoch, request, set=body["set"], before=before,
                                from_epoch=epoch + 1)
        elif op in ("pause", "resume"):
            self.lineage.paused = op == "pause"
            self.lineage.record(op, epoch, request)
        elif op == "revert":
            self._revert(request, body)
        elif op == "stop":
            self.stopping = body
            self.lineage.record("stop", epoch, request,
                                **({"register": body["register"]} if body.get("register")
                                   else {}))
        elif op == "registered":  # a command registered an epoch: on record here
            self.lineage.record("register", epoch, request, **{
                k: body[k] for k in ("model", "version", "epoch_registered",
                                     "branch_registered")})
        elif op == "epochs":
            self.lineage.epochs = int(body["epochs"])
            self.lineage.record("epochs", epoch, request, epochs=self.lineage.epochs)
        else:
            self.lineage.record("refused", epoch, request, op=op, reason="unknown request")
        self._save(state="paused" if self.lineage.paused else "running")
        if op in ("nudge", "revert", "pause"):
            self.plot()  # the picture follows each decision

    def _set(self, values: dict) -> None:
        self.run.set_hparams(replace(self.run.hparams, **values))
        self.lineage.hparams = asdict(self.run.hparams)

    def _revert(self, request: str, body: dict) -> None:
        """Epoch K's checkpoint of a branch's line, continued as a new branch from K+1."""
        epoch, line = int(body["epoch"]), body.get("branch") or self.lineage.current
        owner = self.lineage.owner(epoch, line)
        if epoch not in self.record.checkpoint_epochs(owner):
            self.lineage.record("refused", self.run.epoch, request, op="revert", to_epoch=epoch,
                                reason=f"no checkpoint of epoch {epoch} on branch {line}")
            return
        state = self.record.load_checkpoint(owner, epoch)
        old = self.lineage.branch()
        self.record.end_branch(old, "abandoned")
        new = self.record.new_branch(f"b{len(self.lineage.branches)}", line, epoch)
        self.lineage.fork(new.run_id, line, epoch)
        reached = self.run.epoch
        self.run.load_state_dict(state)
        self.run.set_hparams(HParams(**state["hparams"]))
        self._set(body.get("set") or {})
        self.lineage.record("revert", reached, request, from_branch=old.id, to_branch=owner.id,
                            to_epoch=epoch, set=body.get("set") or {}, from_epoch=epoch + 1)
        self.record.set_tags(**{channel.BRANCH: new.id, channel.EPOCH: epoch})

    # -- the end ----------------------------------------------------------------------

    def _save(self, **tags) -> None:
        """The lineage and the state (in that order: the state never runs ahead)."""
        self.record.save_lineage(self.lineage)
        if "state" in tags:
            tags[channel.STATE] = tags.pop("state")
        self.record.set_tags(**tags)

    def _finish(self, status: str) -> str:
        """The end: the registration asked for and the picture, then the record closed
        (a command waiting for the final state finds both there)."""
        self.lineage.record(status, self.run.epoch)
        registered = None
        if self.stopping and self.stopping.get("register"):
            registered = self._register(self.stopping["register"])
        self.plot()
        self.record.close(self.lineage, status)
        if registered:
            print(f"caviar: registered {registered}", file=sys.stderr)
        return status

    def _register(self, model_name: str) -> str | None:
        """The best epoch of the current line (the sweep's metric), as a model version."""
        from orchestrator.panda.register import history_values, register_best

        try:
            r = register_best(self.record, self.lineage, model_name, self.config["metric"],
                              self.data)
        except Exception as e:  # noqa: BLE001 - recorded; `babysit register` can retry
            self.lineage.record("refused", self.run.epoch, op="register", reason=str(e))
            return None
        if r is None:
            self.lineage.record("refused", self.run.epoch, op="register",
                                reason="no epoch of the current line has a checkpoint")
            return None
        self.lineage.record("register", self.run.epoch, **history_values(r))
        return f"{r.model!r} version {r.version} (epoch {r.epoch} of branch {r.branch})"

    def plot(self) -> None:
        """The learning curve with nudges and reverts marked, as the parent's curve.png."""
        log_curve(self.record, self.lineage)

    def _failed(self, error: BaseException) -> None:
        """Whatever stopped the worker, on record; `start --resume` goes on from here."""
        try:
            reason = "interrupted" if isinstance(error, KeyboardInterrupt) else \
                f"{type(error).__name__}: {error}"
            self.lineage.record("failed", self.run.epoch, reason=reason)
            self._save(state="failed")
            self.record.client.set_terminated(self.record.run_id, "FAILED")
        except Exception:  # noqa: BLE001 - the store itself may be what failed
            traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.panda.worker",
                                description="A babysat run's worker (started by `caviar "
                                "babysit start`; not meant to be run by hand).")
    p.add_argument("run_id")
    p.add_argument("--tracking-uri", required=True)
    args = p.parse_args(argv)
    import torch

    record = Record(args.tracking_uri, args.run_id)
    torch.set_num_threads(max(1, int(record.config()["resources"]["cpu"])))
    state = Worker(record).serve()
    print(f"caviar: babysat run ended: {state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
