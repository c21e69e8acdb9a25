# `make demo` and `make test` create (or reuse) their environments at the repository root, each pinned:
#   .venv        LLaMA-Factory 0.9.5 + transformers 5.6.0 (constraints.txt): the full suite
#   .venv-main   LLaMA-Factory main (commit below) + transformers 5.8.0 (constraints.txt + constraints-main.txt): `core`
#                and every test of a patch target's behaviour (`targets`), LlamaBoard in Chromium included
#   .venv-t57    LLaMA-Factory 0.9.5 + transformers 5.7.0 (DISABLE_VERSION_CHECK=1, as LLaMA-Factory advises): `core`
#   .venv-lf094  LLaMA-Factory 0.9.4 + transformers 4.57.1 (constraints-lf094.txt): `core`
# .venv-main and .venv-t57 start as hard-link copies of .venv (tools/new_venv: seconds, where installing torch's
# CUDA build takes minutes), then pip changes what differs. `make test` cuts the legs into shards (one pytest run over
# some of a leg's test files each) and runs two at a time, the longest first (the tests are single-threaded; the
# machine has two cores). A shard builds only the environments it needs, as it starts.
# The interpreter the environments are made from (tools/python_for_venvs: the distribution's optimised CPython where
# there is one); an environment made from another interpreter is made anew, as its stamp names the interpreter.
PYTHON ?= $(shell tools/python_for_venvs)
BASE_PYTHON := $(shell $(PYTHON) -c 'import os, sys; print(os.path.realpath(sys.executable))')
export OMP_NUM_THREADS := 1

# LLaMA-Factory's main: the wheel carried next to the repository, else the same commit from git, else the leg is
# skipped with one line that says why and how to run it.
MAIN_COMMIT := ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30
MAIN_WHEEL ?= ../shared/wheels/llamafactory-0.9.6.dev0-py3-none-any.whl
MAIN_GIT := https://github.com/hiyouga/LLaMA-Factory

STAMP = $(1)/.lf-multilr-installed$(subst /,-,$(BASE_PYTHON))
PIP = $(1)/bin/python -m pip install -q
# lf-multilr installed editable as a plain path entry (no import hook of setuptools' at every interpreter start-up):
# `lf_multilr/patches` links to `patches/`, so the repository root is all it takes.
EDITABLE = -e '.[test]' --config-settings editable_mode=compat

.PHONY: venv venv-main venv-t57 venv-compat venvs chromium postgresql lint test test-fast test-full test-main test-t57 \
	test-compat demo bench clean

define new_venv
	tools/new_venv $(PYTHON) $(1) $(2)
endef

$(call STAMP,.venv): constraints.txt pyproject.toml setup.py
	$(call new_venv,.venv)
	$(call PIP,.venv) -c constraints.txt $(EDITABLE)
	# DeepSpeed for the multi-process tests: its setup.py imports torch, so it builds in the environment.
	DS_BUILD_OPS=0 $(call PIP,.venv) --no-build-isolation -c constraints.txt deepspeed
	touch $@

$(call STAMP,.venv-main): $(call STAMP,.venv) constraints.txt constraints-main.txt pyproject.toml setup.py
	@source=$$(tools/llamafactory_main_source "$(MAIN_WHEEL)" "$(MAIN_GIT)" "$(MAIN_COMMIT)") || exit 0; \
	set -ex; \
	$(call new_venv,.venv-main,.venv); \
	grep -v -e '^llamafactory==' -e '^transformers==' constraints.txt | cat - constraints-main.txt > .venv-main/constraints.txt; \
	$(call PIP,.venv-main) -c .venv-main/constraints.txt "$$source" $(EDITABLE); \
	DS_BUILD_OPS=0 $(call PIP,.venv-main) --no-build-isolation -c .venv-main/constraints.txt deepspeed; \
	touch $@

$(call STAMP,.venv-t57): $(call STAMP,.venv) constraints.txt pyproject.toml setup.py
	$(call new_venv,.venv-t57,.venv)
	$(call PIP,.venv-t57) -c constraints.txt $(EDITABLE)
	# transformers 5.7.0 over LLaMA-Factory 0.9.5's own cap (<=5.6.0): LLaMA-Factory moves its 0.9.5 users there since
	# 5.6.0 broke FlashAttention 2. pip reports the conflict with the cap, then installs it.
	sed 's/^transformers==.*/transformers==5.7.0/' constraints.txt > .venv-t57/constraints.txt
	$(call PIP,.venv-t57) -c .venv-t57/constraints.txt transformers==5.7.0
	touch $@

$(call STAMP,.venv-lf094): constraints-lf094.txt pyproject.toml setup.py
	$(call new_venv,.venv-lf094)
	$(call PIP,.venv-lf094) -c constraints-lf094.txt $(EDITABLE)
	touch $@

venv: $(call STAMP,.venv)
venv-main: $(call STAMP,.venv-main)
venv-t57: $(call STAMP,.venv-t57)
venv-compat: $(call STAMP,.venv-lf094)
# .venv-main is built by its own leg: without LLaMA-Factory's main at hand, that leg says once why it is skipped.
venvs:
	$(MAKE) --no-print-directory -j2 venv venv-t57 venv-compat

