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
        "mean": [float(v) for v in data.mean],
        "std": [float(v) for v in data.std],
        "metrics": metrics or {},
    }
    (out / META).write_text(json.dumps(meta, indent=1))
    x_raw = data.x_train.astype(np.float64) * data.std + data.mean
    (out / FINGERPRINT).write_text(json.dumps(
        fingerprint(x_raw, data.y_train, list(data.classes), list(data.feature_names))))
    return out


def load_model(model_dir: str | Path) -> tuple[MLP, dict]:
    """(the net in eval mode, its model.json) from a folder ``export_model`` wrote."""
    d = Path(model_dir)
    meta = json.loads((d / META).read_text())
    net = MLP(meta["n_features"], meta["n_classes"], MLPConfig(**meta["model_config"]))
    net.load_state_dict(torch.load(d / WEIGHTS, map_location="cpu", weights_only=True))
    net.eval()
    return net, meta


def predict(net: MLP, meta: dict, x: np.ndarray) -> tuple[list, np.ndarray]:
    """(predicted class labels, probabilities (rows, classes)) for raw, unstandardised rows."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != meta["n_features"]:
        raise ValueError(f"the model takes rows of {meta['n_features']} features "
                         f"({', '.join(meta['feature_names'][:5])}...), got shape {x.shape}")
    z = (x - np.asarray(meta["mean"])) / np.asarray(meta["std"])
    probs = net.predict_proba(torch.as_tensor(z, dtype=torch.float32)).numpy()
    return [meta["classes"][i] for i in probs.argmax(axis=1)], probs


def read_rows(path: str | Path, feature_names: list) -> np.ndarray:
    """Raw feature rows from a csv, parquet or npz file, in the model's feature order
    (a label column is ignored). Columns none of whose names the model knows are taken
    in training order when their count is the model's; a file naming some features must
    name them all (a label column never stands in for a missing one)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    if p.suffix == ".npz":
        arrays = read_npz(p)
        if "X" not in arrays:
            raise DataError(f"{path}: no array 'X' (the feature rows)")
        return arrays["X"]
    frame = read_frame(p, "parquet" if p.suffix in (".parquet", ".pq") else "csv")
    missing = [c for c in feature_names if c not in frame.columns]
    if len(missing) == len(feature_names) and frame.shape[1] == len(feature_names):
        return frame.to_numpy(dtype=float)  # no name the model knows: training order
    if missing:
        raise DataError(f"{path}: missing feature column(s) {', '.join(missing[:5])}; the "
                        f"model was trained on {', '.join(feature_names[:8])}...")
    return frame[feature_names].to_numpy(dtype=float)
