# Single entry points: `make run` (the DVC pipeline) and `make test` (the test suite).
# Each creates the virtual environment if missing and installs the pinned requirements first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export BEDKD_DATA_DIR ?= $(abspath ../shared/data)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install run test test-fast ui clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

run: install
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc repro

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri "sqlite:///$(abspath mlflow.db)" --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) .pytest_cache
