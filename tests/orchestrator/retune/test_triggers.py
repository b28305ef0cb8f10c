"""Is production stale (orchestrator/retune/triggers.py): age, drift, hardware and decay
measured against what a version recorded, the cooldown, ``parse_time`` and the deployed
weights' scores.

A real model folder (``models.serving.export_model`` of a tiny ``models.train.fit`` on
synthetic data) stands for the downloaded version; its MLflow ModelVersion is plain data
(``types.SimpleNamespace`` with ``version``, ``tags`` and ``creation_timestamp``).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from models.config import HParams, MLPConfig
from models.data import DataSpec, load, prepare
from models.fingerprint import raw_rows
from models.serving import FINGERPRINT, META, export_model, load_model, predict
from models.train import fit, holdout_scores
from orchestrator.retune.spec import RetuneSpec, parse_retune
from orchestrator.retune.triggers import (
    Production,
    age,
    check,
    cooldown,
    decay,
    deployed_scores,
    drift,
    hardware,
    parse_time,
)

DATA = DataSpec(source="synthetic", size=300, n_features=6, classes=3)
UTC = timezone.utc
NOW = datetime(2024, 5, 1, tzinfo=UTC)
H100 = {"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The data a tiny net was trained on, the net, and its exported model folder."""
    tmp = tmp_path_factory.mktemp("triggers")
    data = load(DATA)
    last = {}
    result = fit(data, MLPConfig(hidden_units=16, layers=1), HParams(lr=0.05), epochs=3,
                 seed=0, num_threads=1, callback=lambda metrics, run: last.update(run=run))
    model_dir = export_model(last["run"].state_dict(), data, tmp / "model")
    sweep = {"name": "tiny", "data": DATA.to_dict(),
             "space": {"lr": {"scale": "log", "low": 1e-3, "high": 0.3}},
             "strategy": {"kind": "random", "trials": 4}, "epochs": 2, "seed": 0}
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return {"tmp": tmp, "data": data, "net": result.model, "dir": model_dir}


def retune_spec(trained, **extra) -> RetuneSpec:
    """A real re-tune mapping over the tiny sweep, checked by parse_retune."""
    return parse_retune({"model": "tiny-model", "sweep": "sweep.yaml", **extra},
                        str(trained["tmp"] / "retune.yaml"), trained["tmp"])


def production(trained, tags: dict | None = None, created: datetime = NOW,
               with_fingerprint: bool = True) -> Production:
    """The exported folder as production version 1 with ``tags``."""
    d: Path = trained["dir"]
    version = SimpleNamespace(version="1", tags=dict(tags or {}),
                              creation_timestamp=int(created.timestamp() * 1000))
    fp = json.loads((d / FINGERPRINT).read_text()) if with_fingerprint else None
    return Production(version, d, json.loads((d / META).read_text()), fp)


def today(trained, transform=None, extra_class_rows: int = 0):
    """Today's data: the training data's raw rows, ``transform``ed, re-split and
    re-standardised as models.data.load would; ``extra_class_rows`` copies of rows
    labelled with a class (3) the model never saw."""
    data = trained["data"]
    x, y = raw_rows(data)
    labels = np.asarray(data.classes)[y]
    if transform is not None:
        x = transform(x.copy())
    if extra_class_rows:
        x = np.concatenate([x, x[:extra_class_rows]])
        labels = np.concatenate([labels, np.full(extra_class_rows, 3)])
    return prepare(x, labels, data.feature_names, seed=1)


# --- parse_time ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01T12:00:00+00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
], ids=["naive-is-utc", "utc", "zoned", "date-only"])
def test_parse_time_reads_naive_times_as_utc_and_keeps_zones(text, expected):
    t = parse_time(text)
    assert t == expected
    assert t.tzinfo is not None


def test_parse_time_keeps_the_offset_it_was_given():
    assert parse_time("2024-05-01T12:00:00+02:00").utcoffset() == timedelta(hours=2)


@pytest.mark.parametrize("text", [None, "", "yesterday", "2024-13-01T00:00:00", "12:00 today"])
def test_parse_time_returns_none_for_nothing_or_junk(text):
    assert parse_time(text) is None


# --- age -----------------------------------------------------------------------------------


def test_a_version_tuned_longer_ago_than_max_age_days_is_stale(trained):
    prod = production(trained, {"caviar.tuned_at": "2024-01-01T00:00:00+00:00"})
    out = age(retune_spec(trained), prod, NOW)
    assert out == {"stale": True, "days": 121.0, "max_age_days": 90.0,
                   "since": "2024-01-01T00:00:00+00:00"}


