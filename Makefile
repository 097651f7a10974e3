# Two commands set up everything on a fresh machine (see README):
#   make export   exports and verifies every registered layer into exported/
#   make test     lints, type-checks and runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)
# -c pins every tested version; torch in particular must never float (see constraints.txt).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: export test lint typecheck clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt $(PLUGINS)
	$(PIP_INSTALL) -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

export: $(VENV)/.installed
	$(BIN)/layerport export --all

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests plugins
	$(BIN)/ruff format --check src tests plugins
	$(BIN)/mypy

test: lint
	# One thread per xdist worker: two workers on two cores must not each start two.
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests $(wildcard plugins/*/tests) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) exported/*.onnx
