"""Writing files whole or not at all (models/files.py): atomic_write and atomic_path."""

from __future__ import annotations

import json

import pytest

from models.files import atomic_path, atomic_write


def _tmp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_writes_the_text_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "state.json"
    out = atomic_write(path, '{"round": 2}\n')
    assert out == path
    assert path.read_text() == '{"round": 2}\n'
    assert _tmp_files(tmp_path) == []


def test_atomic_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old, and longer than the new text")
    atomic_write(str(path), "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_path_yields_a_tmp_beside_the_file(tmp_path):
    path = tmp_path / "best.pt"
    with atomic_path(path) as tmp:
        assert tmp == tmp_path / "best.pt.tmp"
        tmp.write_text("weights")
    assert path.read_text() == "weights"
    assert not tmp.exists()


def test_atomic_path_replaces_the_file_only_when_the_block_ends(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"trials": 1}))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"trials": 2}))
        # a reader during the block sees the old file, whole
        assert json.loads(path.read_text()) == {"trials": 1}
        assert tmp.exists()
    assert json.loads(path.read_text()) == {"trials": 2}
    assert _tmp_files(tmp_path) == []


def test_a_reader_during_the_block_of_a_new_file_finds_none(tmp_path):
    path = tmp_path / "new.json"
    with atomic_path(path) as tmp:
        tmp.write_text("{}")
        assert not path.exists()
    assert path.read_text() == "{}"


class Crash(Exception):
    """Stands for anything that stops a writer midway."""


@pytest.mark.parametrize("written", ["half a fi", None], ids=["tmp-written", "tmp-not-written"])
def test_when_the_block_raises_the_old_file_stays_and_no_tmp_remains(tmp_path, written):
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(Crash, match="midway"), atomic_path(path) as tmp:
        if written is not None:
            tmp.write_text(written)
        raise Crash("midway")
    assert path.read_text() == "old"
    assert _tmp_files(tmp_path) == []


def test_when_the_block_is_interrupted_the_old_file_stays(tmp_path):
    """Not only Exceptions: a KeyboardInterrupt (BaseException) also leaves the old file."""
    path = tmp_path / "state.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("new")
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert _tmp_files(tmp_path) == []


def test_when_the_block_raises_on_a_new_file_no_file_appears(tmp_path):
    path = tmp_path / "never.json"
    with pytest.raises(Crash), atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise Crash("midway")
    assert list(tmp_path.iterdir()) == []
