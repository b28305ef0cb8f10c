"""Trial storage: where a sweep's trials keep their checkpoints and Ray Tune its snapshots.

A local folder (an NFS mount, on a cluster: the same path on every node), or an
object store: ``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX``. Object stores go
through pyarrow.fs, the layer Ray Tune's own ``storage_path`` uses, so Tune's
experiment snapshots and caviar's trial checkpoints land side by side. An
S3-compatible store (MinIO, Ceph, moto) is named by AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, its credentials by AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
(or anything else boto-style credential lookup finds): on every node, never in
the sweep file.

Writes are whole or not at all: locally a file goes to ``NAME.tmp`` and is
renamed; an object store's PUT is atomic itself.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

T = TypeVar("T")
SCHEMES = ("s3", "gs", "gcs")  # object stores: anything else with :// is refused


def is_uri(location: str) -> bool:
    return "://" in str(location)


def check_location(location: str, relative_ok: bool = True) -> str | None:
    """Why ``location`` cannot be trial storage (None when it can). A relative folder is
    taken from the working directory; ``relative_ok=False`` (a sweep file, read from
    wherever a job runs) refuses it."""
    if not isinstance(location, str) or not location.strip():
        return ("must be a folder or an object store URI such as s3://BUCKET/PREFIX, "
                f"got {location!r}")
    if not is_uri(location):
        if not relative_ok and not Path(location).expanduser().is_absolute():
            return (f"{location!r} is a relative folder: give an absolute one (the same "
                    "path on every node) or an object store URI")
        return None
    parsed = urlparse(location)
    if parsed.scheme not in SCHEMES:
        return (f"{location!r}: the scheme {parsed.scheme!r} is not one caviar stores trials "
                f"on (a folder, or {', '.join(s + '://' for s in SCHEMES)})")
    if not parsed.hostname:
        return f"{location!r} names no bucket ({parsed.scheme}://BUCKET/PREFIX)"
    if "@" in parsed.netloc:
        return (f"{parsed.scheme}://...@{parsed.hostname}{parsed.path} carries credentials: "
                "give them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or "
                "an instance role, never in a URI")
    if parsed.query or parsed.fragment:
        return (f"{location!r}: options after '?' or '#' are not taken; set the endpoint "
                "and region in the environment (AWS_ENDPOINT_URL_S3, AWS_REGION)")
    return None


def _filesystem(uri: str):
    """(pyarrow filesystem, path on it) for an object store URI: pyarrow's own resolution,
    as Ray Tune's (for s3:// it takes the endpoint from AWS_ENDPOINT_URL_S3, else
    AWS_ENDPOINT_URL, and the credentials from the usual AWS places)."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


