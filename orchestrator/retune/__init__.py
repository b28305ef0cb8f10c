"""The re-tune job: is production stale, and if so, is there something really better?

- ``spec``: the re-tune file (RETUNE.yaml), frozen sections.
- ``triggers``: age, drift, hardware and decay, measured against the version's record.
- ``gate``: retrain production and the challenger with several seeds; promote only
  what is really better.
- ``job``: the job from the lock to the decision and its MLflow run.
"""
