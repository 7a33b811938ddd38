# Two-command set-up: `make demo` and `make test` work on a fresh machine.
# VENV=... reuses another virtual environment; PYTHON=... picks the interpreter that creates it.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.fftprompt-installed

.PHONY: install demo test test-fast lint format bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)

## Default training run on the generated symmetry benchmark (CPU, a few minutes).
demo: install
	$(BIN)/fftprompt-train

## The whole test suite, with the lint first.
test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

## Skip multi-second tests while iterating.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install
	$(BIN)/fftprompt-bench features
	$(BIN)/fftprompt-bench fourierft
	$(BIN)/fftprompt-bench prompts
	$(BIN)/fftprompt-bench methods

clean-venv:
	rm -rf $(VENV)
