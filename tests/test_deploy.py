"""deploy/: the cron, systemd and Kubernetes files run a command caviar accepts."""

from __future__ import annotations

import configparser
import shlex
import subprocess
from pathlib import Path

import yaml

from orchestrator.cli import build_parser
from orchestrator.cli.retune import cmd_retune

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def caviar_args(command: list[str]) -> list[str]:
    i = next(i for i, word in enumerate(command) if word.endswith("caviar"))
    return command[i + 1:]


def test_the_kubernetes_cronjob_never_runs_two_jobs_and_runs_caviar_retune():
    """It submits `caviar retune` as a Ray Job to the RayCluster's head (not as a Ray
    Client, which caviar refuses), waiting for it: the pod needs the token only."""
    job = yaml.safe_load((DEPLOY / "k8s" / "base" / "retune-cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:3] == ["ray", "job", "submit"] and "--no-wait" not in command
    entrypoint = command[command.index("--") + 1:]
    args = build_parser().parse_args(caviar_args(entrypoint))
    assert args.func is cmd_retune and not args.dry_run
    env = {e["name"] for e in container["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env
    assert not {"RAY_ADDRESS", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"} & env


def test_the_systemd_unit_runs_caviar_retune_and_accepts_exit_3():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "systemd" / "caviar-retune.service")
    service = unit["Service"]
    args = build_parser().parse_args(caviar_args(shlex.split(service["ExecStart"])))
    assert args.func is cmd_retune and service["Type"] == "oneshot"
    assert "3" in service["SuccessExitStatus"].split()
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read(DEPLOY / "systemd" / "caviar-retune.timer")
    assert timer["Timer"]["OnCalendar"] and timer["Timer"]["Persistent"] == "true"


def test_the_crontab_line_runs_caviar_retune_nightly():
    lines = [line for line in (DEPLOY / "cron" / "caviar-retune.crontab").read_text()
             .splitlines() if line.strip() and not line.startswith("#") and "=" not in
             line.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert fields[:2] != ["*", "*"] and fields[2:5] == ["*", "*", "*"]  # once a day
    command = shlex.split(fields[5].split("&&")[-1].split(">>")[0])
    assert build_parser().parse_args(caviar_args(command)).func is cmd_retune


def test_the_crontab_wrapper_reports_every_exit_but_0_and_3():
    """cron mails what the line prints: a failure, bad input, a `timeout` kill (124) or a
    signal, never a clean run or another job holding the lock (3)."""
    [line] = [line for line in (DEPLOY / "cron" / "caviar-retune.crontab").read_text()
              .splitlines() if "caviar retune" in line and not line.startswith("#")]
    wrapper = line.split("2>&1;", 1)[1]
    for rc, mailed in ((0, False), (1, True), (2, True), (3, False), (124, True), (137, True)):
        said = subprocess.run(["bash", "-c", f"(exit {rc});{wrapper}"], capture_output=True,
                              text=True, timeout=30).stdout
        assert bool(said.strip()) == mailed, (rc, said)
        assert ("timeout" in said) == (rc == 124), (rc, said)