class Storage:
    """One folder of trial storage (a sweep's experiment, a trial's folder...).

    Pickles as its location only: a trial on another node makes its own
    filesystem from its own environment (credentials, endpoint).
    """

    def __init__(self, location: str | os.PathLike):
        location = str(location)
        self.location = location.rstrip("/") if is_uri(location) else \
            str(Path(location).expanduser().resolve())
        self._fs = None

    def __getstate__(self):
        return {"location": self.location, "_fs": None}

    def __repr__(self) -> str:
        return f"Storage({self.location!r})"

    def __str__(self) -> str:
        return self.location

    def __eq__(self, other) -> bool:
        return isinstance(other, Storage) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    @property
    def remote(self) -> bool:
        return is_uri(self.location)

    @property
    def path(self) -> Path | None:
        """The folder on this machine's filesystem, None for an object store."""
        return None if self.remote else Path(self.location)

    def _resolved(self):
        if self._fs is None:
            if self.remote:
                self._fs = _filesystem(self.location)
            else:
                import pyarrow.fs

                self._fs = (pyarrow.fs.LocalFileSystem(), self.location)
        return self._fs

    @property
    def filesystem(self):
        return self._resolved()[0]

    @property
    def fs_path(self) -> str:
        """The folder's path on ``filesystem`` (no scheme)."""
        return self._resolved()[1]

    def tune_location(self) -> tuple[str, object | None]:
        """(storage_path, storage_filesystem) for Ray Tune's RunConfig / Tuner.restore."""
        if not self.remote:
            return self.location, None
        return self.fs_path, self.filesystem

    def __truediv__(self, name: str) -> Storage:
        child = Storage.__new__(Storage)
        child.location = f"{self.location}/{name}"
        child._fs = None if self._fs is None else (self._fs[0], f"{self._fs[1]}/{name}")
        return child

    @property
    def name(self) -> str:
        return self.location.rsplit("/", 1)[-1]

    def _info(self, name: str = ""):
        return self.filesystem.get_file_info(self._join(name))

    def _join(self, name: str) -> str:
        return f"{self.fs_path}/{name}" if name else self.fs_path

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs

        return self._info(name).type != pyarrow.fs.FileType.NotFound

    def is_dir(self, name: str = "") -> bool:
        import pyarrow.fs

        return self._info(name).type == pyarrow.fs.FileType.Directory

    def list(self, pattern: str = "*") -> list[str]:
        """Names in the folder matching ``pattern`` (fnmatch), sorted; [] if none."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.fs_path, allow_not_found=True)
        try:
            found = self.filesystem.get_file_info(selector)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in (f.base_name for f in found) if fnmatch.fnmatch(n, pattern))

    def write(self, name: str, save: Callable[[Path], object]) -> None:
        """``save(path)`` writes a file, which becomes ``name`` in the folder whole."""
        if not self.remote:
            self.mkdir()
            save(Path(self.location) / name)  # caviar's savers are atomic themselves
            return
        with tempfile.TemporaryDirectory(prefix="caviar-put-") as d:
            local = Path(d) / name
            save(local)
            with open(local, "rb") as src, \
                    self.filesystem.open_output_stream(self._join(name)) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    def read(self, name: str, load: Callable[[Path], T]) -> T:
        """``load(path)`` of the file ``name`` (fetched first from an object store)."""
        if not self.remote:
            return load(Path(self.location) / name)
        with tempfile.TemporaryDirectory(prefix="caviar-get-") as d:
            local = Path(d) / Path(name).name
            with self.filesystem.open_input_stream(self._join(name)) as src, \
                    open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return load(local)

    def copy(self, name: str, to: Storage) -> None:
        """The file ``name`` copied whole into the folder ``to``, under the same name."""
        from models.files import atomic_path

        def save(path: Path) -> None:
            with atomic_path(path) as tmp:
                self.read(name, lambda src: shutil.copyfile(src, tmp))

        to.write(name, save)

    def mkdir(self) -> None:
        """Makes the folder (an object store has no folders: nothing to make there)."""
        if not self.remote:
            Path(self.location).mkdir(parents=True, exist_ok=True)

    def delete(self, name: str) -> None:
        """Deletes the file or folder ``name`` if it is there."""
        import pyarrow.fs

        kind = self._info(name).type
        if kind == pyarrow.fs.FileType.Directory:
            self.filesystem.delete_dir(self._join(name))
        elif kind != pyarrow.fs.FileType.NotFound:
            self.filesystem.delete_file(self._join(name))

    def move(self, name: str, to: Storage) -> None:
        """Moves the folder ``name`` to ``to`` (on the same store): a rename locally, a copy
        then a delete on an object store (which renames nothing)."""
        import pyarrow.fs

        src = self._join(name)
        if not self.remote:
            Path(to.location).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, to.location)
            return
        pyarrow.fs.copy_files(src, to.fs_path, source_filesystem=self.filesystem,
                              destination_filesystem=to.filesystem)
        self.filesystem.delete_dir(src)

    def reachable(self) -> str | None:
        """Why the storage cannot be used from here (None when it can): an object store's
        bucket missing or out of reach, a local path that is a file. Changes nothing."""
        try:
            if not self.remote:
                path = Path(self.location)
                return f"{path} is not a folder" if path.exists() and not path.is_dir() \
                    else None
            bucket = self.fs_path.split("/", 1)[0]
            import pyarrow.fs

            if self.filesystem.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
                return f"its bucket {bucket!r} does not exist (create it first)"
            return None
        except Exception as e:  # noqa: BLE001 - told to the user in one line
            return f"{type(e).__name__}: {e}".splitlines()[0]
