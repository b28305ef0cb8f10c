"""The panda way: babysit one expensive model, and the planner that says panda or caviar.

- ``start``: a new babysat run (checked, then its name taken, its record made and its
  worker launched), and ``start --resume``'s new worker for a run whose worker is gone.
- ``requests``: nudge, pause and go on, revert and stop, checked and queued for the
  worker; waiting for its answer.
- ``register``: any epoch as a model version.
- ``status``: a run as one object (what ``babysit status`` shows), as text, and every
  run in a store; a run whose worker is gone before it ended is lost.
- ``lineage``: a babysat run's branches and decisions (nudges, pauses, reverts), pure.
- ``channel``: the run's record in MLflow, which is also how commands reach the worker.
- ``worker``: the training loop that applies requests at epoch boundaries.
- ``launch``: starting the worker (a background process here, a detached Ray actor on
  a cluster), and telling whether it is alive.
- ``curve``: the learning curve's plot.
- ``plan``: times one trial here or on a cluster and says panda or caviar.
"""
