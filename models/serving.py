"""A trained model as files: weights plus JSON, loaded back without unpickling code.

``weights.pt`` holds the net's state dict (read with ``torch.load(weights_only=True)``);
``model.json`` holds the net's config, the training split's mean and std (inputs
are standardised with them before the net sees them), the class labels and the
feature names, and the metrics the model was chosen on. ``fingerprint.json`` is the
training split's fingerprint (models.fingerprint): what drift is measured against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.config import MLPConfig
from models.data import DataError, read_frame, read_npz
from models.fingerprint import fingerprint
from models.net import MLP

WEIGHTS, META, FINGERPRINT = "weights.pt", "model.json", "fingerprint.json"


def export_model(state: dict, data, out_dir: str | Path, metrics: dict | None = None) -> Path:
    """Writes a trainer checkpoint's net as a servable model folder.

    Args:
        state: a checkpoint (``TrainingRun.state_dict()`` / ``load_checkpoint``).
        data: the Dataset it was trained on (for mean, std, classes, feature names).
        out_dir: the folder to write.
        metrics: what the model was chosen on (kept in model.json).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state["model"], out / WEIGHTS)
    meta = {
        "format": 1,
        "model_config": state["model_config"],
        "hparams": state["hparams"],
        "n_features": state["shape"][0],
        "n_classes": state["shape"][1],
        "epoch": state["epoch"],
        "seed": state["seed"],
        "classes": list(data.classes),
        "feature_names": list(data.feature_names),
        "label": data.label,
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "metrics": metrics or {},
    }
    (out / META).write_text(json.dumps(meta, indent=1))
    x_raw = data.x_train.astype(np.float64) * data.std + data.mean
    (out / FINGERPRINT).write_text(json.dumps(
        fingerprint(x_raw, data.y_train, list(data.classes), list(data.feature_names))))
    return out


MAX_WIDTH = 1_000_000  # features or classes a model.json may declare


def load_model(model_dir: str | Path) -> tuple[MLP, dict]:
    """(the net in eval mode, its model.json) from a folder ``export_model`` wrote.

    model.json is checked before anything is allocated (a hidden_units of 1e9 would try to),
    and weights that are not plain tensors are refused: DataError, bad input."""
    d = Path(model_dir)
    meta = _read_meta(d)
    net = MLP(meta["n_features"], meta["n_classes"], MLPConfig(**meta["model_config"]))
    try:
        weights = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
        net.load_state_dict(weights)
    except Exception as e:  # noqa: BLE001 - pickled code, another shape, a cut file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"{d / WEIGHTS}: not the weights of this model.json's net, as plain "
                        f"tensors ({first}); export the model again with caviar") from None
    net.eval()
    return net, meta


def _read_meta(d: Path) -> dict:
    from models.config import split_config

    try:
        meta = json.loads((d / META).read_text())
        split_config(meta["model_config"])  # each value within the model's rules
        widths = [meta["n_features"], meta["n_classes"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{d / META}: not a caviar model description ({e})") from None
    if not all(isinstance(w, int) and 0 < w <= MAX_WIDTH for w in widths):
        raise DataError(f"{d / META}: n_features and n_classes must be whole numbers in "
                        f"[1, {MAX_WIDTH:,}], got {widths}")
    return meta


def predict(net: MLP, meta: dict, x: np.ndarray) -> tuple[list, np.ndarray]:
    """(predicted class labels, probabilities (rows, classes)) for raw, unstandardised rows."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != meta["n_features"]:
        raise ValueError(f"the model takes rows of {meta['n_features']} features "
                         f"({', '.join(meta['feature_names'][:5])}...), got shape {x.shape}")
    z = (x - np.asarray(meta["mean"])) / np.asarray(meta["std"])
    probs = net.predict_proba(torch.as_tensor(z, dtype=torch.float32)).numpy()
    return [meta["classes"][i] for i in probs.argmax(axis=1)], probs


def read_rows(path: str | Path, feature_names: list, label: str = "label") -> np.ndarray:
    """Raw feature rows from a csv, parquet or npz file, in the model's feature order.

    A csv or parquet file's columns are matched by the model's feature names: every
    feature must be there, and nothing else but the label column. Position is used only
    for an npz file's ``X`` array (it has no names), which must have one column per
    feature. A headerless csv has its first row taken as names, so it is refused too.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    if p.suffix == ".npz":
        arrays = read_npz(p)
        if "X" not in arrays:
            raise DataError(f"{path}: no array 'X' (the feature rows)")
        x = arrays["X"]
        if x.ndim != 2 or x.shape[1] != len(feature_names):
            raise DataError(f"{path}: the model takes rows of {len(feature_names)} features "
                            f"({_names(feature_names)}), got an array of shape {x.shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{path}: array 'X' must be numeric, got dtype {x.dtype}")
        return x.astype(np.float64)
    frame = read_frame(p, "parquet" if p.suffix in (".parquet", ".pq") else "csv")
    _check_columns(path, [str(c) for c in frame.columns], feature_names, label)
    import pandas as pd

    for name in feature_names:
        column = frame[name]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            raise DataError(f"{path}: column {name!r} is not numeric (e.g. "
                            f"{str(frame[name].iloc[0])[:40]!r})")
    return frame[feature_names].to_numpy(dtype=np.float64)


def _check_columns(path, columns: list, feature_names: list, label: str) -> None:
    missing = [c for c in feature_names if c not in columns]
    extra = [c for c in columns if c not in feature_names and c != label]
    if len(missing) == len(feature_names):
        raise DataError(f"{path}: no column is named after a feature the model knows (its "
                        f"columns: {_names(columns)}); it takes {_names(feature_names)}: give "
                        "the file a header row with those names")
    if missing:
        raise DataError(f"{path}: missing feature column(s) {_names(missing)}; the model was "
                        f"trained on {_names(feature_names)}")
    if extra:
        raise DataError(f"{path}: column(s) {_names(extra)} are not features of the model "
                        f"(nor its label {label!r}): drop them, or check the file's names")


def _names(names: list, show: int = 6) -> str:
    cut = [n if len(n) <= 30 else n[:30] + "..." for n in map(str, names[:show])]
    return ", ".join(cut) + (f", and {len(names) - show} more" if len(names) > show else "")


def bad_rows(x: np.ndarray, feature_names: list) -> dict[int, str]:
    """Rows holding NaN or infinite values: row number -> the first such feature."""
    bad = ~np.isfinite(x)
    return {int(i): feature_names[int(np.argmax(bad[i]))] for i in np.flatnonzero(bad.any(1))}
