"""MLflow: where it is, what a sweep writes to it, and the model registry.

- ``store``: the tracking URI a command uses; the embedded sqlite store, made whole.
- ``runs``: a parent run and its child runs, written so that nothing is written twice,
  with one record of progress per run.
- ``sync``: keeping MLflow up to date off the caller's loop (a thread, or a process).
- ``registry``: production and previous aliases, registering a version, the lock.
- ``ui``: ``caviar ui``, the MLflow UI for the embedded store on 127.0.0.1.

Nothing here knows what a sweep or a re-tune is: they call in with run ids and tags.
"""
