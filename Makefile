# Two commands set up everything on a fresh machine (see README):
#   make export   exports and verifies every registered layer into exported/
#   make test     lints, type-checks and runs the test suite
# Serving with Triton (README, "Serving with Triton"):
#   make triton   exports every layer into a Triton repository, exported/triton-python/
#   make serve    serves it with the tritonserver of the serving environment
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)
# -c pins every tested version; torch in particular must never float (see constraints.txt).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

SERVE_ENV := .serve-env

.PHONY: export test lint typecheck clean serve-env triton serve

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt $(PLUGINS)
	$(PIP_INSTALL) -e '.[test]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

export: $(VENV)/.installed
	$(BIN)/layerport export --all

# The serving environment: layerport's runtime (no torch) with nvidia-pytriton's
# tritonserver and tritonclient, which need numpy < 2 and protobuf < 7.
$(SERVE_ENV)/.installed: pyproject.toml constraints-serve.txt
	$(PYTHON) -m venv $(SERVE_ENV)
	$(SERVE_ENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-c constraints-serve.txt -e . nvidia-pytriton 'tritonclient[grpc]'
	touch $@

serve-env: $(SERVE_ENV)/.installed

triton: $(VENV)/.installed
	$(BIN)/layerport export --all --target triton-python -o exported/triton-python

serve: triton serve-env
	$(BIN)/layerport serve exported/triton-python --env $(SERVE_ENV)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests plugins benchmarks
	$(BIN)/ruff format --check src tests plugins benchmarks
	$(BIN)/mypy

test: lint
	# One thread per xdist worker: two workers on two cores must not each start two.
	# pytest collects tests/ and every example plugin's tests (testpaths, pyproject.toml).
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(SERVE_ENV) exported/*.onnx exported/triton exported/triton-python
