"""Where MLflow is: the tracking URI a command uses, and the embedded sqlite store.

Embedded default: ``sqlite:///<workdir>/mlflow.db`` with artifacts in
``<workdir>/mlartifacts``, nothing to start. Otherwise ``--tracking-uri``,
MLFLOW_TRACKING_URI or a file's ``tracking.uri`` names a server or database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from importlib import metadata
from pathlib import Path

from searchspaces.errors import CaviarError

DB_FILE, ARTIFACTS_DIR = "mlflow.db", "mlartifacts"
MLFLOW_SETTINGS = {
    # A server that does not answer should cost seconds, not MLflow's default minutes
    # of retries: the sync thread retries on its own, and the records wait on disk.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # No progress bars when artifacts move: they fill logs and cron mail.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class StoreMissing(CaviarError):
    """The embedded store named (by --workdir) does not exist: bad input (exit 2)."""


def mlflow_settings() -> None:
    """caviar's MLflow settings (MLFLOW_SETTINGS), each unless the user set it. MLflow
    reads them at each request and artifact transfer, not at import: call this before
    caviar's first call to MLflow (``mlflow_client`` does), and before starting a process that
    calls it (it inherits them)."""
    for name, value in MLFLOW_SETTINGS.items():
        os.environ.setdefault(name, value)


def mlflow_client(uri: str, registry: bool = False):
    """An ``MlflowClient`` of ``uri`` (its model registry too, with ``registry``), with
    caviar's MLflow settings made."""
    from mlflow import MlflowClient

    mlflow_settings()
    return MlflowClient(uri, registry_uri=uri if registry else None)


def embedded_uri(workdir: str | Path) -> str:
    return f"sqlite:///{Path(workdir).expanduser().resolve() / DB_FILE}"


def resolve_uri(explicit: str | None, from_file: str | None, workdir: str | Path) -> str:
    """``--tracking-uri``, else MLFLOW_TRACKING_URI, else the file's, else the embedded store."""
    if explicit and password_in(explicit):
        from searchspaces import SpecError

        raise SpecError("--tracking-uri", "", f"{redacted(explicit)} carries a password, which "
                        "the command line shows to every user of the machine (ps) and keeps in "
                        "shell history: " + CREDENTIALS_FROM_ENV)
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or from_file or embedded_uri(workdir)


CREDENTIALS_FROM_ENV = ("give an MLflow server's credentials in MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD, a database's password in PGPASSWORD (or "
                        "~/.pgpass), and leave them out of the URI")


def password_in(uri: str) -> bool:
    """Whether ``uri`` carries a password (``scheme://user:PASSWORD@host``)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(uri).password is not None
    except ValueError:
        return False


def unredacted(uri: str | None) -> str | None:
    """A URI recorded ``redacted`` as it was given, when $MLFLOW_TRACKING_URI is it (the
    password lives in the environment only); else as recorded."""
    given = os.environ.get("MLFLOW_TRACKING_URI")
    return given if uri and given and redacted(given) == uri else uri


def redacted(uri: str | None) -> str | None:
    """``uri`` with any password in it replaced by ``***``: what caviar prints and records."""
    if not uri or not password_in(uri):
        return uri
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def store_missing(uri: str) -> bool:
    """An embedded (sqlite) store whose file is not there: nothing registered in it."""
    return uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).exists()


def artifact_root(uri: str, workdir: str | Path) -> str | None:
    """The embedded store keeps artifacts in ``<workdir>/mlartifacts``; a server decides."""
    if uri.startswith("sqlite:"):
        return (Path(workdir).expanduser().resolve() / ARTIFACTS_DIR).as_uri()
    return None


def _wal(dbapi_connection, _record) -> None:
    """An embedded store in WAL mode with synchronous=NORMAL: a commit no longer waits for
    the disk (a trial's child run: 16.5 -> 10.9 ms here), readers (caviar ui) never block
    the writer, and a crashed process loses nothing committed (power loss may lose the
    last commits; the event log still holds them for `caviar sync`). Not for the store
    being built under its temporary name: it is linked into place as one file."""
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    try:
        files = [row[2] for row in dbapi_connection.execute("PRAGMA database_list")]
        if not files or not files[0] or files[0].endswith(".tmp"):
            return
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:  # no database (damaged, locked): MLflow's own query says so
        return


def _use_wal() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _wal):
        event.listen(Engine, "connect", _wal)


def ensure_sqlite_store(uri: str) -> None:
    """Creates an embedded sqlite store whole or not at all.

    A new store runs MLflow's migrations for seconds; a driver killed meanwhile
    left a half-migrated file that no later command could open ("table
    _alembic_tmp_runs already exists"). So the store is built under a temporary
    name and linked into place. It is a copy of an empty store made once per MLflow
    version in the user's cache (``_template``): a new workdir's store then takes
    milliseconds, not the migrations' 1.5-3 s of CPU at the start of a sweep.
    """
    if not uri.startswith("sqlite:///"):
        return
    _use_wal()
    path = Path(uri[len("sqlite:///"):])
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        shutil.copyfile(_template(), tmp)
        _adopt_default_experiment(tmp)
    except (OSError, RuntimeError, sqlite3.Error):  # no cache (or no home) to use: migrate here
        tmp.unlink(missing_ok=True)
        _migrate(tmp)
    _link_into_place(tmp, path)


def _migrate(path: Path) -> None:
    """A new store at ``path`` (a temporary name: not in WAL mode), MLflow's migrations run."""
    for name in ("mlflow.store.db.utils", "alembic"):  # its migrations' INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)


def _link_into_place(tmp: Path, path: Path) -> None:
    try:  # another process may have won the race: keep its store
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _template() -> Path:
    """The empty store of this MLflow version in ``$XDG_CACHE_HOME/caviar`` (else
    ``~/.cache/caviar``), made on first use, whole or not at all like any store.

    Raises:
        OSError: the cache cannot be written.
    """
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "caviar"
    path = folder / f"mlflow-{metadata.version('mlflow')}-empty.db"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _migrate(tmp)
        _link_into_place(tmp, path)
    return path


def _adopt_default_experiment(path: Path) -> None:
    """The copied store's Default experiment as MLflow makes it in a new store: its
    artifacts under ``./mlruns/0`` of this process's folder, created now."""
    now = int(time.time() * 1000)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                   "last_update_time = ? WHERE experiment_id = 0",
                   (str(Path.cwd() / "mlruns" / "0"), now, now))


def check_store(uri: str, model: str | None = None, what: str | None = None) -> None:
    """Refuses an embedded store that is not there: nothing is registered in it, and
    creating it would only hide a wrong ``--workdir``.

    Raises:
        StoreMissing: naming the store and what to pass instead.
    """
    if store_missing(uri):
        so = f" (so no model {model!r})" if model else ""
        made = f"that recorded {what}" if what else "that registered " + (
            "it" if model else "the model")
        raise StoreMissing(f"no MLflow store at {uri}{so}: pass --tracking-uri, or the "
                           f"--workdir of the sweep {made}")


def registry_client(uri: str, model: str | None = None):
    """An MlflowClient on ``uri`` for the model registry, which must exist (check_store)."""
    check_store(uri, model)
    ensure_sqlite_store(uri)
    return mlflow_client(uri, registry=True)
