# The two commands (README.md): `make demo` trains the tiny default with three module LRs; `make test` runs
#   1. `make setup`: Debian's Chromium, PostgreSQL and FFmpeg (the browser and the database server the tests drive, the
#      audio decoder TorchCodec reads WAV files with) and the
#      four environments of the version matrix below, side by side;
#   2. the tests, cut into eleven shards (one pytest run over some of a leg's test files each), two at a time, the
#      longest first (the tests are single-threaded; the machine has two cores); it fails if any shard fails.
# `make test-fast` is the inner loop: every test that starts no subprocess, on .venv.
#
# The environments, at the repository root, each pinned:
#   .venv        LLaMA-Factory 0.9.5 + transformers 5.6.0 (constraints.txt): the full suite
#   .venv-main   LLaMA-Factory main (commit below) + transformers 5.8.0 (constraints.txt + constraints-main.txt): `core`
#                and every test of a patch target's behaviour (`targets`), LlamaBoard in Chromium included
#   .venv-t57    LLaMA-Factory 0.9.5 + transformers 5.7.0 (DISABLE_VERSION_CHECK=1, as LLaMA-Factory advises): `core`
#   .venv-lf094  LLaMA-Factory 0.9.4 + transformers 4.57.1 (constraints-lf094.txt): `core`
#   .venv-ray    .venv + Ray (constraints-ray.txt): the tests marked `ray` (LLaMA-Factory's Ray launcher, USE_RAY=1)
#   .venv-optim  .venv + GaLore, APOLLO, BAdam and bitsandbytes (constraints-optim.txt): the tests marked `optim`
# .venv-main, .venv-t57, .venv-ray and .venv-optim start as hard-link copies of .venv (tools/new_venv: seconds, where
# installing torch's CUDA build takes minutes), then pip changes what differs.
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
# lf-multilr installed editable as a plain path entry, the repository root (no import hook of setuptools' at every
# interpreter start-up; lf_multilr/__init__.py finds `patches/` beside the package: docs/design.md#packaging).
EDITABLE = -e '.[test]' --config-settings editable_mode=compat

.PHONY: venv venv-main venv-t57 venv-compat venv-ray venv-optim venvs setup system-packages chromium postgresql ffmpeg \
	lint test test-fast test-full test-main test-t57 test-compat demo clean

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

# Ray in an environment of its own: importing LLaMA-Factory's trainer_utils imports ray wherever it is installed.
$(call STAMP,.venv-ray): $(call STAMP,.venv) constraints.txt constraints-ray.txt pyproject.toml setup.py
	$(call new_venv,.venv-ray,.venv)
	$(call PIP,.venv-ray) -c constraints.txt $(EDITABLE)
	$(call PIP,.venv-ray) -c constraints.txt -c constraints-ray.txt ray
	touch $@

# LLaMA-Factory's optional optimizers in an environment of their own: wherever galore-torch or apollo-torch is
# installed, every LLaMA-Factory start-up imports it.
$(call STAMP,.venv-optim): $(call STAMP,.venv) constraints.txt constraints-optim.txt pyproject.toml setup.py
	$(call new_venv,.venv-optim,.venv)
	$(call PIP,.venv-optim) -c constraints.txt $(EDITABLE)
	$(call PIP,.venv-optim) -c constraints.txt -c constraints-optim.txt galore-torch apollo-torch badam bitsandbytes
	touch $@

venv: $(call STAMP,.venv)
venv-main: $(call STAMP,.venv-main)
venv-t57: $(call STAMP,.venv-t57)
venv-compat: $(call STAMP,.venv-lf094)
venv-ray: $(call STAMP,.venv-ray)
venv-optim: $(call STAMP,.venv-optim)
# Every environment of the matrix (.venv-main says once why it is skipped when LLaMA-Factory's main is not at hand).
venvs:
	$(MAKE) --no-print-directory -j2 venv venv-compat venv-main venv-t57 venv-ray venv-optim

# The system packages the tests drive, from Debian: Chromium for LlamaBoard in a real browser (Playwright's own browser
# download needs more than the package registries), and PostgreSQL for the shared-study sweep (its tests start the
# server themselves, with initdb and pg_ctl, which Debian keeps in /usr/lib/postgresql/VERSION/bin, off the PATH).
system-packages: chromium postgresql ffmpeg
chromium:
	command -v chromium >/dev/null || apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)
