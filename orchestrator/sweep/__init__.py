"""Sweeps: the sweep file, the driver that runs a study on Ray Tune, and what it leaves.

- ``spec``: the sweep file (SWEEP.yaml), read once, checked whole, frozen sections.
- ``paths``: where a sweep keeps what (its folder, Tune's trial storage), checked
  before a run, moved aside for ``--fresh``.
- ``run``: the driver on Ray Tune: from a checked sweep to summary.json, trials.csv and
  the model.
- ``schedulers``: fifo, asha and pbt, from the sweep's ``scheduler:`` section.
- ``trainable``: one trial on a Ray worker (``models.train.fit``, checkpointed per epoch).
- ``records``: the event log (trials.jsonl) and the driver-side callback writing it.
- ``report``: summary.json, trials.csv and the table of top trials.
- ``plots``: the sweep's PNGs.
- ``export``: what the sweep hands MLflow: the parent run, the best model, ``caviar sync``.
- ``sink``: the event log exported to MLflow as the sweep runs (``mlflow.json``).
- ``mlflow_writes``: the event log translated into MLflow writes (pure, no MLflow).
"""
