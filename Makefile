# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime

.PHONY: test lint format demo bench clean image-test host-test dist docs

$(STAMP): pyproject.toml setup.py daemon/acexport/payload/_linescan.c daemon/acexport/output/_localcommit.c daemon/acexport/payload/_newfile.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# The demo needs only the daemon's own dependencies, no test or lint tools.
$(RUNTIME): pyproject.toml setup.py daemon/acexport/payload/_linescan.c daemon/acexport/output/_localcommit.c daemon/acexport/payload/_newfile.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUNTIME)

# Two workers (pytest-xdist): each test has its own ports, directories and emulators.
test: $(STAMP)
	$(PY) -m pytest -q -n 2

# The container image built with podman and run as docs/deploying.md says (needs root; it
# installs podman, runc and debootstrap from Debian when they are missing).
image-test:
	bash deploy/image-test.sh

# The host install and systemd recipes of docs/deploying.md, run as written in a private mount
# namespace (needs root; the machine's /opt, /usr/local and /etc are left alone).
host-test:
	bash deploy/host-test.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check daemon tests bench
	$(VENV)/bin/ruff format --check daemon tests bench
	$(VENV)/bin/mypy --strict daemon

format: $(STAMP)
	$(VENV)/bin/ruff check --fix daemon tests bench
	$(VENV)/bin/ruff format daemon tests bench

demo: $(RUNTIME)
	$(VENV)/bin/acexport demo

# The settings reference of docs/configuration.md, from the models' docstrings.
docs: $(STAMP)
	$(PY) -m acexport.config.reference --write docs/configuration.md

bench: $(STAMP)
	$(PY) bench/run_all.py $(if $(QUICK),--quick)

# The wheel a host install takes (pipx install dist/acexport-*.whl, or pip in a venv).
dist: $(RUNTIME)
	rm -rf dist
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist
