# Two entry points for a fresh machine: `make demo` and `make test` (both set everything up).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 installs in seconds on the project's machines; elsewhere any recent torch works:
#   make test TORCH="torch>=2.4"
TORCH ?= torch==2.13.0
EXTRAS ?= test,train,triton
STAMP := $(VENV)/.petal-installed
SOURCES := pyproject.toml setup.py MANIFEST.in petal_kernels/_build_spec.py $(wildcard build_backend/*.py) \
	$(shell find csrc -type f 2>/dev/null)
# The extension is built for the venv's torch: reinstalling or replacing torch there (its metadata file),
# or another TORCH, reinstalls petal. The build for each torch has its own directory (petal_kernels/_ext).
TORCH_INSTALLED := $(wildcard $(VENV)/lib/python*/site-packages/torch-*.dist-info/METADATA)
TORCH_WANTED := $(VENV)/.petal-torch-spec

.PHONY: setup demo test lint bench report clean FORCE

setup: $(STAMP)

$(TORCH_WANTED): FORCE
	@mkdir -p $(VENV); echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

$(STAMP): $(SOURCES) $(TORCH_INSTALLED) $(TORCH_WANTED)
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
	rm -rf build *.egg-info petal_kernels/*.so petal_kernels/_ext $(VENV)
