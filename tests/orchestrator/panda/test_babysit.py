"""``caviar babysit``: real background workers, a real sqlite MLflow store, every command
run as a user would (its own process: "another terminal"). Epochs are slowed with the
hidden ``--epoch-delay`` so a person (a test) can command the run while it trains."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import assert_one_paragraph_error, caviar, sweep_dict

from orchestrator.cli import main
from orchestrator.panda.channel import REQUEST, WHERE, Record
from orchestrator.tracking.store import embedded_uri

DELAY = "0.15"  # seconds each epoch is held: enough to command it, short enough to wait for


def write(tmp_path: Path, name: str = "sweep.yaml", **overrides) -> Path:
    d = sweep_dict(name="bs", epochs=400, data={"source": "synthetic", "size": 400,
                                                 "n_features": 8, "classes": 3},
                   space={"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                          "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.99},
                          "hidden_units": {"fixed": 16}, "batch_size": {"fixed": 32},
                          "optimizer": {"fixed": "momentum"}})
    d.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


class Babysat:
    """One babysat run started by ``caviar babysit start`` in a process of its own."""

    def __init__(self, tmp_path: Path, *start_args: str, uri: str | None = None):
        self.workdir, self.uri = tmp_path / "runs", uri
        self.sweep = write(tmp_path)
        done = self.cli("start", self.sweep, "--epoch-delay", DELAY, *start_args)
        assert done.returncode == 0, done.stderr
        self.name = done.stdout.strip()
        self.record = Record.find(uri or embedded_uri(self.workdir), self.name)
        self.first_pid = self.pid()  # for the clean-up, should the store be gone by then

    def cli(self, *args, own_process: bool = False):
        """``caviar babysit ARGS``: in its own process (as from another terminal) when
        asked or when it starts a worker, else in this one (the same code, without
        a second's start-up per command)."""
        argv = ["babysit", *map(str, args), "--workdir", str(self.workdir),
                *(["--tracking-uri", self.uri] if self.uri else [])]
        if own_process or args[0] == "start":
            return caviar(*argv, timeout=240)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())

    def ask(self, *args, own_process: bool = False) -> dict:
        """A request that must be taken: returns its event."""
        done = self.cli(args[0], self.name, *args[1:], "--wait", "120",
                        own_process=own_process)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def tags(self) -> dict:
        return self.record.tags()

    def epoch(self) -> int:
        return int(self.tags()["caviar.epoch"])

    def wait_epoch(self, at_least: int, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self.epoch() < at_least:
            assert time.monotonic() < deadline, f"epoch {self.epoch()} never reached {at_least}"
            time.sleep(0.2)
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
        return int(json.loads(self.tags()[WHERE])["pid"])

    def kill(self) -> None:
        """The worker's process (the newest the record names, else the first) is killed."""
        try:
            pid = self.pid()
        except Exception:  # noqa: BLE001 - the tracking server already stopped
            pid = self.first_pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def babysat(tmp_path, no_outside_services):
    runs = []

    def start(*args: str, uri: str | None = None) -> Babysat:
        runs.append(Babysat(tmp_path, *args, uri=uri))
        return runs[-1]

    yield start
    for b in runs:  # a test that failed half-way leaves no worker behind
        b.kill()


def test_a_nudge_is_in_effect_from_the_next_epoch_never_mid_epoch(babysat):
    b = babysat("--set", "lr=0.01")
    assert os.getsid(b.pid()) == b.pid()  # its own session: a terminal's hangup misses it
    b.wait_epoch(2)
    # from another terminal, while it trains
    event = b.ask("nudge", "--set", "lr=0.05", "--set", "momentum=0.95", own_process=True)
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
    status = json.loads(b.cli("status", b.name, "--json", own_process=True).stdout)
    assert status["hyperparameters"]["lr"] == 0.05 and status["state"] == "running"
    assert [h["kind"] for h in status["history"]] == ["worker", "nudge"]
    assert status["metrics"][0]["epoch"] == 1 and status["metrics"][0]["hp_lr"] == 0.01


def test_pause_holds_the_run_and_resume_lets_it_go_on(babysat):
    b = babysat()
    b.wait_epoch(1)
    held = b.ask("pause")["epoch"]
    assert b.tags()["caviar.state"] == "paused"
    time.sleep(2.5)  # a dozen epochs' time
    assert b.epoch() == held and max(b.steps("b0")) == held
    assert b.record.checkpoint_epochs(b.record.lineage().branch("b0"))[-1] == held
    assert b.cli("pause", b.name).returncode == 0  # paused already: nothing queued
    assert not any(k.startswith(REQUEST) for k in b.tags())
    b.ask("resume")
    b.wait_epoch(held + 2)
    assert b.tags()["caviar.state"] == "running"


def test_a_revert_goes_on_from_the_checkpoint_as_a_new_branch(babysat):
    b = babysat()
    b.wait_epoch(6)
    held = b.ask("pause")["epoch"]
    event = b.ask("revert", "--epoch", "3")
    assert event["to_epoch"] == 3 and event["to_branch"] == "b0" and event["branch"] == "b1"
    assert b.epoch() == 3 and b.tags()["caviar.branch"] == "b1"
    assert b.tags()["caviar.state"] == "paused"  # a paused run stays paused
    b.ask("resume")
    b.wait_epoch(5)
    assert min(b.steps("b1")) == 4  # the next epoch is K+1
    # Weights, optimizer and RNG came back exactly: same hyperparameters, same epoch 4.
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


def test_a_killed_worker_resumed_loses_no_epoch_and_logs_none_twice(babysat):
    b = babysat()
    b.wait_epoch(4)
    b.kill()
    time.sleep(0.5)
    status = json.loads(b.cli("status", b.name, "--json").stdout)
    assert status["state"] == "lost" and not status["alive"]
    b.cli("nudge", b.name, "--set", "lr=0.02")  # waits in the store for the next worker
    done = b.cli("start", "--resume", b.name)
    assert done.returncode == 0, done.stderr
    reached = b.wait_epoch(b.epoch() + 3)
    b.kill()  # and again: a stop now closes the record itself and registers the best epoch
    time.sleep(0.5)
    done = b.cli("stop", b.name, "--register", "killed-model")
    assert done.returncode == 0, done.stderr
    steps = b.steps("b0")
    assert sorted(steps) == list(range(1, max(steps) + 1)) and max(steps) >= reached
    assert len(steps) == len(set(steps)), "an epoch was logged twice"
    kinds = [e["kind"] for e in b.record.lineage().events]
    assert kinds.count("worker") == 2 and "nudge" in kinds and kinds[-2:] == ["stopped",
                                                                             "register"]
    lr = b.metric("b0", "hp_lr")
    assert lr[max(steps)] == 0.02
    val = b.metric("b0", "val_loss")
    assert json.loads(done.stdout)["epoch"] == min(val, key=val.get)  # the best, not the last


@pytest.mark.parametrize("item, fragment", [
    ("momentun=0.9", "did you mean 'momentum'"),
    ("lr=0.9", "has lr in [0.001, 0.3] (log), got 0.9; the run is unchanged"),
    ("optimizer=adam", "optimizer shapes the net or its optimizer"),
    ("hidden_units=32", "hidden_units shapes the net"),
    ("lr=abc", "lr must be a float"),
])
def test_bad_nudges_are_refused_and_the_run_is_unchanged(item, fragment, tmp_path,
                                                          no_outside_services):
    from orchestrator.cli._common import UsageError
    from orchestrator.cli.babysit import nudge_values

    config = {"source": "sweep.yaml",
              "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.3},
                        "batch_size": {"fixed": 64}, "hidden_units": {"fixed": 16}}}
    with pytest.raises(UsageError) as e:
        nudge_values([item], config)
    assert fragment in str(e.value)
    with pytest.raises(UsageError, match="fixes batch_size at 64"):
        nudge_values(["batch_size=32"], config)


