"""Where Ray runs: a cluster to join (``address`` / RAY_ADDRESS), else Ray in this process.

Embedded default: ``ray.init()`` on the local cores, dashboard off, every Ray
process listening on 127.0.0.1 only, token authentication on (Ray's default for a
local cluster). Every command that needs Ray (a sweep, the re-tune gate, the
hardware probe) connects here.
"""

from __future__ import annotations

import os

from searchspaces import SpecError

# Ray's own switch for the loopback-only mode it uses on macOS and Windows. On Linux
# Ray 2.60 otherwise binds its GCS, raylet and workers to every interface (and
# ``_node_ip_address="127.0.0.1"`` does not change that).
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Makes the Ray this process starts listen on 127.0.0.1 only, unless the user set
    LOOPBACK_ONLY to 1 (then other machines can join it: and run code on it)."""
    if os.environ.setdefault(LOOPBACK_ONLY, "0") != "0":
        return
    from ray._private import ray_constants

    # Read by Ray at import: this process may have imported Ray before (its children,
    # the GCS, raylet and workers, read the variable).
    ray_constants.ENABLE_RAY_CLUSTER = False


# Ray prestarts an idle worker per CPU for the first driver. Tune's trial actors never
# take them (Tune gives its actors a runtime_env, and a worker serves one runtime_env),
# so on the embedded Ray each was a Python start (~1 s of CPU) taken from the sweep's
# own start, then polling while idle. Without them a worker starts when a task needs one.
LOCAL_SYSTEM_CONFIG = {"prestart_worker_first_driver": False}


def start_local(**kwargs) -> None:
    """Starts the embedded Ray in this process (``kwargs`` to ``ray.init``).

    ``address="local"``: a new Ray of its own, always. Without it ``ray.init()`` joins
    any cluster that ``ray start`` runs on this machine (Ray looks for one among the
    processes), where the embedded Ray's settings are refused: a sweep meant for the
    local cores would fail, or run on that cluster. Joining one is ``--address``."""
    import ray

    loopback_only()
    ray.init(address="local", include_dashboard=False, _system_config=LOCAL_SYSTEM_CONFIG,
             **kwargs)


def use_token_if_any() -> None:
    """Joining a cluster with token authentication: a Ray 2.60 client given an address
    sends its token only with RAY_AUTH_MODE=token, which a token in RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token turns on here (unless the mode is set).

    Ray reads the mode into its config when it is imported: a process that imported
    Ray already has its config refreshed, as Ray's own local start does."""
    import sys
    from pathlib import Path

    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")).expanduser()
    if "RAY_AUTH_MODE" in os.environ or not (os.environ.get("RAY_AUTH_TOKEN")
                                             or token_file.is_file()):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


def connect(address: str | None = None, quiet: bool = True) -> None:
    """Joins a Ray cluster (``address`` / RAY_ADDRESS), else starts Ray in this process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": "ERROR", "log_to_driver": not quiet}
    if address:
        use_token_if_any()
        ray.init(address=address, **kwargs)
    else:
        start_local(**kwargs)


CLIENT_REFUSED = (
    "a sweep cannot run through a Ray Client address (ray://): Ray Tune then runs its "
    "driver loop on the cluster's head, which writes the sweep's event log, strategy state "
    "and summary to the head's disk, not here. Send the sweep with `caviar submit SWEEP "
    "--address http://HEAD:8265` (a Ray Job runs it on the head), or run caviar on a node "
    "of the cluster with --address HEAD:6379")


def client_address(address: str | None = None) -> bool:
    """Whether ``address`` (else RAY_ADDRESS) is a Ray Client one (ray://)."""
    return str(address or os.environ.get("RAY_ADDRESS") or "").startswith("ray://")


def check_resources(cpu: float, gpu: float, source: str) -> None:
    """Refuses a trial size no node of the cluster can ever give (instead of pending
    forever): a SpecError on ``source``'s key 'resources'."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
        return
    largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    raise SpecError(source, "key 'resources'",
                    f"each trial asks for cpu: {cpu:g}, gpu: {gpu:g}, but no node of the "
                    f"cluster has that much ({len(nodes)} node(s); the largest has "
                    f"{largest.get('CPU', 0):g} CPU and {largest.get('GPU', 0):g} GPU). "
                    "Lower the request, or run on a cluster with such nodes")
