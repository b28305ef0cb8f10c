"""The tests run in the environment users deploy: every installed package that
deploy/docker/constraints.txt pins is at its pinned version (``make test`` installs with
it), so a package's new release changes neither what users get nor what the tests see."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / "deploy" / "docker" / "constraints.txt"


def _load_moved_pins():
    spec = importlib.util.spec_from_file_location("moved_pins", PINS.parent / "moved_pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


moved_pins = _load_moved_pins()  # deploy/docker/moved_pins.py: one reader of the pins


def test_every_pinned_package_installed_here_is_at_its_pin():
    pins = moved_pins.read_pins(PINS)
    installed = {moved_pins.canonical(d.metadata["Name"]): d.version.split("+")[0]
                 for d in metadata.distributions()}
    moved = {n: (pins[n], v) for n, v in installed.items() if n in pins and pins[n] != v}
    assert not moved, (f"installed at other versions than {PINS.name} pins (pinned, installed): "
                       f"{moved}; `make clean test` installs the pinned set")


def test_the_pins_cover_caviars_requirements_and_the_dev_tools():
    from packaging.requirements import Requirement

    pins = moved_pins.read_pins(PINS)
    required = [Requirement(r) for r in metadata.requires("caviar")]
    unpinned = [r.name for r in required if moved_pins.canonical(r.name) not in pins]
    assert not unpinned, f"{PINS.name} pins no version of {unpinned}"
    for r in required:  # each pin satisfies pyproject's range
        assert r.specifier.contains(pins[moved_pins.canonical(r.name)]), r


def test_a_moved_package_is_listed(tmp_path, capsys):
    pins = tmp_path / "constraints.txt"
    pins.write_text("# a comment\npytest==0.0.1  # old\n")
    assert moved_pins.main(str(pins)) == 0
    assert f"pytest: 0.0.1 -> {metadata.version('pytest')}" in capsys.readouterr().out
