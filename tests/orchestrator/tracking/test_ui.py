"""``caviar ui`` (tracking/ui.py): the MLflow UI for the embedded store, on 127.0.0.1,
found by a real browser (headless Chromium)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, free_port, run_main
from mlflow import MlflowClient
from services import wait_healthy


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A two-trial sweep on the embedded store (run here, on a Ray of its own; one trial
    at a time: one trial process to start, not two)."""
    import ray
    import yaml
    from conftest import sweep_dict

    from orchestrator.sweep.run import run_sweep
    from orchestrator.sweep.spec import load_sweep

    tmp = tmp_path_factory.mktemp("ui")
    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_dict(name="ui-sweep", epochs=2,
                                               strategy={"kind": "random", "trials": 2},
                                               resources={"cpu": 1, "concurrency": 1})))
    try:
        summary = run_sweep(load_sweep(sweep), tmp / "w", stream=io.StringIO())
    finally:
        ray.shutdown()
    return {"workdir": tmp / "w", "tmp": tmp, "summary": summary}


class Ui:
    """``caviar ui`` on the sweep's store, in a session of its own, its stderr in a file."""

    def __init__(self, workdir, tmp):
        self.workdir, self.tmp, self.proc = workdir, tmp, None

    def start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.err = self.tmp / f"ui-{self.port}.err"
        with open(self.err, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui",
                                          "--workdir", str(self.workdir), "--port",
                                          str(self.port)], cwd=REPO,
                                         stdout=subprocess.DEVNULL, stderr=f, text=True,
                                         start_new_session=True)
        wait_healthy(self.url, self.proc, log=self.err)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def serving(swept):
    ui = Ui(swept["workdir"], swept["tmp"])
    try:
        ui.start()
        yield ui
    finally:
        ui.stop()


@pytest.fixture
def ui(swept, serving):
    """``caviar ui`` serving the sweep: the module's, started again if a test stopped it."""
    if serving.proc.poll() is not None:
        serving.start()
    return {"url": serving.url, "workdir": swept["workdir"], "err": serving.err,
            "tmp": swept["tmp"], "summary": swept["summary"], "proc": serving.proc,
            "port": serving.port}


def test_caviar_ui_serves_the_embedded_store(ui):
    c = MlflowClient(ui["url"])
    exp = c.get_experiment_by_name("ui-sweep")
    assert len(c.search_runs([exp.experiment_id])) == 3  # the sweep and its 2 trials
    said = ui["err"].read_text()
    assert f"at {ui['url']}" in said
    assert f"ui-sweep: {ui['url']}/#/experiments/{exp.experiment_id}/runs" in said


def _page_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_headless_chromium_finds_the_sweeps_runs_in_the_mlflow_ui(ui):
    from services import absent, chromium, dump_dom

    if chromium() is None:
        absent("Chromium", "apt-get install chromium")
    exp = MlflowClient(ui["url"]).get_experiment_by_name("ui-sweep").experiment_id
    runs = _page_text(dump_dom(f"{ui['url']}/#/experiments/{exp}/runs", ui["tmp"] / "c1"))
    # the parent run by its name, with its trials nested under it
    assert "ui-sweep" in runs and "3 matching runs" in runs, runs[:2000]
    parent = ui["summary"]["mlflow"]["parent_run_id"]
    page = _page_text(dump_dom(f"{ui['url']}/#/experiments/{exp}/runs/{parent}/artifacts",
                               ui["tmp"] / "c2"))
    for name in ("plots", "model", "summary.json", "trials.csv", "sweep.yaml"):
        assert name in page, (name, page[:2000])


def test_caviar_ui_without_a_store_says_so(tmp_path, capsys):
    code, _, err = run_main(capsys, "ui", "--workdir", tmp_path)
    assert code == 2 and "no MLflow store here" in err




def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (read from /proc): pid -> command line."""
    from pathlib import Path

    parents, cmds = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(stat.parent.name)], cmds[int(stat.parent.name)] = int(fields[1]), cmd
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p and child not in out:
                out[child] = cmds[child]
                todo.append(child)
    return out


def test_sigterm_to_caviar_ui_stops_every_process_it_started(ui):
    """The module's ``caviar ui`` (the next test to need one starts another)."""
    import time

    proc, port = ui["proc"], ui["port"]
    try:
        tree = _descendants(proc.pid)
        assert tree, "the MLflow server runs below caviar ui"
        assert not [c for c in tree.values() if "huey" in c or "_job_runner" in c], \
            "MLflow's job runner started"
        proc.send_signal(signal.SIGTERM)  # to caviar ui alone, as `kill PID` sends it
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while left := [p for p in tree if os.path.exists(f"/proc/{p}")]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling /proc until the server's processes are gone
    assert not left, f"left running: {[tree[p] for p in left]}"
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port is still held"
