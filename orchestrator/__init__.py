"""caviar's orchestrator: everything above the search spaces and the models.

One package per capability; imports point down (``tests/test_layout.py`` checks):

- ``cli``: the ``caviar`` command, one module per command group, thin handlers.
- ``retune``: the re-tune job (its file, the triggers, the gate, the job).
- ``sweep``: a study on Ray Tune (the sweep file, the driver, the trainable, the event
  log, summary.json and trials.csv, plots, the export to MLflow).
- ``strategies``, ``tracking``, ``cluster``: the search strategies (Ray Tune
  Searchers), MLflow (the store, the sweep's export, the registry and its lock), and
  Ray (connecting, Ray Jobs, the hardware fingerprint).

Below them all: ``searchspaces`` and ``models``.
"""

DEFAULT_WORKDIR = "./caviar-runs"  # every command's --workdir when none is given