def test_commands_to_a_run_refuse_what_it_cannot_take(babysat):
    b = babysat()
    b.wait_epoch(2)
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
    b.ask("stop")
    assert b.tags()["caviar.state"] == "stopped"
    done = b.cli("nudge", b.name, "--set", "lr=0.01")
    assert done.returncode == 2
    assert_one_paragraph_error(done.stderr, "is stopped", "start --resume")


def test_stop_registers_the_best_epoch_and_any_epoch_can_be_registered(babysat, tmp_path):
    from mlflow import MlflowClient

    from models.serving import load_model
    from orchestrator.tracking.registry import download_model

    b = babysat("--keep", "2")
    b.wait_epoch(5)
    held = b.ask("pause")["epoch"]
    b.ask("revert", "--epoch", str(held - 1))
    done = b.cli("stop", b.name, "--register", "bad/name", "--wait", "60")
    assert done.returncode == 2 and "--register 'bad/name'" in done.stderr
    done = b.cli("stop", b.name, "--register", "bs-model", "--wait", "120")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["register"] == "bs-model"  # the stop event
    assert f"registered epoch {held - 1} of b0 as 'bs-model' version 1" in done.stderr
    uri = embedded_uri(b.workdir)
    client = MlflowClient(uri, registry_uri=uri)
    v1 = client.get_model_version("bs-model", "1")
    # the best epoch of the current line whose checkpoint keep: 2 left: held - 1, on b0
    assert v1.tags["caviar.babysit"] == b.name and v1.tags["caviar.branch"] == "b0"
    assert v1.tags["caviar.epoch"] == str(held - 1) and "hp.lr" in v1.tags
    net, meta = load_model(download_model(uri, "models:/bs-model/1", tmp_path / "m1"))
    assert meta["epoch"] == held - 1 and "test_accuracy" in meta["metrics"]
    # keep: 2 kept b0's newest two and its epoch 0 (held - 1 is also a fork now)
    assert b.record.checkpoint_epochs(b.record.lineage().branch("b0")) == [0, held - 1, held]
    done = b.cli("register", b.name, "bs-model", "--epoch", str(held), "--branch", "b0")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"model": "bs-model", "version": "2", "epoch": held,
                                       "branch": "b0"}
    done = b.cli("register", b.name, "bs-model", "--epoch", "1")
    assert done.returncode == 2 and "no checkpoint of epoch 1" in done.stderr
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
def two_node_cluster(monkeypatch):
    """A Ray head with no CPU for work and one worker node: the actor lands on the node."""
    from ray.cluster_utils import Cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=1)
    yield cluster, node
    cluster.shutdown()


