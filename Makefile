# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs caviar, runs a coarse-to-fine sweep on digits
#   make test   creates .venv, installs caviar with its dev tools, runs ruff and the tests
#
# torch is installed first and on its own, so pip takes the build you choose
# rather than whatever a dependency's unpinned `torch` would pull. TORCH names a
# version, not a build: from PyPI, Linux gets the CUDA 13.0 build. For another
# build, install it into .venv yourself first (a torch already in .venv is kept),
# e.g. `python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cpu` (docs/getting-started.md). Not PIP_INDEX_URL
# for the whole make: every other package would be looked up on that index too.
#
# Every package comes at the version in deploy/docker/constraints.txt (the images' pins):
# the tests run in the environment users deploy, and no upstream release changes it.
# `make try-latest` tries the newest releases in .venv-latest and says what moved.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PINS := deploy/docker/constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.caviar-installed
PIP_PINNED := --quiet --constraint $(PINS) --build-constraint $(PINS)

.PHONY: demo test test-fast lint bench try-latest clean

$(STAMP): pyproject.toml $(PINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint $(PINS) pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install $(PIP_PINNED) -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/caviar sweep sweeps/digits.yaml --fresh

# The suite's modules shared out to JOBS processes (pytest-xdist; a module's tests stay
# together, so its servers start once); the slowest 30 tests are printed at the end.
JOBS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

# The inner loop: the unit tests alone (no Ray, no server, no sweep), in under 2 minutes.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(JOBS) -m "not integration"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_trainer.py
	$(BIN)/python benchmarks/bench_overhead.py
	$(BIN)/python benchmarks/bench_search.py

# The newest releases of every dependency (torch as TORCH says) in .venv-latest: what
# differs from the pins, then the whole suite there. Moving the pins is a commit of its own.
try-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet "$(TORCH)"
	.venv-latest/bin/python -m pip install --quiet --upgrade -e '.[dev]'
	.venv-latest/bin/python deploy/docker/moved_pins.py $(PINS)
	.venv-latest/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .venv-latest caviar-runs .pytest_cache .ruff_cache *.egg-info
