"""MLflow: the sweep's export, the model registry and its lock.

- ``sink``: the event log exported to MLflow by one writer on the driver.
- ``registry``: production and previous aliases, and the re-tune lock.
"""