def test_on_a_cluster_a_detached_actor_trains_and_a_lost_node_restarts_it(
        babysat, two_node_cluster, tmp_path):
    cluster, node = two_node_cluster
    too_big = write(tmp_path, "big.yaml", resources={"cpu": 4})
    done = caviar("babysit", "start", too_big, "--address", cluster.address, "--workdir",
                  tmp_path / "runs", timeout=240)
    assert done.returncode == 2
    assert_one_paragraph_error(done.stderr, "no node of the cluster has that much")
    b = babysat("--address", cluster.address)  # the starting command has exited by now
    assert [r["name"] for r in json.loads(b.cli("list", "--json").stdout)] == [b.name]
    where = json.loads(b.tags()[WHERE])
    assert where["launcher"] == "ray" and where["actor"] == f"babysit-{b.name}"
    b.wait_epoch(3)
    b.ask("nudge", "--set", "lr=0.02", own_process=True)  # no Ray needed to command it
    cluster.add_node(num_cpus=1)
    cluster.remove_node(node)  # the actor's node is lost mid-run: Ray restarts the actor
    lost_at = b.epoch()
    b.wait_epoch(lost_at + 3)
    assert json.loads(b.tags()[WHERE])["node_id"] != where["node_id"]
    b.ask("stop")
    steps = b.steps("b0")
    assert sorted(steps) == list(range(1, max(steps) + 1)), "an epoch was lost or logged twice"
    assert [e["kind"] for e in b.record.lineage().events].count("worker") == 2
    assert b.metric("b0", "hp_lr")[max(steps)] == 0.02  # the nudge outlived the node
    # The stop is on record before the actor's process has exited: give it a minute.
    probe = (f"import ray, time; ray.init(address={cluster.address!r}, logging_level='ERROR')\n"
             "for _ in range(120):\n"
             f"    ray.get_actor('babysit-{b.name}', namespace='caviar')\n"
             "    time.sleep(0.5)\n")
    probe = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=180)
    assert probe.returncode != 0 and "Failed to look up actor" in probe.stderr  # it ended


def test_on_a_tracking_server_the_server_is_all_the_run_and_its_commands_share(
        babysat, tmp_path):
    from mlflow import MlflowClient
    from services import Server

    server = Server(tmp_path)
    server.start()
    try:
        b = babysat("--keep", "1", uri=server.url)
        b.wait_epoch(3)
        b.ask("nudge", "--set", "lr=0.02")
        b.ask("stop", "--register", "served")
        assert not (b.workdir / "mlflow.db").exists()  # nothing went through a local file
        b0 = b.record.lineage().branch("b0")
        held = b.record.checkpoint_epochs(b0)
        assert held == [0, b.epoch()]  # keep: 1 deleted the others through the server
        client = MlflowClient(server.url, registry_uri=server.url)
        assert client.get_model_version("served", "1").tags["caviar.babysit"] == b.name
    finally:
        server.stop()


def test_two_starts_of_one_name_at_once_make_one_run(tmp_path, no_outside_services):
    sweep = write(tmp_path)
    argv = [sys.executable, "-m", "orchestrator.cli", "babysit", "start", str(sweep), "--name",
            "twin", "--epoch-delay", DELAY, "--workdir", str(tmp_path / "runs")]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    record = None
    try:
        assert sorted(p.returncode for p in procs) == [0, 2], outs
        assert any("a babysat run named 'twin' exists" in err for _, err in outs)
        record = Record.find(embedded_uri(tmp_path / "runs"), "twin")
        listed = caviar("babysit", "list", "--json", "--workdir", tmp_path / "runs")
        assert [r["name"] for r in json.loads(listed.stdout)] == ["twin"]
    finally:
        if record is not None:
            os.kill(int(json.loads(record.tags()[WHERE])["pid"]), signal.SIGKILL)
