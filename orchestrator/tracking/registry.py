"""The model registry's side of caviar: production and previous aliases, and a lock.

Production is the version of a registered model with the alias ``production``.
Promoting moves that alias and gives the version it left the alias ``previous``;
``rollback`` swaps the two back.

The re-tune lock lives in the tracking store, so it holds across machines: it is a
registered model named ``caviar-lock.<model>``, created by whoever takes the lock.
MLflow refuses a second registered model of the same name (a unique key in its
database), so two takers cannot both succeed. Its tags say who holds it and until
when (the lease); the holder renews the lease while it works and deletes the model
when done. A lease that ran out (its holder died) is broken by the next taker. A
taker given ``wait_s`` waits that long for a holder to let go before it gives up.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.tracking.store import mlflow_client, mlflow_settings
from searchspaces.errors import EXIT_LOCKED, CaviarError

PRODUCTION, PREVIOUS = "production", "previous"
LOCK_PREFIX = "caviar-lock."


class RegistryError(CaviarError):
    """The registry does not hold what was asked for (a model, a version, an alias):
    bad input (exit 2)."""


MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def check_model_name(name: str, what: str = "the model's name") -> str:
    """A registered model name MLflow takes and no filter string needs quoted."""
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise RegistryError(f"{what} {name!r}: 1-100 letters, digits, spaces, '.', '_' or "
                            "'-', starting with a letter or digit")
    return name


def version_tags(config: dict, metrics: dict, hardware: dict, tags: dict) -> dict:
    """What a model version records of how it was made, for the re-tune job to measure
    staleness against: when (``caviar.tuned_at``), its hyperparameters (``hp.*``), its
    metrics (``metric.*``) and the hardware it trained on (``hw.*``)."""
    return {"caviar.tuned_at": _iso(_now()), **tags,
            **{f"metric.{k}": str(v) for k, v in metrics.items() if v is not None},
            **{f"hp.{k}": str(v) for k, v in config.items()},
            **{f"hw.{k}": str(v) for k, v in hardware.items()}}


def register_version(client, name: str, run_id: str, tags: dict, path: str = "model") -> str:
    """Registers the run's ``path`` artifacts (a caviar model folder) as a new version of
    ``name``, creating the registered model if needed; returns the version.

    MLflow's ``register_model`` wants a logged MLflow model; a plain folder of weights
    and JSON is registered through ``create_model_version``."""
    from mlflow.exceptions import MlflowException

    try:  # looked up by name, not through a filter string a quote in it would break
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{path}"
    return str(client.create_model_version(name, source, run_id=run_id, tags=tags).version)


def download_model(uri: str, model_uri: str, dst: str | Path | None = None) -> Path:
    """The files of ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``runs:/ID/PATH``,
    downloaded from the registry at ``uri``."""
    import mlflow
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    mlflow_settings()  # no progress bar in cron mail
    source = model_uri
    if model_uri.startswith("models:/"):
        # The version's own source, looked up here: MLflow's models:/ download reads the
        # process-wide tracking URI, which this would otherwise have to set for everyone.
        client = mlflow_client(uri, registry=True)
        name, version = get_model_name_and_version(client, model_uri)
        source = client.get_model_version(name, version).source
    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=source, tracking_uri=uri, dst_path=None if dst is None else str(dst)))


def _model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=50)
                 if not m.name.startswith(LOCK_PREFIX)]
        raise RegistryError(f"no registered model {name!r} in the registry (it holds: "
                            f"{', '.join(known) or 'none'})") from None


def alias_version(client, name: str, alias: str):
    """The version with ``alias``, or None."""
    model = _model(client, name)
    version = (model.aliases or {}).get(alias)
    return client.get_model_version(name, version) if version else None


def production(client, name: str):
    """The production version of ``name``; RegistryError when there is none."""
    version = alias_version(client, name, PRODUCTION)
    if version is None:
        raise RegistryError(f"model {name!r} has no version with the alias {PRODUCTION!r}: "
                            f"set one with `caviar promote {name} --version N`")
    return version


def promote(client, name: str, version: str) -> tuple[str | None, str]:
    """Makes ``version`` production; the version it replaces becomes previous.

    Returns (the old production version or None, the new one)."""
    from mlflow.exceptions import MlflowException

    aliases = {k: str(v) for k, v in (_model(client, name).aliases or {}).items()}
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"model {name!r} has no version {version}") from None
    old_version, was_previous = aliases.get(PRODUCTION), aliases.get(PREVIOUS)
    if old_version == str(version):
        return old_version, str(version)
    if old_version is None:
        client.set_registered_model_alias(name, PRODUCTION, str(version))
        return None, str(version)
    client.set_registered_model_alias(name, PREVIOUS, old_version)
    try:
        client.set_registered_model_alias(name, PRODUCTION, str(version))
    except Exception:
        try:  # production did not move: put previous back where it was
            if was_previous is None:
                client.delete_registered_model_alias(name, PREVIOUS)
            else:
                client.set_registered_model_alias(name, PREVIOUS, was_previous)
        except Exception:  # noqa: BLE001, S110 - the server is gone; the first error tells
            pass
        raise
    return old_version, str(version)


def rollback(client, name: str) -> tuple[str, str]:
    """Swaps production and previous; returns (the version left, the version restored)."""
    current = production(client, name)
    previous = alias_version(client, name, PREVIOUS)
    if previous is None:
        raise RegistryError(f"model {name!r} has no version with the alias {PREVIOUS!r}: "
                            "nothing to roll back to")
    client.set_registered_model_alias(name, PRODUCTION, str(previous.version))
    client.set_registered_model_alias(name, PREVIOUS, str(current.version))
    # the re-tune job's cooldown starts now: it does not undo a rollback the next night
    client.set_model_version_tag(name, str(previous.version), "caviar.checked_at",
                                 _iso(_now()))
    return str(current.version), str(previous.version)


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class Locked(CaviarError):
    """Another process holds the lock; the message says who and until when (exit 3)."""

    exit_code, label = EXIT_LOCKED, "locked"


class Lock:
    """``with Lock(client, model):`` one holder at a time, across machines (see above).

    Args:
        lease_s: how long the lock holds without a renewal (its holder renews it while
            alive), so a holder that died frees it after that long.
        what: who takes it, in words, for the message another taker gets.
        wait_s: how long ``acquire`` waits for another holder to let go (trying every
            ``POLL_S``) before it raises Locked; 0: not at all.
    """

    POLL_S = 1.0

    def __init__(self, client, model: str, lease_s: float = 600.0, what: str = "retune",
                 wait_s: float = 0.0):
        self.client, self.model, self.lease_s, self.wait_s = client, model, lease_s, wait_s
        self.name = f"{LOCK_PREFIX}{model}"
        # unique per taker: a lock is renewed and released only by the taker it names
        self.holder = f"{what} pid {os.getpid()} on {socket.gethostname()} " \
                      f"[{uuid.uuid4().hex[:8]}]"
        self.waiting = threading.Event()  # set once acquire() found it held and waits
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _tags(self) -> dict:
        now = _now()
        return {"holder": self.holder, "since": _iso(now), "expires": str(now + self.lease_s),
                "expires_at": _iso(now + self.lease_s)}

    def acquire(self) -> None:
        """Takes the lock, waiting up to ``wait_s`` for its holder; Locked if it cannot."""
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return self._try_acquire()
            except Locked:
                if time.monotonic() + self.POLL_S > deadline:
                    raise
                self.waiting.set()
                time.sleep(self.POLL_S)

    def _try_acquire(self) -> None:
        from mlflow.exceptions import MlflowException

        for _ in range(2):  # the second try follows breaking an expired lease
            try:
                self.client.create_registered_model(
                    self.name, tags=self._tags(),
                    description=f"caviar's lock for re-tuning {self.model!r}: deleted when "
                                "the job ends; a lease past 'expires_at' may be broken")
                self._start_renewing()
                return
            except MlflowException as e:
                if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code) and \
                        "already exists" not in str(e):
                    raise
            tags = self._held_tags()
            if tags is None:
                continue  # released in between: try again
            if float(tags.get("expires", "0")) > _now():
                raise Locked(f"model {self.model!r} is locked by {tags.get('holder')} since "
                             f"{tags.get('since')} (lease until {tags.get('expires_at')}; "
                             f"a holder that died leaves it until then)")
            # Its holder died. Break it only if it is still that dead holder's: another
            # taker may have broken it and taken it anew since we read it.
            again = self._held_tags()
            if again is not None and again.get("holder") == tags.get("holder"):
                self.client.delete_registered_model(self.name)
        raise Locked(f"model {self.model!r}: another job took the lock as its last one expired")

    def _held_tags(self) -> dict | None:
        """The lock's tags, or None when nobody holds it."""
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_registered_model(self.name).tags or {})
        except MlflowException:
            return None

    def mine(self) -> bool:
        tags = self._held_tags()
        return tags is not None and tags.get("holder") == self.holder

    def _start_renewing(self) -> None:
        def renew():
            while not self._stop.wait(self.lease_s / 3):
                try:
                    if not self.mine():
                        return  # broken by another taker after our lease ran out
                    self.client.set_registered_model_tag(self.name, "expires",
                                                         str(_now() + self.lease_s))
                    self.client.set_registered_model_tag(self.name, "expires_at",
                                                         _iso(_now() + self.lease_s))
                except Exception:  # noqa: BLE001 - the server blinked: the next try renews
                    pass

        self._thread = threading.Thread(target=renew, name="caviar-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            if self.mine():
                self.client.delete_registered_model(self.name)
        except Exception:  # noqa: BLE001 - gone already; or its lease will run out
            pass

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
