# PharmaTwin. `make demo` and `make test` create the virtual environment when it is missing.
# `make demo`: the HIL bioreactor on Modbus (loopback) and the closed-loop runtime, a whole batch.
# `make test`: the whole suite; `make test-fast`: without the tests marked slow (> ~5 s each).
# `make help` lists the targets.
# The interpreter .venv is made with: the distribution's CPython when the machine has one
# (Debian's /usr/bin/python3.x has libpython built into the executable: the control loop runs
# 7-10 % faster on it than on a source build with a shared libpython, such as pyenv's; see
# "The interpreter" in README.md), else python3 from PATH.
# `make PY=python3.12 setup` chooses another (used as it is: no fallback); an existing .venv
# keeps its own. If the default's venv fails (Debian without python3.x-venv), python3 makes it.
PY ?= $(firstword $(wildcard /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11) python3)
VENV_FALLBACK := $(if $(filter default file,$(origin PY)),python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKERS ?= 2
.DEFAULT_GOAL := setup

.PHONY: help setup demo test test-fast check bench clean

help:
	@echo "make setup      create .venv and install PharmaTwin with its test and dev extras"
	@echo "make demo       the HIL bioreactor on Modbus and the closed-loop runtime, a whole batch"
	@echo "make test       the whole test suite (layer contracts included)"
	@echo "make test-fast  the test suite without the tests marked slow"
	@echo "make check      ruff format --check, ruff check, mypy"
	@echo "make bench      the benchmarks"
	@echo "make clean      remove .venv, runs/ and the tool caches"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { \
	    rm -rf $(VENV); echo "making $(VENV) with $(PY)"; \
	    $(PY) -m venv $(VENV) || { rm -rf $(VENV); test -n "$(VENV_FALLBACK)" || exit 1; \
	        echo "$(PY) could not make $(VENV); making it with $(VENV_FALLBACK)"; \
	        $(VENV_FALLBACK) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; }; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/python -m hil.demo

# Most tests run on $(WORKERS) processes (pytest-xdist); those marked serial (closed loops against
# wall-clock deadlines, the demo under load, live servers, a browser) one at a time.
test: setup
	$(BIN)/python -m pytest -q -m "not serial" -n $(WORKERS)
	$(BIN)/python -m pytest -q -m serial

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -n $(WORKERS)

check: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy plant_models controller hil

bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
