"""The panda way: babysit one expensive model, and the planner that says panda or caviar.

- ``lineage``: a babysat run's branches and decisions (nudges, pauses, reverts), pure.
- ``channel``: the run's record in MLflow, which is also how commands reach the worker.
- ``worker``: the training loop that applies requests at epoch boundaries.
- ``launch``: starting the worker (a background process here, a detached Ray actor on
  a cluster), and telling whether it is alive.
- ``status``: a run as one object (what ``babysit status`` shows); ``curve``: its plot;
  ``register``: any epoch as a model version.
- ``plan``: times one trial here or on a cluster and says panda or caviar.
"""
