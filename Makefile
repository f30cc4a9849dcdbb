# GrowthFlow: `make run` sets up and runs the pipeline on config/default.toml; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export USER ?= growthflow
export HF_HUB_OFFLINE := 1

.PHONY: setup run run-tiny test bench card-server

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) flows/growth_flow.py run

run-tiny: setup
	$(PY) flows/growth_flow.py --config config config/tiny.toml run

test: setup
	$(PY) -m pytest

card-server: setup
	$(PY) flows/growth_flow.py card server