def test_a_version_tuned_within_max_age_days_is_not_stale(trained):
    prod = production(trained, {"caviar.tuned_at": "2024-03-01T12:00:00+00:00"})
    out = age(retune_spec(trained), prod, NOW)
    assert out["stale"] is False and out["days"] == 60.5


def test_exactly_max_age_days_is_not_yet_stale(trained):
    prod = production(trained, {"caviar.tuned_at": "2024-04-01T00:00:00+00:00"})
    out = age(retune_spec(trained, max_age_days=30), prod, NOW)
    assert out["days"] == 30.0 and out["stale"] is False
    assert age(retune_spec(trained, max_age_days=29.5), prod, NOW)["stale"] is True


def test_age_counts_from_a_later_check_that_kept_the_version(trained):
    prod = production(trained, {"caviar.tuned_at": "2024-01-01T00:00:00+00:00",
                                "caviar.checked_at": "2024-04-21T00:00:00+00:00"})
    out = age(retune_spec(trained), prod, NOW)
    assert out["stale"] is False and out["days"] == 10.0
    assert out["since"] == "2024-04-21T00:00:00+00:00"


def test_age_ignores_a_check_older_than_the_tuning(trained):
    prod = production(trained, {"caviar.tuned_at": "2024-01-01T00:00:00+00:00",
                                "caviar.checked_at": "2023-06-01T00:00:00+00:00"})
    out = age(retune_spec(trained), prod, NOW)
    assert out["since"] == "2024-01-01T00:00:00+00:00" and out["days"] == 121.0


def test_age_falls_back_to_the_versions_creation_time(trained):
    prod = production(trained, {}, created=datetime(2024, 1, 31, tzinfo=UTC))
    out = age(retune_spec(trained), prod, NOW)
    assert out["days"] == 91.0 and out["stale"] is True
    assert out["since"] == "2024-01-31T00:00:00+00:00"


def test_an_unreadable_tuned_at_also_falls_back_to_the_creation_time(trained):
    prod = production(trained, {"caviar.tuned_at": "not a time"},
                      created=datetime(2024, 4, 1, tzinfo=UTC))
    out = age(retune_spec(trained), prod, NOW)
    assert out["days"] == 30.0 and out["stale"] is False


def test_a_naive_tuned_at_is_read_as_utc(trained):
    prod = production(trained, {"caviar.tuned_at": "2024-04-30T12:00:00"})
    assert age(retune_spec(trained), prod, NOW)["days"] == 0.5


# --- drift ---------------------------------------------------------------------------------


def test_the_same_data_has_not_drifted(trained):
    out = drift(retune_spec(trained), production(trained), trained["data"])
    assert out["stale"] is False
    assert out["share"] == 0.0 and out["features_over"] == []
    assert out["max_psi"] < 0.25 and out["class_distance"] < 0.1
    assert out["new_classes"] == []
    assert (out["psi_threshold"], out["share_threshold"]) == (0.25, 0.25)


def test_the_same_rows_split_another_way_have_not_drifted(trained):
    out = drift(retune_spec(trained), production(trained), today(trained))
    assert out["stale"] is False and out["features_over"] == []


def shift_first_three(x):
    x[:, :3] = x[:, :3] * 3.0 + 2.5
    return x


def test_shifted_and_rescaled_features_have_drifted_and_are_listed(trained):
    out = drift(retune_spec(trained), production(trained), today(trained, shift_first_three))
    assert out["stale"] is True
    assert out["features_over"] == ["x0", "x1", "x2"]
    assert out["share"] == 0.5  # 3 of 6 features, above the share threshold 0.25
    assert out["max_psi"] > 0.25
    assert out["class_distance"] < 0.1  # the labels did not move


def test_drift_under_the_share_threshold_is_not_stale(trained):
    out = drift(retune_spec(trained, drift={"share": 0.5}), production(trained),
                today(trained, shift_first_three))
    assert out["features_over"] == ["x0", "x1", "x2"] and out["share"] == 0.5
    assert out["stale"] is False  # 0.5 is not more than 0.5


def test_a_new_class_is_drift(trained):
    out = drift(retune_spec(trained), production(trained), today(trained, extra_class_rows=9))
    assert out["new_classes"] == ["3"]
    assert out["stale"] is True and out["features_over"] == []


def test_a_version_without_a_fingerprint_is_not_stale_and_says_so(trained):
    prod = production(trained, with_fingerprint=False)
    out = drift(retune_spec(trained), prod, today(trained, shift_first_three))
    assert out == {"stale": False, "note": "the version has no fingerprint.json"}


# --- hardware ------------------------------------------------------------------------------


def hw_tags(hw: dict) -> dict:
    return {f"hw.{k}": str(v) for k, v in hw.items()}


