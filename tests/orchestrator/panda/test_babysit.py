"""``caviar babysit``: real background workers, a real sqlite MLflow store (or a real
tracking server), a real Ray cluster. Commands run in this process (the code a user's
terminal runs, without a second's start-up each), which is another process than the
worker's: "another terminal". A command runs in a process of its own where that is the
point: two starts at once, and a start whose run goes on after it has exited.

A worker's start (torch, MLflow) is what costs here, so each test drives one run
through many commands. Epochs are slowed with the hidden ``--epoch-delay`` so a test
can command the run while it trains; every wait is on an event (an epoch, a tag, a
process gone), never on the clock."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_one_paragraph_error, caviar, sweep_dict

from orchestrator.cli import main
from orchestrator.panda.channel import REQUEST, WHERE, Record
from orchestrator.tracking.store import embedded_uri

DELAY = "0.1"  # seconds each epoch is held: enough to command it, short enough to wait for
EPOCHS = 5000  # never reached: every run is stopped or killed long before


def write(tmp_path: Path, name: str = "sweep.yaml", **overrides) -> Path:
    d = sweep_dict(name="bs", epochs=EPOCHS, data={"source": "synthetic", "size": 400,
                                                    "n_features": 8, "classes": 3},
                   space={"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                          "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.99},
                          "hidden_units": {"fixed": 16}, "batch_size": {"fixed": 32},
                          "optimizer": {"fixed": "momentum"}})
    d.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def wait_for(what: str, check, timeout: float = 120):
    """Polls ``check`` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)
    return found


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet runs no more either)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def a_worker(pid: int) -> bool:
    """``pid`` is a live babysit worker (not a process that took its id since)."""
    try:
        return b"orchestrator.panda.worker" in Path(f"/proc/{pid}/cmdline").read_bytes() \
            and not gone(pid)
    except OSError:
        return False


