"""A finished trial rebuilt from its MLflow record and trained again (``caviar rerun``).

- ``recipe``: what the record says: the configuration, seed, epochs, data, torch
  threads, device and versions, and the metrics of every epoch.
- ``replay``: trains it again (here or in a Ray task on a cluster), compares epoch by
  epoch, says what differs, and logs the re-run as its own run linked to the first.
"""
