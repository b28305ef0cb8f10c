"""The ``caviar`` entry point (orchestrator/cli/__init__.py) and what every command group
shares (orchestrator/cli/_common.py): the parser, the common options, and the mapping of
a handler's exceptions to exit codes (0, 1, 2, 3, 130).

The exceptions are raised by real commands on real inputs: a missing store, a held
lock, a corrupt model folder; Ctrl-C and CAVIAR_DEBUG=1 on a real ``caviar`` process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
from importlib.metadata import version

import pytest
from conftest import REPO, assert_one_paragraph_error, run_main, sweep_dict
from mlflow import MlflowClient

from orchestrator import DEFAULT_WORKDIR
from orchestrator.cli import build_parser, main
from orchestrator.cli._common import add_tracking_uri, json_safe, seed_or_draw
from orchestrator.tracking.registry import Lock
from orchestrator.tracking.store import ensure_sqlite_store

COMMANDS = ["validate", "sample", "train", "sweep", "sync", "ui", "predict", "submit", "retune",
            "promote", "rollback", "babysit", "plan", "rerun"]
TINY_DATA = {"source": "synthetic", "size": 300, "n_features": 6, "classes": 3}


pytestmark = pytest.mark.usefixtures("no_outside_services")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """An empty embedded MLflow store (no registered model) shared by the module."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    ensure_sqlite_store(uri)
    return uri


def write_yaml(path, mapping: dict):
    import yaml

    path.write_text(yaml.safe_dump(mapping))
    return path


