"""The documentation site (docs/, mkdocs.yml) builds with ``mkdocs build --strict``, and
the code blocks it marks as meant to run do run.

A block is marked by an HTML comment on the line before its fence (docs/development.md):
``<!-- run -->`` before an ``sh`` block (each line runs with bash, exit 0), ``<!-- run:
validate -->`` before a ``yaml`` block (``caviar validate`` takes it), ``<!-- run:
TEST_FILE -->`` before a ``python`` block that the named test file runs."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))  # the site's pages; README.md's blocks run too
MARKED = re.compile(r"^<!-- run(?:: (\S+))? -->\n```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)


def marked_blocks() -> list[tuple[str, str | None, str, str]]:
    """(page, marker argument, language, code) of every marked block."""
    out = []
    for page in [*PAGES, REPO / "README.md"]:
        for m in MARKED.finditer(page.read_text(encoding="utf-8")):
            out.append((str(page.relative_to(REPO)), m.group(1), m.group(2), m.group(3)))
    return out


BLOCKS = marked_blocks()
SHELL = [(page, code) for page, arg, lang, code in BLOCKS if arg is None]
YAML = [(page, code) for page, arg, lang, code in BLOCKS if arg == "validate"]
BY_TEST = [(page, arg, code) for page, arg, lang, code in BLOCKS
           if arg not in (None, "validate")]


def test_the_site_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def test_every_marker_names_a_kind_of_block_the_suite_runs():
    languages: dict[str | None, set[str]] = {}
    for _, arg, lang, _ in BLOCKS:
        languages.setdefault(arg if arg in (None, "validate") else "test", set()).add(lang)
    assert languages == {None: {"sh"}, "validate": {"yaml"}, "test": {"python"}}, languages
    assert len(SHELL) >= 1 and len(YAML) >= 4 and len(BY_TEST) >= 1


@pytest.mark.parametrize(("page", "test_file", "code"), BY_TEST,
                         ids=[f"{p}:{i}" for i, (p, _, _) in enumerate(BY_TEST)])
def test_a_python_block_is_run_by_the_test_file_it_names(page, test_file, code):
    test = REPO / test_file
    assert test.is_file(), f"{page} names {test_file}, which does not exist"
    assert page in test.read_text(encoding="utf-8"), f"{test_file} does not read {page}"
    compile(code, page, "exec")


@pytest.mark.parametrize(("page", "code"), YAML,
                         ids=[f"{p}:{i}" for i, (p, _) in enumerate(YAML)])
def test_a_yaml_block_validates(page, code, tmp_path, monkeypatch, capsys):
    """Written beside a copy of sweeps/ (a re-tune file names its sweep), validated from
    the repository's root (a sweep names its space from there)."""
    from orchestrator.cli import main

    folder = tmp_path / "sweeps"
    folder.mkdir()
    for f in (REPO / "sweeps").glob("*.yaml"):
        (folder / f.name).write_text(f.read_text())
    block = folder / "block.yaml"
    block.write_text(code)
    monkeypatch.chdir(REPO)
    assert main(["validate", str(block)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("page", "code"), SHELL,
                         ids=[f"{p}:{i}" for i, (p, _) in enumerate(SHELL)])
def test_a_shell_block_runs(page, code, tmp_path):
    env = {**os.environ, "CAVIAR_WORKDIR": str(tmp_path / "runs"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{page}:\n{code}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, option string) of every long option of every (sub)command; hidden
    ones (help suppressed: test hooks) left out."""
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), None
                yield from _options(sub, path + (name,))
        else:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    yield path, option


def test_every_command_and_flag_is_in_the_cli_reference():
    from orchestrator.cli import build_parser

    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    missing = []
    for path, option in _options(build_parser()):
        if option is None:
            if f"caviar {' '.join(path)}" not in text:
                missing.append(" ".join(path))
        elif not re.search(re.escape(option) + r"(?![\w-])", text):
            missing.append(f"{' '.join(path)} {option}")
    assert not missing, f"docs/reference/cli.md does not mention {missing}"


def test_no_page_cites_a_file_outside_the_repository():
    for page in [*PAGES, REPO / "README.md", REPO / "deploy" / "README.md"]:
        text = page.read_text(encoding="utf-8")
        for outside in ("../shared", "DESIGN.md", "FACTS.md"):
            assert outside not in text, f"{page.relative_to(REPO)} cites {outside}"


def test_the_readme_is_short_and_keeps_the_two_set_up_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make demo   #" in text and "make test   #" in text
    for link in re.findall(r"\]\(((?:docs|deploy)/[^)#]+)", text):
        assert (REPO / link).is_file(), link
