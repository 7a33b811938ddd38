# Two-command set-up: `make demo` and `make test` work on a fresh machine.
# VENV=... reuses another virtual environment; PYTHON=... picks the interpreter that creates it.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.fftprompt-installed

.PHONY: install demo test test-fast test-extras lint format bench clean-venv

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

## The optional integrations for real (Optuna search, W&B offline, MLflow, TensorBoard, ONNX): installs the extras
## into $(VENV), runs their tests and fails when one of them skipped for a missing package. CI: VENV=.venv-extras.
EXTRAS_TESTS := tests/test_search_and_loggers.py tests/test_export_onnx.py tests/test_realdft.py
test-extras: install
	$(BIN)/python -m pip install --quiet -e '.[dev,search,wandb,mlflow,tensorboard,onnx]'
	@WANDB_MODE=offline $(BIN)/python -m pytest -q -rs $(EXTRAS_TESTS) > $(VENV)/test-extras.log 2>&1; \
	status=$$?; cat $(VENV)/test-extras.log; \
	if grep "^SKIPPED" $(VENV)/test-extras.log | grep -v "is installed"; then \
		echo "test-extras: the tests above skipped: an extra is missing"; exit 1; fi; \
	exit $$status
	$(BIN)/python -m pip list 2>/dev/null | grep -i -E '^(torch|lightning|hydra-core|hydra-optuna-sweeper|optuna|wandb|mlflow|tensorboard|onnx|onnxscript|onnxruntime) '

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
