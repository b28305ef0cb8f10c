"""A babysat run's start (orchestrator/panda/start.py) before any worker: the name it
gets, and bad input refused before a lock is taken or anything is written (exit 2, one
paragraph naming the flag and the rule). No Ray, no worker; the starts themselves are
test_babysit.py's."""

from __future__ import annotations

import pytest
import yaml
from conftest import assert_one_paragraph_error, run_main, sweep_dict

from orchestrator.panda.start import free_name

NAME_RULE = "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"


def test_a_run_without_a_name_gets_its_sweeps_first_free_one():
    assert free_name("digits", set()) == "digits-1"
    assert free_name("digits", {"digits-1", "digits-3", "other-2"}) == "digits-2"
    assert free_name("digits", {"digits-1", "digits-2"}) == "digits-3"


@pytest.mark.parametrize("args, fragments", [
    (("SWEEP", "--name", "../x"), ("--name '../x'", NAME_RULE)),
    (("SWEEP", "--name", "x:y"), ("--name 'x:y'", NAME_RULE)),
    (("SWEEP", "--name", "a b"), ("--name 'a b'", NAME_RULE)),
    (("SWEEP", "--name", "x" * 64), (NAME_RULE,)),
    (("--resume", "../x"), ("--resume '../x'", NAME_RULE)),
    (("--resume", "x", "SWEEP"), ("--resume NAME takes no SWEEP.yaml",)),
    (("SWEEP", "--epochs", "0"), ("--epochs must be >= 1, got 0",)),
    (("SWEEP", "--keep", "0"), ("--keep must be >= 1, got 0",)),
    (("SWEEP", "--set", "lr"), ("--set 'lr': expected NAME=VALUE",)),
    (("SWEEP", "--set", "hidden_units=many"), ("--set 'hidden_units=many'",)),
    (("LONG",), ("the sweep's name", "too long", "pass --name")),
    (("NODATA",), ("no-such.csv",)),
])
def test_bad_input_is_refused_before_anything_is_taken_or_written(
        args, fragments, tmp_path, capsys, no_outside_services):
    files = {"SWEEP": sweep_dict(name="bs"), "LONG": sweep_dict(name="s" * 62),
             "NODATA": sweep_dict(name="bs", data={"source": "csv", "path": "no-such.csv",
                                                     "label": "y"})}
    for key, d in files.items():
        (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump(d))
    argv = [str(tmp_path / f"{a}.yaml") if a in files else a for a in args]
    workdir = tmp_path / "runs"
    code, _, err = run_main(capsys, "babysit", "start", *argv, "--workdir", workdir)
    assert code == 2, err
    assert_one_paragraph_error(err, *fragments)
    assert not workdir.exists(), "a store, a lock or a log was made for bad input"
