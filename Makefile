# Two entry points for a fresh machine: `make demo` and `make test` (both set everything up).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 installs in seconds on the project's machines; elsewhere any recent torch works:
#   make test TORCH="torch>=2.4"
TORCH ?= torch==2.13.0
EXTRAS ?= test,train,triton
STAMP := $(VENV)/.petal-installed
SOURCES := pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)

.PHONY: setup demo test lint bench report clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" setuptools wheel ninja numpy
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: setup
	$(PY) -m petal demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m pytest bench/ --benchmark-only --benchmark-json=.benchmarks/latest.json
	$(PY) bench/report.py .benchmarks/latest.json

clean:
	rm -rf build *.egg-info petal_kernels/*.so $(VENV)
