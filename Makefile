# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint format demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check daemon tests bench
	$(VENV)/bin/ruff format --check daemon tests bench
	$(VENV)/bin/mypy --strict daemon

format: $(STAMP)
	$(VENV)/bin/ruff check --fix daemon tests bench
	$(VENV)/bin/ruff format daemon tests bench

demo: $(STAMP)
	$(VENV)/bin/acexport demo --config config/demo.toml

bench: $(STAMP)
	$(PY) bench/run_all.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