class Babysat:
    """One babysat run: started by ``caviar babysit start`` (here, or in a process of its
    own), or one that was started otherwise, found by ``name``."""

    def __init__(self, tmp_path: Path, *start_args: str, uri: str | None = None,
                 own_process: bool = False, name: str | None = None):
        self.workdir, self.uri = tmp_path / "runs", uri
        self.sweep = tmp_path / "sweep.yaml"
        self.pids: set[int] = set()  # every worker seen: the clean-up needs no store
        if name is None:
            write(tmp_path)
            done = self.cli("start", self.sweep, "--epoch-delay", DELAY, *start_args,
                            own_process=own_process)
            assert done.returncode == 0, done.stderr
            name = done.stdout.strip()
        self.name = name
        self.record = Record.find(uri or embedded_uri(self.workdir), self.name)
        self.pid()

    def cli(self, *args, own_process: bool = False):
        """``caviar babysit ARGS``: in this process, or in its own when asked."""
        argv = ["babysit", *map(str, args), "--workdir", str(self.workdir),
                *(["--tracking-uri", self.uri] if self.uri else [])]
        if own_process:
            return caviar(*argv, timeout=240)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())

    def ask(self, *args) -> dict:
        """A request that must be taken: returns its event."""
        done = self.cli(args[0], self.name, *args[1:], "--wait", "120")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def resume(self) -> None:
        """``start --resume``: a new worker for the run."""
        done = self.cli("start", "--resume", self.name)
        assert done.returncode == 0, done.stderr
        self.pid()

    def tags(self) -> dict:
        return self.record.tags()

    def epoch(self) -> int:
        return int(self.tags()["caviar.epoch"])

    def wait_epoch(self, at_least: int, timeout: float = 120) -> int:
        wait_for(f"epoch {at_least}", lambda: self.epoch() >= at_least, timeout)
        return self.epoch()

    def steps(self, branch: str, key: str = "val_loss") -> list[int]:
        run_id = self.record.lineage().branch(branch).run_id
        return [m.step for m in self.record.client.get_metric_history(run_id, key)]

    def metric(self, branch: str, key: str) -> dict[int, float]:
        run_id = self.record.lineage().branch(branch).run_id
        return {m.step: m.value for m in self.record.client.get_metric_history(run_id, key)}

    def checkpoint(self, branch: str, epoch: int) -> dict:
        return self.record.load_checkpoint(self.record.lineage().branch(branch), epoch)

    def pid(self) -> int:
        """The worker's process, as the record names it."""
        pid = int(json.loads(self.tags()[WHERE])["pid"])
        self.pids.add(pid)
        return pid

    def kill(self) -> None:
        """The worker's process is killed; returns once it is gone."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_for(f"worker {pid} gone", lambda: gone(pid), 60)

    def clean_up(self) -> None:
        for pid in self.pids:
            if a_worker(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def babysat(tmp_path, no_outside_services):
    runs = []

    def start(*args: str, **kwargs) -> Babysat:
        runs.append(Babysat(tmp_path, *args, **kwargs))
        return runs[-1]

    yield start
    for b in runs:  # a test that failed half-way leaves no worker behind
        b.clean_up()


def test_a_run_started_twice_at_once_is_nudged_refused_killed_and_resumed(babysat,
                                                                          tmp_path):
    # Two terminals start one name at once: one run, and the other start is told so.
    sweep = write(tmp_path)
    argv = ("babysit", "start", sweep, "--name", "twin", "--set", "lr=0.01", "--epoch-delay",
            DELAY, "--workdir", tmp_path / "runs")
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: caviar(*argv, timeout=240), range(2)))
    codes = sorted(done.returncode for done in outs)
    b = babysat(name="twin") if 0 in codes else None  # its worker goes at the end, come what may
    assert codes == [0, 2], outs
    assert any("a babysat run named 'twin' exists" in done.stderr for done in outs)
    assert [r["name"] for r in json.loads(b.cli("list", "--json").stdout)] == ["twin"]
    # The starting commands have exited; the worker trains on, in a session of its own
    # (a terminal's hangup misses it).
    assert os.getsid(b.pid()) == b.pid()
    b.wait_epoch(2)

    # A nudge is in effect from the next epoch, never mid-epoch.
    event = b.ask("nudge", "--set", "lr=0.05", "--set", "momentum=0.95")
    e = event["epoch"]
    assert event["kind"] == "nudge" and event["from_epoch"] == e + 1
    assert event["before"] == {"lr": 0.01, "momentum": pytest.approx(0.9292893)}
    b.wait_epoch(e + 2)
    hp_lr, hp_m = b.metric("b0", "hp_lr"), b.metric("b0", "hp_momentum")
    assert all(hp_lr[k] == 0.01 for k in range(1, e + 1))
    assert all(hp_lr[k] == 0.05 and hp_m[k] == 0.95 for k in range(e + 1, e + 3))
    # the optimizer itself: the epoch-e checkpoint was written before the nudge
    before, after = b.checkpoint("b0", e), b.checkpoint("b0", e + 1)
    assert before["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert after["optimizer"]["param_groups"][0]["lr"] == 0.05
    assert after["optimizer"]["param_groups"][0]["momentum"] == 0.95
    assert after["optimizer"]["state"], "the optimizer's momentum buffers were kept"
    status = json.loads(b.cli("status", b.name, "--json").stdout)
    assert status["hyperparameters"]["lr"] == 0.05 and status["state"] == "running"
    assert [h["kind"] for h in status["history"]] == ["worker", "nudge"]
    assert status["metrics"][0]["epoch"] == 1 and status["metrics"][0]["hp_lr"] == 0.01

    # Commands refuse what the run cannot take, and queue nothing.
    before = b.record.lineage().hparams
    for args, fragment in [
        (("nudge", b.name, "--set", "lr=0.9"), "has lr in [0.001, 0.3]"),
        (("nudge", b.name, "--set", "hidden_units=8"), "shapes the net"),
        (("nudge", b.name, "--set", "batch_size=64"), "fixes batch_size at 32"),
        (("nudge", b.name, "--set", "lr_decay=0.1"), "has no parameter 'lr_decay'"),
        (("nudge", b.name, "--set", "momentun=0.9"), "did you mean 'momentum'"),
        (("nudge", "nobody", "--set", "lr=0.01"), "no babysat run 'nobody'"),
        (("revert", b.name, "--epoch", "9999"), "no checkpoint of epoch 9999"),
        (("revert", b.name, "--epoch", "1", "--branch", "b7"), "has no branch 'b7'"),
        (("start", b.sweep, "--name", b.name), "exists"),
        (("start", "--resume", b.name), "still running"),
    ]:
        done = b.cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert_one_paragraph_error(done.stderr, fragment)
    assert not any(k.startswith(REQUEST) for k in b.tags()), "a refused request was queued"
    assert b.record.lineage().hparams == before

    # A killed worker: the run is lost, a nudge waits in the store for the next worker,
    # and `start --resume` goes on from the newest checkpoint, losing no epoch and
    # logging none twice.
    b.kill()
    status = json.loads(b.cli("status", b.name, "--json").stdout)
    assert status["state"] == "lost" and not status["alive"]
    assert b.cli("nudge", b.name, "--set", "lr=0.02").returncode == 0
    b.resume()
    reached = b.wait_epoch(b.epoch() + 3)
    b.kill()  # and again: a stop now closes the record itself and registers the best epoch
    done = b.cli("stop", b.name, "--register", "killed-model")
    assert done.returncode == 0, done.stderr
    assert b.tags()["caviar.state"] == "stopped"
    steps = b.steps("b0")
    assert sorted(steps) == list(range(1, max(steps) + 1)) and max(steps) >= reached
    assert len(steps) == len(set(steps)), "an epoch was logged twice"
    kinds = [e["kind"] for e in b.record.lineage().events]
    assert kinds.count("worker") == 2 and kinds.count("nudge") == 2
    assert kinds[-2:] == ["stopped", "register"]
    lr = b.metric("b0", "hp_lr")
    assert lr[max(steps)] == 0.02
    val = b.metric("b0", "val_loss")
    assert json.loads(done.stdout)["epoch"] == min(val, key=val.get)  # the best, not the last

    # A stopped run takes no requests.
    done = b.cli("nudge", b.name, "--set", "lr=0.01")
    assert done.returncode == 2
    assert_one_paragraph_error(done.stderr, "is stopped", "start --resume")


def test_pause_holds_the_run_a_revert_branches_it_and_stop_registers_the_best_epoch(
        babysat, tmp_path):
    from mlflow import MlflowClient

    from models.serving import load_model
    from orchestrator.tracking.registry import download_model

    b = babysat()
    b.wait_epoch(6)
    held = b.ask("pause")["epoch"]
    assert b.tags()["caviar.state"] == "paused"
    # The paused worker still takes requests (here a nudge), between epochs it does not
    # train: a worker that trained on would take it after one more epoch.
    nudged = b.ask("nudge", "--set", "lr=0.02")
    assert nudged["epoch"] == held and nudged["from_epoch"] == held + 1
    assert b.epoch() == held and max(b.steps("b0")) == held
    assert b.record.checkpoint_epochs(b.record.lineage().branch("b0"))[-1] == held
    assert b.cli("pause", b.name).returncode == 0  # paused already: nothing queued
    assert not any(k.startswith(REQUEST) for k in b.tags())

    # A revert goes on from the checkpoint as a new branch; a paused run stays paused.
    event = b.ask("revert", "--epoch", "3")
    assert event["to_epoch"] == 3 and event["to_branch"] == "b0" and event["branch"] == "b1"
    assert b.epoch() == 3 and b.tags()["caviar.branch"] == "b1"
    assert b.tags()["caviar.state"] == "paused"
    b.ask("resume")  # and resume lets it go on
    b.wait_epoch(5)
    assert b.tags()["caviar.state"] == "running"
    assert min(b.steps("b1")) == 4  # the next epoch is K+1
    # Weights, optimizer and RNG came back exactly: same hyperparameters (the checkpoint's:
    # the nudge while paused was b0's), same epoch 4.
    old, new = b.checkpoint("b0", 4)["model"], b.checkpoint("b1", 4)["model"]
    assert all(torch.equal(old[k], new[k]) for k in old)
    # The branch left is on record with its checkpoints and epochs.
    lineage = b.record.lineage()
    assert lineage.branch("b0").status == "abandoned"
    assert b.record.checkpoint_epochs(lineage.branch("b0")) == list(range(held + 1))
    assert sorted(b.steps("b0")) == list(range(1, held + 1))
    # A revert of a revert: back onto the abandoned branch's later epoch, with a new lr.
    event = b.ask("revert", "--epoch", str(held), "--branch", "b0", "--set", "lr=0.002")
    assert event["branch"] == "b2" and event["to_branch"] == "b0"
    b.wait_epoch(held + 2)
    assert min(b.steps("b2")) == held + 1
    assert b.metric("b2", "hp_lr")[held + 1] == 0.002
    tags = b.record.client.get_run(b.record.lineage().branch("b1").run_id).data.tags
    assert tags["caviar.status"] == "abandoned" and tags["caviar.forked_from"] == "b0@3"

    # A stop registers the best epoch of the current line (b0 up to the fork, then b2).
    done = b.cli("stop", b.name, "--register", "bad/name", "--wait", "60")
    assert done.returncode == 2 and "--register 'bad/name'" in done.stderr
    done = b.cli("stop", b.name, "--register", "bs-model", "--wait", "120")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["register"] == "bs-model"  # the stop event
    line = {e: (v, "b0") for e, v in b.metric("b0", "val_loss").items() if e <= held}
    line.update({e: (v, "b2") for e, v in b.metric("b2", "val_loss").items()})
    best = min(line, key=lambda e: line[e][0])
    owner = line[best][1]
    assert f"registered epoch {best} of {owner} as 'bs-model' version 1" in done.stderr
    uri = embedded_uri(b.workdir)
    client = MlflowClient(uri, registry_uri=uri)
    v1 = client.get_model_version("bs-model", "1")
    assert v1.tags["caviar.babysit"] == b.name and v1.tags["caviar.branch"] == owner
    assert v1.tags["caviar.epoch"] == str(best) and "hp.lr" in v1.tags
    net, meta = load_model(download_model(uri, "models:/bs-model/1", tmp_path / "m1"))
    assert meta["epoch"] == best and "test_accuracy" in meta["metrics"]
    # Any epoch can be registered, on any branch's line.
    done = b.cli("register", b.name, "bs-model", "--epoch", str(held), "--branch", "b0")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"model": "bs-model", "version": "2", "epoch": held,
                                       "branch": "b0"}
    history = b.record.lineage().events
    assert [(e["model"], e["version"]) for e in history if e["kind"] == "register"] == [
        ("bs-model", "1"), ("bs-model", "2")]
    follow = b.cli("status", b.name, "--follow")  # a run that ended: one picture, then out
    assert follow.returncode == 0 and "stopped" in follow.stdout and "revert to epoch" in \
        follow.stdout
    listed = json.loads(b.cli("list", "--json").stdout)
    assert [(r["name"], r["state"]) for r in listed] == [(b.name, "stopped")]
    files = {f.path for f in client.list_artifacts(b.record.run_id)}
    assert {"curve.png", "lineage.json", "babysit.json", "sweep.yaml"} <= files


@pytest.fixture
def cluster_and_server(monkeypatch, tmp_path):
    """A Ray head with no CPU for work and one worker node (the actor lands on the node),
    and an MLflow tracking server every node reaches: (cluster, node, url). The server
    starts while the cluster does. No dashboard: nothing here uses it, and its fixed port
    may be another test's."""
    from ray.cluster_utils import Cluster
    from services import Server

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    server, cluster = Server(tmp_path), None
    pool = ThreadPoolExecutor(1)
    serving = pool.submit(server.start)
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 0, "include_dashboard": False})
        node = cluster.add_node(num_cpus=1)
        serving.result()
        yield cluster, node, server.url
    finally:
        pool.shutdown()
        server.stop(signal.SIGKILL)  # its own shutdown is no part of this test
        if cluster is not None:
            cluster.shutdown()


