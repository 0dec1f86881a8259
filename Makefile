# rtx: make demo (everything on this machine) and make test (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install test test-compat lint unit integration e2e bench bench-pickup bench-placement bench-scale bench-airflow soak demo demo-stop clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

# each supported Airflow (3.1, 3.2, 3.3) in a venv of its own under .compat/: see .ci/test-compat
test-compat: install
	.ci/test-compat

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --durations=15

unit: install
	$(PY) -m pytest -q tests/unit

integration: install
	$(PY) -m pytest -q tests/integration

e2e: install
	$(PY) -m pytest -q tests/e2e

bench: bench-pickup bench-placement

bench-pickup: install
	$(PY) -m bench.pickup

bench-placement: install
	$(PY) -m bench.placement

# 2, 50 and 200 idle runners on a Postgres of its own (docs/scaling.md; ~10 min)
bench-scale: install
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)

# rtx against LocalExecutor and CeleryExecutor on real Airflow (~25 min; not part of make test)
bench-airflow: install
	$(PIP) install -q -e '.[bench]'
	$(PY) -m bench.airflow $(BENCH_AIRFLOW_ARGS)

soak: install
	$(PY) -m pytest -q -s tests/soak

demo: install
	$(PY) -m demo start

demo-stop:
	@if [ -x $(PY) ]; then $(PY) -m demo stop; else echo "no $(VENV): no demo to stop"; fi

clean: demo-stop
	rm -rf $(VENV) .compat .demo .pytest_cache .ruff_cache .hypothesis
