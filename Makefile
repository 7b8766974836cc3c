# Two commands for a newcomer: `make demo` and `make test`.  Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
FLIGHT_DIR ?= runs/flight

.PHONY: setup system-deps engine demo test lint typecheck pytest slow bench golden clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first: an open-ended torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,torch,bench,analysis,archive]'
	# Model Explorer's web app for `replayer view --viewer explorer`, without its native adapter.
	$(PY) -m pip install -q --no-deps 'ai-edge-model-explorer==0.1.34'
	touch $(STAMP)

setup: $(STAMP)

# Tools the tests use from Debian (h5dump for the layout test, chromium for the Netron browser
# tests, which Playwright from the dev extra drives by executable path, a C compiler for the
# recorder's one-pass statistics kernel, a C++ one for its native capture engine).  Installed
# when missing and we are root.
system-deps:
	@if ! command -v h5dump >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq hdf5-tools >/dev/null) || echo "warning: apt-get could not install hdf5-tools"; \
	  else echo "warning: h5dump missing and not root: the h5dump test will skip"; fi; \
	fi
	@if ! command -v cc >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq gcc >/dev/null) || echo "warning: apt-get could not install gcc"; \
	  else echo "warning: no C compiler and not root: the one-pass statistics kernel tests will skip"; fi; \
	fi
	@if ! command -v c++ >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq g++ >/dev/null) || echo "warning: apt-get could not install g++"; \
	  else echo "warning: no C++ compiler and not root: the native capture engine tests will skip"; fi; \
	fi
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: apt-get could not install chromium"; \
	  else echo "warning: chromium missing and not root: the Netron browser tests will skip"; fi; \
	fi

demo: setup
	# Record 20 training steps of the built-in character-level GPT (a minute or two on 2 cores).
	$(PY) -m recorder.examples.gpt --steps 20 --out $(DEMO_DIR) --overwrite
	$(VENV)/bin/tracefmt info $(DEMO_DIR)
	$(VENV)/bin/tracefmt ls $(DEMO_DIR)
	$(VENV)/bin/tracefmt show $(DEMO_DIR) --step 3 --phase forward --limit 25
	$(VENV)/bin/tracefmt show $(DEMO_DIR) --step 3 --sort time --limit 10
	$(VENV)/bin/tracefmt validate $(DEMO_DIR) --deep
	$(VENV)/bin/replayer export $(DEMO_DIR) --step 3 --phase forward -o $(DEMO_DIR)/step3-forward.onnx
	# Flight mode: every step captured, the last 8 kept in memory; an Inf put into a weight
	# before step 30 fires the trigger, and only steps 22..30 reach the disk.
	$(PY) -m recorder.examples.gpt --steps 32 --mode flight --inject-nan 30 --out $(FLIGHT_DIR) --overwrite
	$(VENV)/bin/tracefmt ls $(FLIGHT_DIR)
	$(VENV)/bin/replayer why $(FLIGHT_DIR) || test $$? = 1
	@echo "Next: open $(DEMO_DIR)/step3-forward.onnx in Netron, or read README.md's tour."

lint: setup
	$(VENV)/bin/ruff check tracefmt recorder replayer tests bench
	$(VENV)/bin/ruff format --check tracefmt recorder replayer tests bench

typecheck: setup
	$(VENV)/bin/mypy tracefmt replayer recorder

# The native capture engine is compiled on first use (about a minute on 2 cores); build it
# before the suite so no test pays for it inside its time limit.
engine: setup system-deps
	$(PY) -m recorder.engine || echo "warning: the native engine tests will skip"

pytest: setup system-deps engine
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

slow: setup system-deps
	$(VENV)/bin/pytest -q -m slow

bench: setup
	$(PY) bench/format_write.py
	$(PY) bench/format_read.py

golden: setup
	TRACEFMT_REGEN_GOLDEN=1 $(PY) -m tests.golden

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