def test_the_same_gpu_is_not_stale(trained):
    prod = production(trained, hw_tags(H100))
    out = hardware(retune_spec(trained), prod, dict(H100), None)
    assert out["stale"] is False
    assert out["then"] == {"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": "1"}
    assert out["now"] == out["then"]


def test_no_gpu_then_and_now_is_not_stale(trained):
    prod = production(trained, hw_tags({"gpu_model": "", "gpu_count": 0}))
    out = hardware(retune_spec(trained), prod, {"gpu_model": "", "gpu_count": 0}, None)
    assert out["stale"] is False and out["now"] == {"gpu_model": "", "gpu_count": "0"}


@pytest.mark.parametrize("now", [
    {"gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_count": 1},
    {"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 8},
    {"gpu_model": "", "gpu_count": 0},
], ids=["other-model", "other-count", "no-gpu-now"])
def test_other_gpus_are_stale(trained, now):
    prod = production(trained, hw_tags(H100))
    out = hardware(retune_spec(trained), prod, now, None)
    assert out["stale"] is True
    assert out["now"] == {"gpu_model": now["gpu_model"], "gpu_count": str(now["gpu_count"])}
    assert out["then"] == {"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": "1"}


def test_a_version_that_records_no_hardware_is_not_stale(trained):
    out = hardware(retune_spec(trained), production(trained, {}), dict(H100), None)
    assert out == {"stale": False, "note": "the version records no hardware"}


# --- decay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tags, accuracy, stale", [
    ({"metric.test_accuracy": "0.9"}, 0.80, True),   # fell 0.10 > 0.05
    ({"metric.test_accuracy": "0.9"}, 0.87, False),  # fell 0.03
    ({"metric.test_accuracy": "0.9"}, 0.95, False),  # better than recorded
    ({"metric.val_accuracy": "0.9"}, 0.80, True),    # val_accuracy when no test_accuracy
    ({"metric.test_accuracy": "0.9", "metric.val_accuracy": "0.5"}, 0.80, True),
    ({}, 0.10, False),                               # nothing recorded, no min_metric
], ids=["dropped", "small-drop", "improved", "val-fallback", "test-first", "no-record"])
def test_decay_is_a_drop_of_more_than_max_drop_from_the_recorded_accuracy(
        trained, tags, accuracy, stale):
    out = decay(retune_spec(trained), production(trained, tags),
                {"accuracy": accuracy, "loss": 0.5})
    assert out["stale"] is stale
    assert out["accuracy"] == accuracy
    assert out["recorded"] == (0.9 if tags else None)
    assert (out["min_metric"], out["max_drop"]) == (None, 0.05)


@pytest.mark.parametrize("accuracy, stale", [(0.84, True), (0.86, False)])
def test_decay_below_min_metric_is_stale_without_a_record(trained, accuracy, stale):
    spec = retune_spec(trained, decay={"min_metric": 0.85})
    out = decay(spec, production(trained, {}), {"accuracy": accuracy, "loss": 0.5})
    assert out["stale"] is stale and out["min_metric"] == 0.85 and out["recorded"] is None


# --- deployed_scores -------------------------------------------------------------------------


