# `make test` and `make demo` create (or reuse) the environment in .venv from constraints.txt, then run.
# `make test-compat` does the same for LLaMA-Factory 0.9.4 in .venv-lf094 from constraints-lf094.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lf-multilr-installed
COMPAT_VENV := .venv-lf094
COMPAT_BIN := $(COMPAT_VENV)/bin
COMPAT_STAMP := $(COMPAT_VENV)/.lf-multilr-installed
export OMP_NUM_THREADS := 1

.PHONY: venv venv-compat chromium test test-compat demo lint bench clean

$(STAMP): constraints.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	# DeepSpeed for the multi-process tests: its setup.py imports torch, so it builds in this environment.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-build-isolation -c constraints.txt deepspeed
	touch $@

venv: $(STAMP)

$(COMPAT_STAMP): constraints-lf094.txt pyproject.toml setup.py
	test -x $(COMPAT_BIN)/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_BIN)/python -m pip install -q --upgrade pip
	$(COMPAT_BIN)/python -m pip install -q -c constraints-lf094.txt -e '.[test]'
	touch $@

venv-compat: $(COMPAT_STAMP)

# The web UI tests drive Debian's Chromium (Playwright's own browser download needs more than package registries).
chromium:
	command -v chromium >/dev/null || apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)

test: lint chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-compat

# The end-to-end cases marked `core` (pyproject.toml) on LLaMA-Factory 0.9.4 with transformers 4.57.1.
test-compat: venv-compat
	$(COMPAT_BIN)/python -m pytest -m core $(PYTEST_ARGS)

demo: venv
	$(BIN)/python examples/demo.py

lint: venv
	$(BIN)/ruff check lf_multilr patches tests tools bench examples
	$(BIN)/mypy lf_multilr patches

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build dist *.egg-info demo_output
