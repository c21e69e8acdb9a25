# `make test` and `make demo` create (or reuse) the environment in .venv from constraints.txt, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lf-multilr-installed
export OMP_NUM_THREADS := 1

.PHONY: venv chromium test demo lint bench clean

$(STAMP): constraints.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(STAMP)

# The web UI tests drive Debian's Chromium (Playwright's own browser download needs more than package registries).
chromium:
	command -v chromium >/dev/null || apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)

test: lint chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/python examples/demo.py

lint: venv
	$(BIN)/ruff check lf_multilr patches tests tools bench examples
	$(BIN)/mypy lf_multilr patches

clean:
	rm -rf $(VENV) build dist *.egg-info demo_output