def corrupt_store(tmp_path):
    """A workdir whose mlflow.db is not a database (a disk fault, not the user's input):
    any command that opens it fails, exit 1. Returns the workdir."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "mlflow.db").write_bytes(b"not a database " * 300)
    return workdir


# --- the parser ---------------------------------------------------------------------------

def test_help_lists_the_commands_in_the_documented_order(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: caviar [-h] [--version] COMMAND ...")
    listed = re.findall(r"^    (\w+)\s", out, flags=re.MULTILINE)
    assert listed == COMMANDS
    assert "Exit codes: 0 done, 1 failure, 2 bad input, 3 locked" in out


def test_the_parser_has_exactly_these_subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_that_exits_0(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: caviar {command} ")
    assert "--workdir" in out


def test_version_prints_caviar_and_the_installed_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"caviar {version('caviar')}\n"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


def test_workdir_defaults_to_caviar_workdir_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("CAVIAR_WORKDIR", str(tmp_path / "runs"))
    parser = build_parser()
    assert parser.parse_args(["sync"]).workdir == str(tmp_path / "runs")
    assert parser.parse_args(["promote", "m", "--version", "1"]).workdir == str(tmp_path / "runs")
    # submit's --workdir is the cluster's, not this machine's
    assert parser.parse_args(["submit", "s.yaml", "--address", "http://h:8265"]).workdir == (
        "~/caviar-runs")


def test_workdir_defaults_to_caviar_runs_without_caviar_workdir(monkeypatch):
    monkeypatch.delenv("CAVIAR_WORKDIR", raising=False)
    args = build_parser().parse_args(["sync", "--tracking-uri", "sqlite:///x.db"])
    assert args.workdir == DEFAULT_WORKDIR == "./caviar-runs"
    assert args.tracking_uri == "sqlite:///x.db"


def test_an_explicit_workdir_beats_caviar_workdir(monkeypatch, tmp_path):
    monkeypatch.setenv("CAVIAR_WORKDIR", str(tmp_path / "env"))
    args = build_parser().parse_args(["sync", "--workdir", str(tmp_path / "flag")])
    assert args.workdir == str(tmp_path / "flag")


# --- _common's helpers --------------------------------------------------------------------

def tracking_help(*fallbacks: str, default: str | None = None) -> argparse.Action:
    p = argparse.ArgumentParser()
    add_tracking_uri(p, "the registry", *fallbacks, default=default)
    return next(a for a in p._actions if a.dest == "tracking_uri")


def test_tracking_uri_help_lists_where_it_is_looked_for_in_order():
    action = tracking_help("the sweep's tracking.uri", "its file's")
    assert action.help == ("the registry (default: $MLFLOW_TRACKING_URI, else the sweep's "
                           "tracking.uri, else its file's, else sqlite:///WORKDIR/mlflow.db)")
    assert action.default is None and action.option_strings == ["--tracking-uri"]


def test_tracking_uri_help_without_fallbacks_names_env_then_embedded_store():
    assert tracking_help().help == (
        "the registry (default: $MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)")


def test_tracking_uri_help_honours_an_explicit_default():
    action = tracking_help("ignored", default="where each sweep was tracking")
    assert action.help == "the registry (default: where each sweep was tracking)"
    assert action.default is None


@pytest.mark.parametrize("seed", [0, 7, 2**31 - 1])
def test_seed_or_draw_returns_a_given_seed_silently(capsys, seed):
    assert seed_or_draw(seed) == seed
    assert capsys.readouterr().err == ""


def test_seed_or_draw_prints_the_seed_it_drew(capsys):
    seed = seed_or_draw(None)
    assert 0 <= seed < 2**31
    assert capsys.readouterr().err == (
        f"caviar: no --seed given; drew seed {seed} (pass --seed {seed} to repeat)\n")


@pytest.mark.parametrize(("value", "expected"), [
    (math.nan, None),
    (math.inf, None),
    (-math.inf, None),
    (0.25, 0.25),
    (3, 3),
    ("nan", "nan"),
    (None, None),
    ({"a": math.nan, "b": 1.5, "c": {"d": math.inf, "e": "x"}},
     {"a": None, "b": 1.5, "c": {"d": None, "e": "x"}}),
])
def test_json_safe_turns_nan_and_infinities_into_null(value, expected):
    safe = json_safe(value)
    assert safe == expected
    json.dumps(safe, allow_nan=False)  # valid JSON, no NaN or Infinity tokens


# --- exceptions to exit codes -------------------------------------------------------------

@pytest.mark.parametrize("case", ["spec", "data", "usage", "store", "registry"])
def test_bad_input_exits_2_with_one_error_line(capsys, tmp_path, store, case):
    bad_kind = write_yaml(tmp_path / "kind.yaml",
                          sweep_dict(data=TINY_DATA, strategy={"kind": "randm", "trials": 2}))
    no_csv = write_yaml(tmp_path / "csv.yaml",
                        sweep_dict(data={"source": "csv", "path": "nope.csv", "label": "y"}))
    good = write_yaml(tmp_path / "good.yaml", sweep_dict(data=TINY_DATA))
    args, fragments = {
        "spec": (["train", bad_kind], [str(bad_kind), "key 'strategy.kind'",
                                       "must be one of random", "'randm'"]),
        "data": (["train", no_csv], ["nope.csv: no such file", f"also looked in {tmp_path}"]),
        "usage": (["train", good, "--epochs", "0"], ["--epochs must be >= 1, got 0"]),
        "store": (["promote", "m", "--version", "1", "--workdir", tmp_path / "nowhere"],
                  [f"no MLflow store at sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}",
                   "pass --tracking-uri"]),
        "registry": (["promote", "ghost", "--version", "1", "--tracking-uri", store],
                     ["no registered model 'ghost'"]),
    }[case]
    code, out, err = run_main(capsys, *args)
    assert code == 2 and out == ""
    assert_one_paragraph_error(err, *fragments)
    assert not (tmp_path / "nowhere").exists()  # a missing store is not created


def test_a_held_lock_exits_3_naming_its_holder(capsys, store):
    client = MlflowClient(store, registry_uri=store)
    with Lock(client, "held", what="test"):
        code, out, err = run_main(capsys, "promote", "held", "--version", "1",
                                  "--tracking-uri", store)
    assert code == 3 and out == ""
    assert err.startswith("caviar: locked: model 'held' is locked by test pid "
                          f"{os.getpid()} on ")
    assert len(err.strip().splitlines()) == 1
    # released: the same command now reaches the registry (which has no such model)
    code, _, err = run_main(capsys, "promote", "held", "--version", "1", "--tracking-uri", store)
    assert code == 2
    assert_one_paragraph_error(err, "no registered model 'held'")


def test_a_failure_exits_1_with_one_line_naming_the_exception(capsys, tmp_path):
    workdir = corrupt_store(tmp_path)
    code, out, err = run_main(capsys, "promote", "m", "--version", "1", "--workdir", workdir)
    assert code == 1 and out == ""
    assert err.startswith("caviar: failed: DatabaseError: (sqlite3.DatabaseError) file is not "
                          "a database")
    assert err.endswith(" (set CAVIAR_DEBUG=1 for the traceback)\n")
    assert len(err.splitlines()) == 1  # SQLAlchemy's message spans lines: the first is kept


def test_caviar_debug_lets_the_failure_propagate(capsys, monkeypatch, tmp_path):
    workdir = corrupt_store(tmp_path)
    monkeypatch.setenv("CAVIAR_DEBUG", "1")
    with pytest.raises(Exception, match="file is not a database"):
        main(["promote", "m", "--version", "1", "--workdir", str(workdir)])
    assert "caviar: failed" not in capsys.readouterr().err


def test_caviar_debug_does_not_change_bad_input(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CAVIAR_DEBUG", "1")
    code, _, err = run_main(capsys, "promote", "m", "--version", "1", "--workdir",
                            tmp_path / "nowhere")
    assert code == 2
    assert_one_paragraph_error(err, "no MLflow store at")


ERRORS = [  # every caviar error: (module, class, exit code, first word of its message)
    ("searchspaces.errors", "SpecError", 2, "error"),
    ("models.data", "DataError", 2, "error"),
    ("orchestrator.cli._common", "UsageError", 2, "error"),
    ("orchestrator.tracking.store", "StoreMissing", 2, "error"),
    ("orchestrator.tracking.registry", "RegistryError", 2, "error"),
    ("orchestrator.sweep.sink", "StateDamaged", 2, "error"),
    ("orchestrator.tracking.ui", "PortTaken", 2, "error"),
    ("orchestrator.panda.channel", "BabysitError", 2, "error"),
    ("orchestrator.rerun.recipe", "RerunError", 2, "error"),
    ("orchestrator.sweep.paths", "SweepError", 2, "error"),
    ("orchestrator.sweep.paths", "DiskFull", 1, "failed"),
    ("orchestrator.retune.job", "RetuneFailed", 1, "failed"),
    ("orchestrator.panda.launch", "LaunchFailed", 1, "failed"),
    ("orchestrator.tracking.registry", "Locked", 3, "locked"),
    ("orchestrator.sweep.run", "SweepInterrupted", 130, "interrupted"),
]


@pytest.mark.parametrize(("module", "name", "code", "label"), ERRORS,
                         ids=[e[1] for e in ERRORS])
def test_every_caviar_error_is_a_caviar_error_carrying_its_exit_code(module, name, code,
                                                                      label):
    import importlib

    from searchspaces.errors import CaviarError

    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, CaviarError)
    assert (error.exit_code, error.label) == (code, label)


def test_no_exception_class_in_caviar_bypasses_caviar_error():
    """An exception class that derives from a built-in one alone would be a failure
    (exit 1) whatever it means: each derives from CaviarError (or Failure), and the table
    above names it."""
    import ast
    import builtins

    builtin = {n for n, v in vars(builtins).items()
               if isinstance(v, type) and issubclass(v, BaseException)}
    found = set()
    for package in ("searchspaces", "models", "orchestrator"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = {getattr(b, "id", getattr(b, "attr", None)) for b in node.bases}
                if bases & builtin:
                    found.add(node.name)
                    assert bases - builtin or node.name == "CaviarError", (
                        f"{path.relative_to(REPO)}: {node.name} derives from "
                        f"{sorted(bases)} only: make it a CaviarError")
    assert found - {"CaviarError"} <= {e[1] for e in ERRORS}


@pytest.mark.parametrize("error", [
    ("searchspaces.errors", "Failure", "the disk is full; free some space"),
    ("orchestrator.tracking.registry", "Locked", "model 'm' is locked by test"),
    ("orchestrator.sweep.run", "SweepInterrupted", "sweep 's' stopped before its end"),
    ("orchestrator.cli._common", "UsageError", "--epochs must be >= 1, got 0"),
], ids=lambda e: e[1])
def test_main_prints_a_caviar_error_as_its_label_and_message_and_exits_with_its_code(
        capsys, monkeypatch, error):
    """Even with CAVIAR_DEBUG=1: an error caviar expects is not a traceback."""
    import importlib

    from orchestrator.cli import sweeps

    module, name, message = error
    raised = getattr(importlib.import_module(module), name)(message)

    def handler(args):
        raise raised

    monkeypatch.setattr(sweeps, "cmd_sync", handler)  # the parser is built after this
    monkeypatch.setenv("CAVIAR_DEBUG", "1")
    code, out, err = run_main(capsys, "sync")
    assert (code, out) == (raised.exit_code, "")
    assert err == f"caviar: {raised.label}: {message}\n"


# --- the real process ---------------------------------------------------------------------

def env_without_debug(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CAVIAR_DEBUG", "MLFLOW_TRACKING_URI")}
    return {**env, **extra}


def test_a_failure_with_caviar_debug_prints_the_traceback(tmp_path):
    workdir = corrupt_store(tmp_path)
    ran = subprocess.run([sys.executable, "-m", "orchestrator.cli", "promote", "m", "--version",
                          "1", "--workdir", str(workdir)], cwd=REPO,
                         env=env_without_debug(CAVIAR_DEBUG="1"), capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 1 and ran.stdout == ""
    assert "Traceback (most recent call last)" in ran.stderr
    assert "file is not a database" in ran.stderr and "caviar: failed" not in ran.stderr


def test_ctrl_c_during_train_exits_130(tmp_path):
    sweep = write_yaml(tmp_path / "sweep.yaml", sweep_dict(data=TINY_DATA))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "train", str(sweep),
                             "--epochs", "100000", "--seed", "0", "--device", "cpu"],
                            cwd=REPO, env=env_without_debug(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("epoch "):
                break
        assert seen and seen[-1].startswith("epoch   1/100000"), "".join(seen)
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert out == ""  # no result line: the run did not finish
    assert rest.rstrip().endswith("caviar: interrupted")
    assert "Traceback" not in rest


def test_a_failure_wrapping_a_traceback_is_named_by_the_exception_it_ends_with():
    from orchestrator.cli import failure_line

    wrapped = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                           "OSError: [Errno 28] No space left on device\n")
    assert failure_line(wrapped) == "RuntimeError: OSError: [Errno 28] No space left on device"
    assert failure_line(ValueError("first\nsecond")) == "ValueError: first"
    assert failure_line(KeyError()) == "KeyError: "
