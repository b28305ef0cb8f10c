"""caviar's orchestrator: everything above the search spaces and the models.

One package per capability; imports point down (``tests/test_layout.py`` checks):

- ``cli``: the ``caviar`` command, one module per command group, thin handlers.
- ``retune``: the re-tune job (its file, the triggers, the gate, the job).
- ``panda``: babysitting one model, and the planner (panda or caviar).
- ``rerun``: a finished trial rebuilt from its MLflow record and trained again.
- ``sweep``: a study on Ray Tune (the sweep file, the driver, the trainable, the event
  log, summary.json and trials.csv, plots, the export to MLflow).
- ``strategies``, ``tracking``, ``cluster``: the search strategies (Ray Tune
  Searchers), MLflow (the store, the sweep's export, the registry and its lock), and
  Ray (connecting, Ray Jobs, the hardware fingerprint).

Beside them, shared by all: ``fields`` (the checks of a sweep or re-tune file's fields)
and ``trial_protocol`` (the keys a search adds to a trial's configuration, and how a
trial reports its epochs). Below them all: ``searchspaces`` and ``models``.
"""

DEFAULT_WORKDIR = "./caviar-runs"  # every command's --workdir when none is given


def caviar_version() -> str:
    """The installed caviar's version ("unknown" from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("caviar")
    except PackageNotFoundError:
        return "unknown"
