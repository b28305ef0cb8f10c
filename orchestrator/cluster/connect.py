"""Where Ray runs: a cluster to join (``address`` / RAY_ADDRESS), else Ray in this process.

Embedded default: ``ray.init()`` on the local cores, dashboard off. Every command
that needs Ray (a sweep, the re-tune gate, the hardware probe) connects here.
"""

from __future__ import annotations

import os

from searchspaces import SpecError


def connect(address: str | None = None, quiet: bool = True) -> None:
    """Joins a Ray cluster (``address`` / RAY_ADDRESS), else starts Ray in this process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": "ERROR", "log_to_driver": not quiet}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)


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
