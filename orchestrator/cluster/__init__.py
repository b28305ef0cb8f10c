"""Ray: where trials run.

- ``connect``: join a cluster (``--address`` / RAY_ADDRESS) or start Ray here; refuse a
  trial size no node can give.
- ``submit``: ``caviar submit``, a sweep sent to a cluster as a Ray Job.
- ``hardware``: what a trial trains on (GPU model and count, CPU, torch, CUDA).
"""
