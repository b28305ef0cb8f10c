"""Where trials run: Ray Jobs submission and the hardware fingerprint.

- ``submit``: ``caviar submit``, a sweep sent to a cluster as a Ray Job.
- ``hardware``: what a trial trains on (GPU model and count, CPU, torch, CUDA).
"""