def test_the_deployed_scores_are_the_trained_nets_holdout_scores(trained):
    loss, accuracy = holdout_scores(trained["net"], trained["data"])
    scores = deployed_scores(production(trained), trained["data"])
    assert scores["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert scores["loss"] == pytest.approx(loss, rel=1e-4)


def test_a_class_the_model_never_saw_counts_as_wrong_and_is_left_out_of_the_loss(trained):
    data = today(trained, extra_class_rows=30)
    assert data.classes == [0, 1, 2, 3]
    new_in_test = int(np.sum(data.y_test == 3))
    assert new_in_test > 0
    net, meta = load_model(trained["dir"])
    x_raw = data.x_test.astype(np.float64) * data.std + data.mean
    labels, probs = predict(net, meta, x_raw)
    truth = [data.classes[i] for i in data.y_test]
    known = data.y_test != 3
    right = sum(p == t for p, t, k in zip(labels, truth, known) if k)
    loss = -np.mean(np.log(probs[known, data.y_test[known]]))

    scores = deployed_scores(production(trained), data)
    assert scores["accuracy"] == pytest.approx(right / len(data.y_test))
    assert scores["accuracy"] < right / int(known.sum())  # the new class's rows all count wrong
    assert scores["loss"] == pytest.approx(loss, rel=1e-6) and math.isfinite(scores["loss"])


# --- check ---------------------------------------------------------------------------------


def fresh_tags(trained, accuracy: float) -> dict:
    return {"caviar.tuned_at": (NOW - timedelta(days=1)).isoformat(),
            "metric.test_accuracy": str(accuracy), **hw_tags(H100)}


def test_a_fresh_version_on_its_own_data_is_not_stale_on_any_trigger(trained):
    deployed = deployed_scores(production(trained), trained["data"])
    prod = production(trained, fresh_tags(trained, deployed["accuracy"]))
    out = check(retune_spec(trained), prod, trained["data"], now=NOW, hw=dict(H100))
    assert out["stale"] is False and out["reasons"] == []
    assert list(out["triggers"]) == ["age", "drift", "hardware", "decay"]
    assert not any(t["stale"] for t in out["triggers"].values())
    assert out["deployed"] == deployed


def test_check_lists_every_stale_trigger_as_a_reason(trained):
    deployed = deployed_scores(production(trained), trained["data"])
    tags = {**fresh_tags(trained, deployed["accuracy"] + 0.2),
            "caviar.tuned_at": "2023-01-01T00:00:00+00:00"}
    out = check(retune_spec(trained), production(trained, tags),
                today(trained, shift_first_three), now=NOW,
                hw={"gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_count": 8})
    assert out["stale"] is True
    assert out["reasons"] == ["age", "drift", "hardware", "decay"]


def test_check_reports_only_the_enabled_triggers(trained):
    deployed = deployed_scores(production(trained), trained["data"])
    tags = {**fresh_tags(trained, deployed["accuracy"] + 0.2),
            "caviar.tuned_at": "2023-01-01T00:00:00+00:00"}  # age and decay would fire
    spec = retune_spec(trained, triggers=["drift", "decay"])
    out = check(spec, production(trained, tags), trained["data"], now=NOW,
                hw={"gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_count": 8})
    assert list(out["triggers"]) == ["drift", "decay"]
    assert out["reasons"] == ["decay"] and out["stale"] is True
    assert out["triggers"]["decay"]["recorded"] == pytest.approx(deployed["accuracy"] + 0.2)
    assert out["deployed"] == deployed  # measured whether decay is enabled or not


def test_check_with_only_age_enabled_is_not_stale_when_the_version_is_young(trained):
    spec = retune_spec(trained, triggers=["age"])
    out = check(spec, production(trained, {"caviar.tuned_at": "2024-04-30T00:00:00+00:00"}),
                today(trained, shift_first_three), now=NOW)
    assert list(out["triggers"]) == ["age"]
    assert out["stale"] is False and out["reasons"] == []  # the drift is not looked at


# --- cooldown ------------------------------------------------------------------------------


def test_a_recent_check_holds_off_the_next_retune_for_cooldown_days(trained):
    prod = production(trained, {"caviar.checked_at": "2024-04-28T00:00:00+00:00"})
    out = cooldown(retune_spec(trained), prod, NOW)
    assert out == {"checked_at": "2024-04-28T00:00:00+00:00",
                   "until": "2024-05-05T00:00:00+00:00"}


def test_a_naive_checked_at_is_read_as_utc_in_the_cooldown(trained):
    prod = production(trained, {"caviar.checked_at": "2024-04-30T06:30:00"})
    out = cooldown(retune_spec(trained, cooldown_days=2), prod, NOW)
    assert out == {"checked_at": "2024-04-30T06:30:00+00:00",
                   "until": "2024-05-02T06:30:00+00:00"}


@pytest.mark.parametrize("tags, days", [
    ({"caviar.checked_at": "2024-04-24T00:00:00+00:00"}, 7),  # ends exactly now
    ({"caviar.checked_at": "2024-04-01T00:00:00+00:00"}, 7),  # long over
    ({"caviar.checked_at": "2024-04-30T00:00:00+00:00"}, 0),  # no cooldown at all
    ({"caviar.tuned_at": "2024-04-30T00:00:00+00:00"}, 7),    # never checked
    ({"caviar.checked_at": "garbage"}, 7),                    # unreadable
], ids=["just-ended", "over", "cooldown-0", "never-checked", "unreadable"])
def test_no_cooldown_after_it_ends_or_without_a_check(trained, tags, days):
    assert cooldown(retune_spec(trained, cooldown_days=days), production(trained, tags),
                    NOW) is None


# --- the version's record ------------------------------------------------------------------


def test_production_config_is_its_net_and_trainer_settings(trained):
    prod = production(trained, {"hw.gpu_count": "0"})
    assert prod.config["hidden_units"] == 16 and prod.config["layers"] == 1
    assert prod.config["lr"] == 0.05 and prod.config["optimizer"] == "momentum"
    assert prod.tags == {"hw.gpu_count": "0"}
    prod.version.tags = None  # a version with no tags at all
    assert prod.tags == {}