def test_on_a_cluster_an_actor_records_through_a_server_and_a_lost_node_restarts_it(
        babysat, cluster_and_server, tmp_path):
    import ray
    from mlflow import MlflowClient

    cluster, node, url = cluster_and_server
    # A run no node can hold is refused (in a process of its own, alongside the start).
    too_big = write(tmp_path, "big.yaml", resources={"cpu": 4})
    with ThreadPoolExecutor(1) as pool:
        refusing = pool.submit(caviar, "babysit", "start", too_big, "--address",
                               cluster.address, "--tracking-uri", url, "--workdir",
                               tmp_path / "runs", timeout=240)
        # the starting command has exited by now
        b = babysat("--keep", "1", "--address", cluster.address, uri=url, own_process=True)
        refused = refusing.result()
    assert refused.returncode == 2
    assert_one_paragraph_error(refused.stderr, "no node of the cluster has that much")
    assert [r["name"] for r in json.loads(b.cli("list", "--json").stdout)] == [b.name]
    where = json.loads(b.tags()[WHERE])
    assert where["launcher"] == "ray" and where["actor"] == f"babysit-{b.name}"
    b.wait_epoch(3)
    b.ask("nudge", "--set", "lr=0.02")
    assert not ray.is_initialized()  # commanded from a process without Ray: none needed

    # The actor's node is lost mid-run. A machine that goes down stops at once: the
    # actor's process is frozen before its node goes and killed after, so nothing it was
    # doing can finish behind the restarted actor's back.
    cluster.add_node(num_cpus=1)
    os.kill(where["pid"], signal.SIGSTOP)
    cluster.remove_node(node)
    with contextlib.suppress(ProcessLookupError):
        os.kill(where["pid"], signal.SIGKILL)
    # Ray restarts the actor on the other node; it goes on from the newest checkpoint.
    wait_for("the actor restarted on another node",
             lambda: json.loads(b.tags()[WHERE])["node_id"] != where["node_id"])
    b.wait_epoch(b.epoch() + 2)
    b.ask("stop", "--register", "served")
    steps = b.steps("b0")
    assert sorted(steps) == list(range(1, max(steps) + 1)), "an epoch was lost or logged twice"
    assert [e["kind"] for e in b.record.lineage().events].count("worker") == 2
    assert b.metric("b0", "hp_lr")[max(steps)] == 0.02  # the nudge outlived the node

    # The server is all the run (on whichever node) and its commands share.
    assert not (b.workdir / "mlflow.db").exists()  # nothing went through a local file
    held = b.record.checkpoint_epochs(b.record.lineage().branch("b0"))
    assert held == [0, b.epoch()]  # keep: 1 deleted the others through the server
    # The best epoch whose checkpoint is left was registered (keep may delete the best).
    version = MlflowClient(url, registry_uri=url).get_model_version("served", "1")
    assert version.tags["caviar.babysit"] == b.name
    assert version.tags["caviar.epoch"] == str(b.epoch())
    done = b.cli("register", b.name, "served", "--epoch", "1")
    assert done.returncode == 2 and "no checkpoint of epoch 1" in done.stderr

    # The stop is on record before the actor's process has exited; then it ends for good.
    wait_for("the actor ended", lambda: any(
        a["Name"] == f"babysit-{b.name}" and a["State"] == "DEAD"
        for a in cluster.global_state.actor_table(None).values()), 60)
