"""Data: the built-in sets and user files, split and standardised.

Sources: ``digits`` (scikit-learn's bundled 8x8 handwritten digits, 10 classes,
no download), ``synthetic`` (``make_classification``), and user files ``csv``,
``parquet`` and ``npz`` with the label column (or array) named by ``label``.

The split is stratified and seeded; inputs are standardised with the
*training* split's mean and std, which are kept (``Dataset.mean``/``std``) so
serving applies the same transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from searchspaces.errors import CaviarError

SOURCES = ("digits", "synthetic", "csv", "parquet", "npz")
FILE_SOURCES = ("csv", "parquet", "npz")
MAX_SYNTHETIC_CELLS = 250_000_000  # rows x features: 2 GB of float64 while it is made


class DataError(CaviarError, ValueError):
    """Bad data or a bad data spec: the message says which file or key, and the rule
    (exit 2)."""


@dataclass(frozen=True)
class DataSpec:
    """The ``data:`` section of a sweep file."""

    source: str = "digits"
    path: str | None = None
    label: str | None = None  # csv/parquet: the label column; npz: the label array
    features: str = "X"  # npz only: the feature array
    size: int = 2000  # synthetic only
    n_features: int = 20  # synthetic only
    classes: int = 3  # synthetic only
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0  # the split's (and synthetic data's) seed

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "data") -> DataSpec:
        """Checks a ``data:`` mapping; unknown keys and bad values are DataErrors."""
        d = dict(d or {})
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise DataError(f"{where}: unknown key {key!r}; allowed keys are "
                                + ", ".join(names))
        for key in ("path", "label", "features"):
            if key in d and d[key] is not None and not isinstance(d[key], str):
                raise DataError(f"{where}: key {key!r}: must be a string, got {d[key]!r}")
        spec = cls(**d)
        if spec.source not in SOURCES:
            raise DataError(f"{where}: key 'source': must be one of {', '.join(SOURCES)}, "
                            f"got {spec.source!r}")
        if spec.source in FILE_SOURCES and not spec.path:
            raise DataError(f"{where}: source {spec.source!r} needs 'path' (the file to read)")
        if spec.source in ("csv", "parquet") and not spec.label:
            raise DataError(f"{where}: source {spec.source!r} needs 'label' "
                            "(the name of the label column)")
        for key in ("size", "n_features", "classes", "seed"):
            v = getattr(spec, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DataError(f"{where}: key {key!r}: must be a whole number >= 0, got {v!r}")
        cells = spec.size * spec.n_features
        if spec.source == "synthetic" and cells > MAX_SYNTHETIC_CELLS:
            raise DataError(f"{where}: synthetic data of {spec.size:,} rows x "
                            f"{spec.n_features:,} features takes about {cells * 8 / 1e9:.1f} "
                            f"GB as it is made; at most {MAX_SYNTHETIC_CELLS:,} values "
                            f"({MAX_SYNTHETIC_CELLS * 8 / 1e9:.0f} GB)")
        for key in ("val_fraction", "test_fraction"):
            v = getattr(spec, key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 0.5:
                raise DataError(f"{where}: key {key!r}: must be a fraction in (0, 0.5), got {v!r}")
        return spec

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Dataset:
    """Standardised splits; arrays are float32 features (n, d) and int64 labels (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray  # (d,) training split's, for serving
    std: np.ndarray  # (d,)
    classes: list = field(default_factory=list)  # original label of class index i
    feature_names: list = field(default_factory=list)
    label: str = "label"  # the label column's (or array's) name in the source

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def load(spec: DataSpec, base_dir: str | Path | None = None) -> Dataset:
    """Reads, checks, splits and standardises the data a spec names.

    Args:
        spec: the data spec.
        base_dir: where a relative ``path`` is also looked for (the folder of the
            file that named it), after the working directory.
    """
    if spec.source not in SOURCES:
        raise DataError(f"data: key 'source': must be one of {', '.join(SOURCES)}, "
                        f"got {spec.source!r}")
    x, y, names = _read(spec, base_dir)
    try:
        data = prepare(x, y, names, spec.val_fraction, spec.test_fraction, spec.seed)
        data.label = spec.label or "label"
        return data
    except DataError as e:
        if spec.source not in FILE_SOURCES:
            raise
        raise DataError(f"{resolve_path(spec.path, base_dir)}: {e}") from None  # which file


def resolve_path(path: str, base_dir: str | Path | None) -> Path:
    """A relative path is tried from the working directory, then from ``base_dir``."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or base_dir is None:
        return p
    alt = Path(base_dir) / p
    return alt if alt.exists() else p


def _read(spec: DataSpec, base_dir) -> tuple[np.ndarray, np.ndarray, list]:
    if spec.source == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target, [f"pixel_{i}" for i in range(bunch.data.shape[1])]
    if spec.source == "synthetic":
        return _synthetic(spec)
    path = resolve_path(spec.path, base_dir).resolve()
    if not path.exists():
        tried = f" (also looked in {base_dir})" if base_dir and not Path(spec.path).is_absolute() \
            else ""
        raise DataError(f"{spec.path}: no such file{tried}")
    if not path.is_file():  # a folder, a FIFO or a device: nothing to read a table from
        raise DataError(f"{spec.path}: {path} is not a regular file")
    if spec.source == "npz":
        return _read_npz(path, spec)
    return _read_table(path, spec)


def _synthetic(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, list]:
    from sklearn.datasets import make_classification

    if spec.classes < 2:
        raise DataError(f"data: key 'classes': synthetic data needs at least 2, got {spec.classes}")
    if spec.n_features < 2:
        raise DataError(f"data: key 'n_features': needs at least 2, got {spec.n_features}")
    if spec.size < 3 * spec.classes:
        raise DataError(f"data: key 'size': {spec.classes} classes need at least "
                        f"{3 * spec.classes} rows (3 per class, to split), got {spec.size}")
    informative = min(spec.n_features, max(2, math.ceil(math.log2(spec.classes)) + 1))
    if spec.classes > 2 ** informative:
        raise DataError(f"data: key 'classes': {spec.classes} classes need at least "
                        f"{math.ceil(math.log2(spec.classes))} features, got "
                        f"n_features={spec.n_features}")
    x, y = make_classification(
        n_samples=spec.size, n_features=spec.n_features, n_informative=informative,
        n_redundant=0, n_classes=spec.classes, n_clusters_per_class=1, random_state=spec.seed,
    )
    return x, y, [f"x{i}" for i in range(spec.n_features)]


def read_npz(path: Path) -> dict:
    """The arrays of an .npz file (never unpickling objects); unreadable is a DataError."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


def _read_npz(path: Path, spec: DataSpec) -> tuple[np.ndarray, np.ndarray, list]:
    label = spec.label or "y"
    arrays = read_npz(path)
    for key in (spec.features, label):
        if key not in arrays:
            raise DataError(f"{path}: no array {key!r}; the file has "
                            + (", ".join(sorted(arrays)) or "no arrays"))
    x, y = arrays[spec.features], arrays[label]
    if x.ndim != 2:
        raise DataError(f"{path}: array {spec.features!r} must be 2-D (rows, features), "
                        f"got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: array {label!r} must be 1-D with one label per row of "
                        f"{spec.features!r} ({len(x)}), got shape {y.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{path}: array {spec.features!r} must be numeric, got dtype {x.dtype}")
    return x, y, [f"x{i}" for i in range(x.shape[1])]


def read_frame(path: Path, source: str):
    """A csv or parquet file as a DataFrame; an empty or unreadable file is a DataError."""
    import pandas as pd

    try:
        return pd.read_csv(path) if source == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except Exception as e:  # parser errors differ by engine; all mean "unreadable"
        raise DataError(f"{path}: cannot be read as {source} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _read_table(path: Path, spec: DataSpec) -> tuple[np.ndarray, np.ndarray, list]:
    import pandas as pd

    frame = read_frame(path, spec.source)
    if spec.label not in frame.columns:
        raise DataError(f"{path}: no label column {spec.label!r}; the columns are "
                        + _some(frame.columns) + " (a file without a header row has its "
                        "first row taken as the column names)")
    if len(frame) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    y = frame[spec.label].to_numpy()
    features = frame.drop(columns=[spec.label])
    if features.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the label {spec.label!r}")
    for col in features.columns:
        if not pd.api.types.is_numeric_dtype(features[col]) or \
                pd.api.types.is_bool_dtype(features[col]):
            sample = features[col].dropna().astype(str).head(1).tolist()
            example = f" (e.g. {sample[0]!r})" if sample else ""
            raise DataError(f"{path}: column {col!r} is not numeric{example}; "
                            "encode it as numbers first")
    if pd.isna(y).any():
        raise DataError(f"{path}: label column {spec.label!r} has {int(pd.isna(y).sum())} "
                        "empty values")
    return features.to_numpy(dtype=np.float64), y, [str(c) for c in features.columns]


def prepare(
    x: np.ndarray, y: np.ndarray, names: list, val_fraction: float = 0.2,
    test_fraction: float = 0.2, seed: int = 0,
) -> Dataset:
    """Checks features and labels, splits them stratified by class, and standardises them."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0:
        raise DataError("the data has no rows")
    bad = ~np.isfinite(x)
    if bad.any():
        col = int(np.argmax(bad.any(axis=0)))
        raise DataError(f"feature {names[col]!r} has {int(bad[:, col].sum())} NaN or infinite "
                        f"values (first at row {int(np.argmax(bad[:, col]))}); "
                        "clean or impute them first")
    y = np.asarray(y)
    if len(y) != len(x):
        raise DataError(f"{len(y)} labels for {len(x)} rows: one label per row")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise DataError(f"the labels hold {int((~np.isfinite(y)).sum())} NaN or infinite "
                        "values; every row needs a class")
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError(f"the labels hold {len(classes)} class"
                        f"{'' if len(classes) == 1 else 'es'}; a classifier needs at least 2")
    counts = np.bincount(y_idx)
    if counts.min() < 3:
        small = classes[int(np.argmin(counts))]
        raise DataError(f"class {_plain(small)!r} has {int(counts.min())} row(s); each class "
                        "needs at least 3 (one each for the train, val and test splits)")
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(y_idx == c))
        n = len(idx)
        n_test = min(max(1, round(n * test_fraction)), n - 2)
        n_val = min(max(1, round(n * val_fraction)), n - n_test - 1)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    split = {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}
    mean = x[split["train"]].mean(axis=0)
    std = x[split["train"]].std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant feature stays 0 instead of NaN

    def standardise(ix):
        return ((x[ix] - mean) / std).astype(np.float32), y_idx[ix].astype(np.int64)

    x_tr, y_tr = standardise(split["train"])
    x_va, y_va = standardise(split["val"])
    x_te, y_te = standardise(split["test"])
    return Dataset(x_tr, y_tr, x_va, y_va, x_te, y_te, mean.astype(np.float32),
                   std.astype(np.float32), [_plain(c) for c in classes], list(names))


def _some(names, show: int = 8, width: int = 30) -> str:
    """A few column names, each cut short: a header row may be anything (a first row of
    data, one very long line), and an error quoting all of it is no longer readable."""
    names = [str(n) if len(str(n)) <= width else str(n)[:width] + "..." for n in names]
    more = f", and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(repr(n) for n in names[:show]) + more


def _plain(v):
    """A numpy scalar as a plain Python value (JSON-friendly)."""
    return v.item() if hasattr(v, "item") else v
