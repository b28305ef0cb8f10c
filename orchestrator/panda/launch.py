"""Starting a babysat run's worker so that it outlives the command, and telling whether
it is alive.

- Embedded default: a background process of its own (``python -m
  orchestrator.panda.worker``) in a new session, so closing the terminal (SIGHUP) or
  Ctrl-C there does not reach it; its output goes to
  ``<workdir>/babysit/<name>/worker.log``. One run trains one model: it needs no Ray
  scheduler here, and a Ray started by a command would end with that command.
- A cluster (``--address``): a detached Ray actor named ``babysit-<name>`` in the
  ``caviar`` namespace with the sweep's per-trial resources. It trains in a thread
  started by its constructor, so a node lost mid-run is an actor restart that resumes
  from the newest checkpoint on its own (``max_restarts``); a stop ends the actor.

Either way the worker is alive when its heartbeat tag is fresh (and, for a local
worker seen from its own host, its process exists).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from orchestrator.panda import channel
from orchestrator.panda.channel import BabysitError, Record
from searchspaces.errors import Failure

STARTUP_S = 180  # a fresh sqlite store and torch's import take a while on a busy machine
ALIVE_S = 20  # a heartbeat older than this: the worker is gone (it beats every 5 s)
NAMESPACE, RESTARTS = "caviar", 3


class LaunchFailed(Failure):
    """The worker did not start: exit 1 with its log's last lines."""


def log_path(workdir, name: str) -> Path:
    return Path(workdir).expanduser().resolve() / "babysit" / name / "worker.log"


def launch(record: Record, name: str, workdir, address: str | None, resources: dict) -> None:
    """Starts the worker and waits until it has taken up the run; one that does not
    (or a Ctrl-C meanwhile) is stopped again, so nothing runs that the caller gave up on."""
    record.set_tags(**{channel.STATE: "starting"})
    record.client.update_run(record.run_id, status="RUNNING")
    if address:
        actor = _launch_ray(record, name, address, resources)
        stop = lambda: _kill(actor)  # noqa: E731
        proc = log = None
    else:
        proc, log = _launch_local(record, name, workdir)
        stop = proc.kill
    try:
        _wait_started(record, proc, log)
    except BaseException:
        stop()
        raise


def _kill(actor) -> None:
    import ray

    ray.kill(actor, no_restart=True)


def _launch_local(record: Record, name: str, workdir) -> tuple[subprocess.Popen, Path]:
    log = log_path(workdir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.panda.worker", "--tracking-uri", record.uri,
             record.run_id], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    return proc, log


def _wait_started(record: Record, proc: subprocess.Popen | None, log: Path | None) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        state = record.tags().get(channel.STATE)
        if state != "starting":
            if state == "failed":
                raise LaunchFailed(f"the worker failed at once{_tail(log)}")
            return
        if proc is not None and proc.poll() is not None:
            raise LaunchFailed(f"the worker exited with {proc.returncode}{_tail(log)}")
        time.sleep(0.5)
    raise LaunchFailed(f"the worker did not start in {STARTUP_S} s{_tail(log)}")


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").strip().splitlines()[-3:]
    return f" ({log}: {' / '.join(lines)})" if lines else f" (see {log})"


class _Babysitter:
    """The detached actor: trains in a thread so that the actor answers ``ready`` at once
    and a restart (a lost node) resumes by itself."""

    def __init__(self, uri: str, run_id: str, threads: int):
        self._thread = threading.Thread(target=self._serve, args=(uri, run_id, threads),
                                        daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        return True

    @staticmethod
    def _serve(uri: str, run_id: str, threads: int) -> None:
        import ray
        import torch

        from orchestrator.panda.worker import Worker

        torch.set_num_threads(threads)
        try:
            Worker(Record(uri, run_id), launcher="ray").serve()
        finally:  # done or failed on record: no restart (a lost node restarts it)
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def actor_name(name: str) -> str:
    return f"babysit-{name}"


def _launch_ray(record: Record, name: str, address: str, resources: dict):
    import ray

    from orchestrator.cluster.connect import connect

    connect(address)
    cpu, gpu = float(resources["cpu"]), float(resources["gpu"])
    try:
        ray.get_actor(actor_name(name), namespace=NAMESPACE)
        raise BabysitError(f"an actor {actor_name(name)!r} already runs on the cluster at "
                           f"{address}: `caviar babysit stop {name}` first")
    except ValueError:
        pass  # none: good
    actor = ray.remote(_Babysitter).options(
        name=actor_name(name), namespace=NAMESPACE, lifetime="detached", num_cpus=cpu,
        num_gpus=gpu, max_restarts=RESTARTS).remote(record.uri, record.run_id,
                                                    max(1, int(cpu)))
    try:
        ray.get(actor.ready.remote(), timeout=STARTUP_S)
    except BaseException:
        _kill(actor)
        raise
    return actor


def alive(tags: dict) -> tuple[bool, str]:
    """(whether the worker runs, in words: where, and when it was last heard of)."""
    state = tags.get(channel.STATE, "")
    where = json.loads(tags.get(channel.WHERE) or "{}")
    beat = float(tags.get(channel.HEARTBEAT) or 0)
    age = time.time() - beat
    place = _place(where)
    if state in channel.FINAL_STATES:
        return False, f"{state}; it ran {place}"
    if not beat:
        return state == "starting", f"{state or 'unknown'}, not heard of yet"
    heard = f"{place}, last heard of {age:.0f} s ago"
    if where.get("launcher") == "local" and where.get("host") == socket.gethostname() \
            and not _process_exists(int(where.get("pid", 0))):
        return False, f"{heard}; its process is gone"
    return age < ALIVE_S, heard


def _place(where: dict) -> str:
    if where.get("launcher") == "ray":
        return (f"in Ray actor {where.get('actor', 'babysit')} on node "
                f"{where.get('node_ip')} ({where.get('host')}, pid {where.get('pid')})")
    return f"as process {where.get('pid')} on {where.get('host')}"


def _process_exists(pid: int) -> bool:
    """A process of that id exists and is not a zombie (one that exited and no parent
    reaped: a worker started by a process that is still alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
