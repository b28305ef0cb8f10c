"""The layout: one package per capability, and imports that only point down.

Every import in caviar's source (function-level ones too) is read with ``ast`` and
checked against the floors below. A new package must be given a floor here before
it can land, which is the point: where it sits is a decision, not an accident.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("searchspaces", "models", "orchestrator")

# package -> what it may import of caviar (besides itself). Read bottom-up.
MAY_IMPORT = {
    "searchspaces": set(),
    "models": {"searchspaces"},  # caviar's errors (searchspaces.errors): DataError's base
    # the root package: DEFAULT_WORKDIR, the trial protocol, the checks of files' fields
    "orchestrator": {"searchspaces"},
    "orchestrator.strategies": {"searchspaces", "models", "orchestrator"},
    "orchestrator.tracking": {"searchspaces", "models", "orchestrator"},
    "orchestrator.cluster": {"searchspaces", "models", "orchestrator"},
    "orchestrator.sweep": {"searchspaces", "models", "orchestrator", "orchestrator.strategies",
                           "orchestrator.tracking", "orchestrator.cluster"},
    "orchestrator.retune": {"searchspaces", "models", "orchestrator", "orchestrator.strategies",
                            "orchestrator.tracking", "orchestrator.cluster",
                            "orchestrator.sweep"},
    # babysitting trains like a trial and registers like a sweep: retune's floor
    "orchestrator.panda": {"searchspaces", "models", "orchestrator", "orchestrator.strategies",
                           "orchestrator.tracking", "orchestrator.cluster",
                           "orchestrator.sweep"},
    # a trial rebuilt from its record: the tracking store, the trainer, Ray for --address
    "orchestrator.rerun": {"searchspaces", "models", "orchestrator", "orchestrator.tracking",
                           "orchestrator.cluster"},
    "orchestrator.cli": {"searchspaces", "models", "orchestrator", "orchestrator.strategies",
                         "orchestrator.tracking", "orchestrator.cluster", "orchestrator.sweep",
                         "orchestrator.retune", "orchestrator.panda", "orchestrator.rerun"},
}
# Third-party frameworks a package must not touch: models and search spaces know nothing
# of Ray or MLflow; one writer talks to MLflow; Ray stays out of tracking.
MUST_NOT_IMPORT = {
    "searchspaces": {"ray", "mlflow", "torch"},
    "models": {"ray", "mlflow"},
    "orchestrator.strategies": {"mlflow"},
    "orchestrator.tracking": {"ray"},
    "orchestrator.cluster": {"mlflow"},
}


def package_of(module: str) -> str | None:
    """The floor a module belongs to: the longest entry of MAY_IMPORT it falls under."""
    matches = [p for p in MAY_IMPORT if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, name) of every import in the file, at any depth (``from a.b import c``: a.b.c)."""
    out = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_every_source_package_has_a_floor():
    homeless = {module_name(p) for p in SOURCES if package_of(module_name(p)) is None}
    assert not homeless, f"give these a floor in MAY_IMPORT: {sorted(homeless)}"


def violations(path: Path, text: str | None = None) -> list[str]:
    here = package_of(module_name(path))
    allowed = MAY_IMPORT[here] | {here}
    banned = MUST_NOT_IMPORT.get(here, set())
    out = []
    for line, name in imports(path, path.read_text() if text is None else text):
        top = name.split(".")[0]
        if top in banned:
            out.append(f"{path.relative_to(REPO)}:{line}: {here} imports {top}")
        if top not in PACKAGES:
            continue
        there = package_of(name)
        if there not in allowed:
            out.append(f"{path.relative_to(REPO)}:{line}: {here} imports {name} ({there})")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_down(path):
    assert violations(path) == []


def test_the_check_catches_an_upward_import():
    """The rule itself can fail: tracking importing the sweep driver, or Ray, is refused."""
    runs = REPO / "orchestrator" / "tracking" / "runs.py"
    text = runs.read_text() + "\nfrom orchestrator.sweep.run import run_sweep\nimport ray\n"
    found = violations(runs, text)
    assert any("imports orchestrator.sweep.run.run_sweep (orchestrator.sweep)" in v
               for v in found)
    assert any("orchestrator.tracking imports ray" in v for v in found)


def test_search_spaces_sit_below_models():
    """models may import searchspaces (caviar's errors live there), never the reverse."""
    errors = REPO / "searchspaces" / "errors.py"
    found = violations(errors, errors.read_text() + "\nfrom models.data import DataError\n")
    assert found == [f"searchspaces/errors.py:{len(errors.read_text().splitlines()) + 2}: "
                     "searchspaces imports models.data.DataError (models)"]


def test_every_test_the_integration_table_names_is_a_test():
    """tests/conftest.py marks tests by name: a renamed or removed one would silently
    move into ``make test-fast``'s run."""
    from tests.conftest import ALL, INTEGRATION

    for module, names in INTEGRATION.items():
        tree = ast.parse((REPO / module).read_text())
        tests = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                 and n.name.startswith("test_")}
        assert tests, module
        missing = set() if names == ALL else set(names) - tests
        assert not missing, f"{module}: no test named {sorted(missing)}"


# Rooms small enough to read: a module at once, a function on one screen.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_or_function_is_too_long_to_read_at_once(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path}: split it where its jobs split"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(text, str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: {long}"
