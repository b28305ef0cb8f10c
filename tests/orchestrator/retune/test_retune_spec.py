"""The re-tune file (orchestrator/retune/spec.py): its documented defaults, where it finds
the sweep file, its own ``data:`` section, frozen sections, and the errors of bad files.

The sweep file is the shipped ``sweeps/digits.yaml`` (coarse to fine, 3 rounds of 8
trials: a cold budget of 24) copied beside the re-tune file.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from models.data import DataSpec
from orchestrator.retune.spec import (
    TRIGGERS,
    Decay,
    Drift,
    RetuneSpec,
    Search,
    load_retune,
    parse_retune,
)
from orchestrator.sweep.spec import load_sweep
from searchspaces import SpecError

DIGITS_SWEEP = REPO / "sweeps" / "digits.yaml"
MINIMAL = {"model": "digits-classifier", "sweep": "digits.yaml"}


def copy_sweep(folder: Path, filename: str = "digits.yaml", **changes) -> Path:
    """sweeps/digits.yaml copied into ``folder`` (top-level keys replaced by ``changes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    if changes:
        raw = yaml.safe_load(DIGITS_SWEEP.read_text())
        raw.update(changes)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
    else:
        shutil.copy(DIGITS_SWEEP, path)
    return path


def write_retune(folder: Path, raw: dict, name: str = "retune.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def minimal(tmp_path) -> RetuneSpec:
    copy_sweep(tmp_path)
    return load_retune(write_retune(tmp_path, MINIMAL))


# --- defaults ----------------------------------------------------------------------------


def test_the_copied_digits_sweep_has_a_cold_budget_of_24_trials(tmp_path):
    sweep = load_sweep(copy_sweep(tmp_path))
    assert sweep.budget == 3 * 8  # coarse_to_fine: rounds x trials_per_round


def test_a_minimal_file_gets_the_documented_defaults(minimal, tmp_path):
    spec = minimal
    assert spec.model == "digits-classifier"
    assert spec.source == str(tmp_path / "retune.yaml")
    assert spec.triggers == ("age", "drift", "hardware", "decay") == TRIGGERS
    assert spec.max_age_days == 90
    assert spec.drift == Drift(psi=0.25, share=0.25, classes=0.1)
    assert spec.decay == Decay(min_metric=None, max_drop=0.05)
    assert spec.seeds == 3
    assert spec.margin == 0.005
    assert spec.cooldown_days == 7
    assert spec.lease_seconds == 600
    assert spec.experiment == "digits-classifier-retune"
    assert spec.tracking.uri is None and spec.tracking.experiment is None


def test_the_default_search_is_two_rounds_of_a_quarter_of_the_cold_budget(minimal):
    s = minimal.search
    assert minimal.sweep.budget == 24
    assert (s.rounds, s.trials_per_round, s.width) == (2, 24 // 4, 0.2)
    assert (s.keep, s.margin) == (0.25, 0.05)  # the warm search's own, not the sweep's 0.1
    assert s.budget == 12  # half the cold search's budget, as docs/retune.md says
    assert s == Search(rounds=2, trials_per_round=6, width=0.2)


@pytest.mark.parametrize("trials, quarter", [(40, 10), (10, 2), (3, 1)],
                         ids=["forty", "ten-rounds-down", "at-least-one"])
def test_the_default_trials_per_round_follow_the_sweeps_own_budget(tmp_path, trials, quarter):
    copy_sweep(tmp_path, strategy={"kind": "random", "trials": trials}, scheduler={"kind": "fifo"})
    spec = load_retune(write_retune(tmp_path, MINIMAL))
    assert spec.sweep.budget == trials
    assert spec.search.trials_per_round == quarter


def test_given_values_replace_the_defaults(tmp_path):
    copy_sweep(tmp_path)
    spec = load_retune(write_retune(tmp_path, {
        **MINIMAL, "triggers": ["drift", "decay"], "max_age_days": 30,
        "drift": {"psi": 0.5}, "decay": {"min_metric": 0.9},
        "search": {"rounds": 1, "trials_per_round": 3, "width": 0.1},
        "seeds": 5, "margin": 0.02, "cooldown_days": 0,
        "tracking": {"experiment": "nightly", "uri": "http://mlflow:5000"},
        "lock": {"lease_seconds": 60}}))
    assert spec.triggers == ("drift", "decay")
    assert spec.max_age_days == 30
    assert spec.drift == Drift(psi=0.5, share=0.25, classes=0.1)
    assert spec.decay == Decay(min_metric=0.9, max_drop=0.05)
    assert (spec.search.rounds, spec.search.trials_per_round, spec.search.width) == (1, 3, 0.1)
    assert spec.search.budget == 3
    assert (spec.seeds, spec.margin, spec.cooldown_days, spec.lease_seconds) == (5, 0.02, 0, 60)
    assert spec.experiment == "nightly" and spec.tracking.uri == "http://mlflow:5000"


def test_the_shipped_example_loads_with_the_values_the_readme_gives():
    spec = load_retune(REPO / "sweeps" / "digits-retune.yaml")
    assert spec.model == "digits-classifier"
    assert spec.sweep.source == str(REPO / "sweeps" / "digits.yaml")
    assert spec.search.budget == 12 and spec.sweep.budget == 24
    assert spec.data == DataSpec(source="digits")  # data: is commented out


# --- where the sweep file and the data are found -----------------------------------------


def test_the_sweep_file_beside_the_retune_file_wins_over_the_working_directory(
        tmp_path, monkeypatch):
    jobs, cwd = tmp_path / "jobs", tmp_path / "cwd"
    copy_sweep(jobs, name="beside")
    copy_sweep(cwd, name="in-cwd")
    monkeypatch.chdir(cwd)
    spec = load_retune(write_retune(jobs, MINIMAL))
    assert spec.sweep.name == "beside"
    assert spec.sweep.base_dir == str(jobs.resolve())


def test_the_sweep_file_is_found_in_the_working_directory_when_not_beside(
        tmp_path, monkeypatch):
    jobs, cwd = tmp_path / "jobs", tmp_path / "cwd"
    copy_sweep(cwd, name="in-cwd")
    monkeypatch.chdir(cwd)
    spec = load_retune(write_retune(jobs, MINIMAL))
    assert spec.sweep.name == "in-cwd"
    assert spec.sweep.base_dir == str(cwd.resolve())


def test_a_sweep_file_in_neither_place_is_refused_naming_both(tmp_path, monkeypatch):
    jobs, cwd = tmp_path / "jobs", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    path = write_retune(jobs, MINIMAL)
    with pytest.raises(SpecError, match=re.escape(
            f"{path}: key 'sweep': no such file 'digits.yaml' (looked in {jobs.resolve()} "
            "and in the working directory)")):
        load_retune(path)


def test_without_a_data_section_the_sweeps_data_and_folder_are_used(tmp_path):
    sweeps, jobs = tmp_path / "sweeps", tmp_path / "jobs"
    sweep = copy_sweep(sweeps)
    spec = load_retune(write_retune(jobs, {**MINIMAL, "sweep": str(sweep)}))
    assert spec.data == DataSpec(source="digits") == spec.sweep.data
    assert spec.data_base == str(sweeps.resolve())


def test_a_data_section_replaces_the_sweeps_data_and_is_looked_for_beside_the_retune_file(
        tmp_path):
    sweeps, jobs = tmp_path / "sweeps", tmp_path / "jobs"
    sweep = copy_sweep(sweeps)
    spec = load_retune(write_retune(jobs, {
        **MINIMAL, "sweep": str(sweep),
        "data": {"source": "npz", "path": "today.npz", "label": "y"}}))
    assert spec.data == DataSpec(source="npz", path="today.npz", label="y")
    assert spec.data_base == str(jobs.resolve())
    assert spec.sweep.data == DataSpec(source="digits")  # the sweep itself is unchanged


def test_parse_retune_takes_its_folder_from_base_dir(tmp_path):
    copy_sweep(tmp_path)
    spec = parse_retune({**MINIMAL, "data": {"source": "synthetic", "size": 300}},
                        "<inline>", tmp_path)
    assert spec.source == "<inline>"
    assert spec.data == DataSpec(source="synthetic", size=300)
    assert spec.data_base == str(tmp_path)


# --- frozen ------------------------------------------------------------------------------


@pytest.mark.parametrize("section, attribute", [
    ("", "seeds"), ("", "margin"), ("drift", "psi"), ("decay", "max_drop"),
    ("search", "rounds"), ("tracking", "experiment"),
])
def test_every_section_is_frozen(minimal, section, attribute):
    target = getattr(minimal, section) if section else minimal
    before = getattr(target, attribute)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(target, attribute, 99)
    assert getattr(target, attribute) == before


# --- bad files ---------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"trigers": ["age"]},
     "key 'trigers': unknown key (did you mean 'triggers'?); allowed keys are model, sweep"),
    ({"model": None}, "key 'model': must name a registered model, got None"),
    ({"model": ""}, "key 'model': must name a registered model, got ''"),
    ({"triggers": []}, "key 'triggers': must be a list of age, drift, hardware, decay, got []"),
    ({"triggers": "age"}, "key 'triggers': must be a list of age, drift, hardware, decay"),
    ({"triggers": ["age", "drfit"]},
     "key 'triggers.drfit': unknown key (did you mean 'drift'?); allowed keys are age, drift"),
    ({"drift": {"share": 2}}, "key 'drift.share': must be a number in [0, 1], got 2"),
    ({"drift": {"psi": 0}}, "key 'drift.psi': must be a number in (0, inf], got 0"),
    ({"decay": {"min_metric": 2}}, "key 'decay.min_metric': must be a number in [0, 1], got 2"),
    ({"search": {"rounds": 0}}, "key 'search.rounds': must be a whole number >= 1, got 0"),
    ({"search": {"trails_per_round": 3}},
     "key 'search.trails_per_round': unknown key (did you mean 'trials_per_round'?)"),
    ({"seeds": 0}, "key 'seeds': must be a whole number >= 1, got 0"),
    ({"margin": -1}, "key 'margin': must be a number >= 0 (how much better, in the sweep's "
                     "metric val_loss, the challenger must be), got -1"),
    ({"lock": {"lease_seconds": 1}},
     "key 'lock.lease_seconds': must be a number in [10, inf], got 1"),
    ({"cooldown_days": -1}, "key 'cooldown_days': must be a number in [0, inf], got -1"),
    ({"tracking": {"enabled": False}},
     "key 'tracking.enabled': unknown key; allowed keys are uri, experiment"),
], ids=["unknown-top-key", "model-missing", "model-empty", "triggers-empty",
        "triggers-not-a-list", "trigger-unknown", "drift-share-2", "drift-psi-0",
        "decay-min-metric-2", "search-rounds-0", "search-unknown-key", "seeds-0", "margin-minus-1",
        "lease-1", "cooldown-minus-1", "tracking-enabled"])
def test_a_bad_file_is_refused_naming_the_file_and_the_key(tmp_path, change, message):
    copy_sweep(tmp_path)
    raw = {**MINIMAL, **change}
    if raw["model"] is None:
        del raw["model"]
    path = write_retune(tmp_path, raw)
    with pytest.raises(SpecError, match=re.escape(f"{path}: {message}")) as caught:
        load_retune(path)
    assert caught.value.source == str(path)
