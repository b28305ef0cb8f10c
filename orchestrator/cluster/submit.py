"""``caviar submit``: send a sweep to a Ray cluster as a Ray Job.

The job's working directory is a staging folder holding the caviar packages
(orchestrator/, models/, searchspaces/), the sweep file with its search space
written inline, and the sweep's data file when it is a local one: the cluster
needs nothing of this machine. The job runs ``caviar sweep`` on the head node;
its log is streamed here. (What the sweep file becomes is the sweep's business:
``orchestrator.sweep.spec.job_file``; this module only ships it.)
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from orchestrator.cluster.connect import use_token_if_any
from searchspaces.errors import CaviarError, Failure

PACKAGES = ("orchestrator", "models", "searchspaces")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 60.0  # how long a "no available agent, try again later" is retried


def stage(sweep: dict, files: dict[str, Path], into: Path) -> Path:
    """Fills ``into`` with what the job needs: caviar's packages, ``files`` (a path in
    the job's folder -> a local file) and the sweep file; returns the staged sweep file."""
    root = Path(__file__).resolve().parents[2]
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, into / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name, src in files.items():
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, into / name)
    staged = into / "sweep.yaml"
    staged.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return staged


def entrypoint(workdir: str, resume: bool = False, storage: str | None = None) -> str:
    """The job's command line: ``caviar sweep`` of the staged file on the cluster."""
    words = ["python", "-m", "orchestrator.cli", "sweep", "sweep.yaml", "--workdir", workdir]
    words += ["--resume"] if resume else []
    words += ["--storage", storage] if storage else []
    return shlex.join(words)


def no_agent(address: str) -> str:
    return (f"the cluster at {address} still had no job agent to take the sweep after "
            f"{AGENT_WAIT_S:.0f} s. Each node's dashboard agent serves jobs on port 52365 "
            "(`ray start --dashboard-agent-listen-port`); when another Ray on the head's "
            "machine holds that port, the agent serves none, and its log says so "
            "(dashboard_agent.log in the head's session logs)")


def check_dashboard(address: str) -> None:
    """Refuses at once what cannot be a dashboard's address: a Ray Client one (ray://),
    which Ray's Jobs client would spend half a minute connecting to before failing."""
    if address.startswith("ray://"):
        raise CaviarError(f"--address {address}: caviar submit sends the sweep to the "
                          "cluster's dashboard (the Ray Jobs API), so --address must be the "
                          "dashboard's http:// or https:// address, e.g. http://HEAD:8265; "
                          "a ray:// address is a Ray Client one, which submit does not use")


def submit(name: str, sweep: dict, files: dict[str, Path], address: str, workdir: str, *,
           wait: bool = True, resume: bool = False, storage: str | None = None,
           stream=None) -> tuple[str, str]:
    """Submits the sweep ``name`` (its file's mapping, and the local ``files`` it names);
    returns (job id, final status, or PENDING when not waiting). ``storage``: the
    trial storage on the cluster (else the sweep's).

    Raises:
        CaviarError: ``address`` is a Ray Client one (exit 2).
        Failure: the dashboard cannot be reached (exit 1).
    """
    check_dashboard(address)
    try:
        return _submit(name, sweep, files, address, workdir, wait, resume, storage,
                       stream or sys.stderr)
    except ConnectionError as e:
        raise Failure(f"cannot reach the Ray dashboard at {address} ({e}); is the cluster "
                      "up, and is its dashboard port (8265) reachable?") from None


def _submit(name: str, sweep: dict, files: dict[str, Path], address: str, workdir: str,
            wait: bool, resume: bool, storage: str | None, stream) -> tuple[str, str]:
    use_token_if_any()  # before the client is made: it reads the mode once
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    with tempfile.TemporaryDirectory(prefix="caviar-job-") as tmp:
        stage(sweep, files, Path(tmp))
        entry = entrypoint(workdir, resume, storage)
        submission_id = f"caviar-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = client.submit_job(
                    entrypoint=entry, runtime_env={"working_dir": tmp},
                    metadata={"caviar_sweep": name}, submission_id=submission_id)
                break
            except RuntimeError as e:  # a head just started: its job agent is not up yet
                if "try again later" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(no_agent(address)) from e
                time.sleep(2.0)
    print(f"caviar: submitted sweep {name!r} to {address} as job {job_id}", file=stream,
          flush=True)
    if not wait:
        return job_id, "PENDING"
    shown = 0
    while True:  # poll the log: works through proxies that cut websockets
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            stream.write(logs[shown:])
            stream.flush()
            shown = len(logs)
        if status in TERMINAL:
            return job_id, status
        time.sleep(1.0)
