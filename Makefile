# The two commands of a fresh machine:  `make demo`  and  `make test`.
# Both create a project-local virtual environment (.venv) on first use and reuse it afterwards.
VENV        ?= .venv
PYTHON      ?= python3
# CPU machines: torch==2.13.0 (CPU build). GPU machines: install your CUDA torch into the venv first,
# then `make setup CONSTRAINTS=constraints/gpu.txt` (see README, "Installing on a GPU machine").
CONSTRAINTS ?= constraints/cpu.txt
# Every other dependency at the exact version the suite passed with (re-lock: `make lock`).
LOCK        ?= constraints/lock.txt
EXTRAS      ?= dev
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed-$(EXTRAS)
LATEST_VENV ?= .venv-latest

SHELL       := /bin/bash
.PHONY: setup demo test test-all lint test-latest lock clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS) $(LOCK)
	@echo "setup: installing llmstack[$(EXTRAS)] and its locked dependencies into $(VENV) (first time: 3-5 minutes) ..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# PIP_CONSTRAINT also reaches pip's isolated build environments (deepspeed builds from an sdist)
	@start=$$(date +%s); \
	PIP_CONSTRAINT="$(abspath $(CONSTRAINTS)) $(abspath $(LOCK))" $(PY) -m pip install --quiet \
	    --disable-pip-version-check -e ".[$(EXTRAS)]" 2>&1 | grep -v "^WARNING: Location" ; \
	test $${PIPESTATUS[0]} -eq 0 && echo "setup: done in $$(( $$(date +%s) - start )) s"
	@touch $@

demo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh

# CI's run: every component on tiny models, minus the few tests marked slow (see pyproject.toml)
test: setup lint
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# everything, the slow tests included (about 5 minutes more)
test-all: setup lint
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q $(PYTEST_ARGS)

# ruff with the rules in pyproject.toml (bugs, not taste); `pre-commit install` runs it on every commit
lint: setup
	$(VENV)/bin/ruff check .

# The suite against the newest versions setup.cfg allows (no lock): run it before `make lock`, and
# now and then, so that a new release that breaks us is seen here before a user sees it.
test-latest:
	@test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	PIP_CONSTRAINT="$(abspath $(CONSTRAINTS))" $(LATEST_VENV)/bin/python -m pip install --quiet \
	    --disable-pip-version-check --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]" 2>&1 | grep -v "^WARNING: Location" || true
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | grep -viE '^(torch|pip|setuptools|wheel)==' | sort -f \
	    | diff <(grep -v '^#' $(LOCK) | sort -f) - | grep '^[<>]' || echo "test-latest: same versions as $(LOCK)"
	PATH=$(abspath $(LATEST_VENV))/bin:$$PATH $(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lock:
	bash scripts/lock.sh

clean:
	rm -rf runs/demo data/demo .pytest_cache
