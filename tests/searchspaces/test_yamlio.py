"""caviar's YAML reader refuses what PyYAML lets through: a key given twice, aliases
that expand without bound; and no error message grows with the value it quotes."""

from __future__ import annotations

import pytest

from searchspaces import SpecError
from searchspaces.errors import MAX_MESSAGE, readable
from searchspaces.yamlio import MAX_NODES, load_mapping, parse_yaml


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghijk"[:levels - 1]:
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text + f"name: *{prev}\n"


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\nepochs: 5\nseed: 0\nepochs: 500\n")
    with pytest.raises(SpecError) as e:
        load_mapping(path)
    assert str(e.value).startswith(f"{path}: line 4, column 1: ")
    assert "duplicate key 'epochs' (first given on line 2)" in str(e.value)


def test_nested_duplicates_are_refused_and_merge_keys_still_override():
    with pytest.raises(SpecError, match="duplicate key 'low'"):
        parse_yaml("space:\n  lr: {low: 0.1, high: 1, low: 0.2}\n")
    assert parse_yaml("base: &b {low: 1, high: 2}\nlr:\n  <<: *b\n  low: 0.5\n")["lr"] == {
        "low": 0.5, "high": 2}


def test_aliases_that_expand_without_bound_are_refused_at_once():
    with pytest.raises(SpecError, match=f"its aliases expand to more than {MAX_NODES:,}"):
        parse_yaml(billion_laughs(), "bomb.yaml")
    small = parse_yaml(billion_laughs(levels=2), "ok.yaml")  # 81 values: a fine file
    assert len(small["name"]) == 9 and small["name"][0] == ["lol"] * 9


def test_a_huge_value_in_a_message_is_cut_keeping_its_start_and_end():
    message = "f.yaml: key 'name': got " + repr(list(range(5000))) + "; the rule"
    cut = readable(message)
    assert len(cut) <= MAX_MESSAGE and cut.startswith("f.yaml: key 'name': got [0, 1")
    assert cut.endswith("; the rule") and "characters cut" in cut
    assert readable("short") == "short"


def test_validate_gives_one_short_paragraph_for_a_bomb(tmp_path, capsys):
    from orchestrator.cli import main

    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("caviar: error: ") and len(err.splitlines()) == 1
    assert len(err) < MAX_MESSAGE + 40 and "aliases expand" in err
