# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs caviar, runs a coarse-to-fine sweep on digits
#   make test   creates .venv, installs caviar with its dev tools, runs ruff and the tests
#
# torch is installed first and on its own, so pip takes the build you choose
# rather than whatever a dependency's unpinned `torch` would pull. The default
# pins the CPU build that lies on this project's machines' disk; on a GPU
# machine pass the build you want, e.g. `make demo TORCH="torch==2.13.0"` with
# PIP_INDEX_URL pointing at the CUDA wheels, or install torch into .venv
# yourself first: a torch already in .venv is kept.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.caviar-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/caviar sweep sweeps/digits.yaml --fresh

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_trainer.py
	$(BIN)/python benchmarks/bench_overhead.py
	$(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf $(VENV) caviar-runs .pytest_cache .ruff_cache *.egg-info
