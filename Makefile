# The two commands of a fresh machine:  `make demo`  and  `make test`.
# Both create a project-local virtual environment (.venv) on first use and reuse it afterwards.
VENV        ?= .venv
PYTHON      ?= python3
# CPU machines: torch==2.13.0 (CPU build). GPU machines: install your CUDA torch into the venv first,
# then `make setup CONSTRAINTS=constraints/gpu.txt` (see README, "Installing on a GPU machine").
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS      ?= dev
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed-$(EXTRAS)

.PHONY: setup demo test test-all clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# PIP_CONSTRAINT also reaches pip's isolated build environments (deepspeed builds from an sdist)
	PIP_CONSTRAINT=$(abspath $(CONSTRAINTS)) $(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/demo.sh

test: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs/demo data/demo .pytest_cache