postgresql:
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)
# FFmpeg's libraries, which TorchCodec (torchaudio.load, how LLaMA-Factory reads audio) decodes with.
ffmpeg:
	command -v ffmpeg >/dev/null || apt-get install -y -q --no-install-recommends ffmpeg || (apt-get update -q && apt-get install -y -q --no-install-recommends ffmpeg)

# What `make test` needs before its first test, built side by side: the environments (pip, mostly CPU) and the system
# packages (a download and an unpack, little CPU; apt installs one package set at a time, so they are one step).
setup:
	$(MAKE) --no-print-directory -j2 venv venv-compat system-packages venv-main venv-t57 venv-ray venv-optim

lint: venv
	.venv/bin/ruff check lf_multilr lf_multilr_sweep patches tests tools bench examples
	.venv/bin/mypy lf_multilr lf_multilr_sweep patches
	@dist=$$(mktemp -d) && .venv/bin/python -m build -q --no-isolation --outdir $$dist . >/dev/null \
		&& .venv/bin/twine check --strict $$dist/*; status=$$?; rm -rf $$dist; exit $$status

# The legs' commands (a shard adds the test files it runs or leaves). Each prints its 25 slowest tests, fixtures'
# set-up included (a shared training is paid by the first test that uses it).
PYTEST_ARGS ?= --durations=25
FULL = .venv/bin/python -m pytest $(PYTEST_ARGS)
MAIN = .venv-main/bin/python -m pytest -m "core or targets" $(PYTEST_ARGS)
T57 = DISABLE_VERSION_CHECK=1 .venv-t57/bin/python -m pytest -m core $(PYTEST_ARGS)
COMPAT = .venv-lf094/bin/python -m pytest -m core $(PYTEST_ARGS)
RAY = .venv-ray/bin/python -m pytest -m ray $(PYTEST_ARGS) tests/test_ray.py
OPTIM = .venv-optim/bin/python -m pytest -m optim $(PYTEST_ARGS)
# Without LLaMA-Factory's main at hand, .venv-main's build has said why the leg is skipped: its tests do not run.
if_main = if [ -f $(call STAMP,.venv-main) ]; then $(1); fi

# The shards, in the order they start (minutes on the 2-core machine: docs/compatibility.md#how-make-test-runs). A
# leg's last shard is every test file its other shards leave, so that a new test file runs without being listed here.
DISTRIBUTED := tests/test_distributed.py
SWEEP := tests/sweep tests/test_evidence.py
RESUME := tests/test_resume.py tests/test_backends.py
STAGES := tests/test_models_train.py tests/test_stages.py
SHARDS := shard-main shard-compat shard-full shard-distributed shard-t57 shard-sweep shard-resume shard-stages \
	shard-ray shard-optim shard-lint
ignoring = $(foreach file,$(1),--ignore=$(file))
.PHONY: $(SHARDS)

# Every shard runs (a failure in one does not stop the others), each one's output is printed in one piece when it
# ends, and `make test` fails if any shard did.
test: setup
	$(MAKE) --no-print-directory -j2 --keep-going --output-sync=target $(SHARDS)

shard-main:
	$(call if_main,$(MAIN))
shard-compat:
	$(COMPAT)
shard-full:
	$(FULL) -m "not ray" $(call ignoring,$(DISTRIBUTED) $(SWEEP) $(RESUME) $(STAGES))
shard-distributed:
	$(FULL) $(DISTRIBUTED)
shard-t57:
	$(T57)
shard-sweep:
	$(FULL) $(SWEEP)
shard-resume:
	$(FULL) $(RESUME)
shard-stages:
	$(FULL) $(STAGES)
shard-ray:
	$(RAY)
shard-optim:
	$(OPTIM)
shard-lint:
	@$(MAKE) --no-print-directory lint

# The inner loop: every test that starts no training subprocess.
test-fast: venv
	.venv/bin/python -m pytest -m "not slow" -q $(PYTEST_ARGS)

# One leg at a time, each in one pytest run.
test-full: venv system-packages
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
	rm -rf .venv .venv-main .venv-t57 .venv-lf094 .venv-ray .venv-optim build dist *.egg-info demo_output