# The web UI tests drive Debian's Chromium (Playwright's own browser download needs more than package registries).
chromium:
	command -v chromium >/dev/null || apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)

# The shared-study sweep test starts Debian's PostgreSQL server itself (initdb and pg_ctl, which Debian keeps in
# /usr/lib/postgresql/VERSION/bin, off the PATH), on a free local port.
postgresql:
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)

lint: venv
	.venv/bin/ruff check lf_multilr patches tests tools bench examples
	.venv/bin/mypy lf_multilr

# The legs' commands (a shard adds the test files it runs or leaves).
FULL = .venv/bin/python -m pytest $(PYTEST_ARGS)
MAIN = .venv-main/bin/python -m pytest -m "core or targets" $(PYTEST_ARGS)
T57 = DISABLE_VERSION_CHECK=1 .venv-t57/bin/python -m pytest -m core $(PYTEST_ARGS)
COMPAT = .venv-lf094/bin/python -m pytest -m core $(PYTEST_ARGS)
# Without LLaMA-Factory's main at hand, .venv-main's build has said why the leg is skipped: its tests do not run.
if_main = if [ -f $(call STAMP,.venv-main) ]; then $(1); fi

# `make test` cuts the legs into shards and runs two at a time, in this order: the longest first, the shortest last to
# fill the ends (minutes on the 2-core machine: docs/compatibility.md). The first two start together: the main leg,
# which builds .venv and copies it, and 0.9.4's, whose environment is built on its own. A leg's last shard is every
# test file its other shards leave, so that a new test file runs without being listed here.
DISTRIBUTED := tests/test_distributed.py
SWEEP := tests/sweep tests/test_evidence.py
RESUME := tests/test_resume.py tests/test_backends.py
STAGES := tests/test_models_train.py tests/test_stages.py
SHARDS := shard-main shard-compat shard-full shard-distributed shard-t57 shard-sweep shard-resume shard-stages shard-lint
ignoring = $(foreach file,$(1),--ignore=$(file))
.PHONY: $(SHARDS)

# Every shard runs (a failure in one does not stop the others); each one's output is printed in one piece when it
# ends, and `make test` fails if any shard did. The system packages the tests drive (Chromium, PostgreSQL: a download
# and an unpack, little CPU) install in the background while the first shards build their environments; a shard that
# needs them waits for them, and installs them itself (with apt's own message) if that install failed.
test:
	@flock $(APT_LOCK) $(MAKE) --no-print-directory chromium postgresql >.apt.log 2>&1 &
	$(MAKE) --no-print-directory -j2 --keep-going --output-sync=target $(SHARDS)

# A shard builds the environments it needs in its own recipe, as it starts (as prerequisites, make would build
# every environment before starting any shard), one build at a time for each environment.
built = flock $(1).lock $(MAKE) --no-print-directory $(2)
# apt runs one install at a time: the shards and the background install take turns.
APT_LOCK := .apt.lock
installed = flock $(APT_LOCK) $(MAKE) -s --no-print-directory $(1)
shard-main:
	@$(call built,.venv,venv) && $(call built,.venv-main,venv-main) && $(call installed,chromium)
	$(call if_main,$(MAIN))
shard-compat:
	@$(call built,.venv-lf094,venv-compat) && $(call installed,chromium)
	$(COMPAT)
shard-full:
	@$(call built,.venv,venv) && $(call installed,chromium)
	$(FULL) $(call ignoring,$(DISTRIBUTED) $(SWEEP) $(RESUME) $(STAGES))
shard-distributed:
	@$(call built,.venv,venv)
	$(FULL) $(DISTRIBUTED)
shard-t57:
	@$(call built,.venv,venv) && $(call built,.venv-t57,venv-t57) && $(call installed,chromium)
	$(T57)
shard-sweep:
	@$(call built,.venv,venv) && $(call installed,postgresql)
	$(FULL) $(SWEEP)
shard-resume:
	@$(call built,.venv,venv)
	$(FULL) $(RESUME)
shard-stages:
	@$(call built,.venv,venv)
	$(FULL) $(STAGES)
shard-lint:
	@$(call built,.venv,venv)
	@$(MAKE) --no-print-directory lint

# The inner loop: every test that starts no training subprocess.
test-fast: venv
	.venv/bin/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

# One leg at a time, each in one pytest run.
test-full: venv chromium postgresql
	$(FULL)
test-main: venv-main chromium
	$(call if_main,$(MAIN))
test-t57: venv-t57 chromium
	$(T57)

# The end-to-end cases marked `core` (pyproject.toml) on LLaMA-Factory 0.9.4 with transformers 4.57.1.
test-compat: venv-compat chromium
	$(COMPAT)

demo: venv
	.venv/bin/python examples/demo.py

clean:
	rm -rf .venv .venv-main .venv-t57 .venv-lf094 .venv*.lock .apt.lock .apt.log build dist *.egg-info demo_output
