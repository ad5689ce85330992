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

# `make test-compat`: the model-layer tests again in a second venv holding the lowest transformers that
# pyproject.toml declares (`make test` runs the newest); it reuses the extension `make setup` built.
COMPAT_VENV ?= .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.petal-installed
TRANSFORMERS_LOWEST := $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
COMPAT_TESTS := tests/test_compat.py tests/test_patch_qformer.py tests/test_qformer_fast.py \
	tests/test_dma_layer.py tests/test_aim.py tests/test_patch_t5.py tests/test_gated_adapter.py \
	tests/test_param_counts.py tests/test_adapter_io.py tests/test_config.py tests/test_losses.py \
	tests/test_convergence.py

.PHONY: setup demo test test-compat lint bench report clean FORCE

setup: $(STAMP)

$(TORCH_WANTED): FORCE
	@mkdir -p $(VENV); echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

$(STAMP): $(SOURCES) $(TORCH_INSTALLED) $(TORCH_WANTED)
	@echo "== petal setup: a virtual environment in $(VENV), once (later runs skip this)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "== installing $(TORCH) and build tools (seconds from a local wheel cache; torch is a 200 MB-2 GB download otherwise)"
	$(PY) -m pip install -q "$(TORCH)" setuptools wheel ninja numpy
	@echo "== installing petal with its extras [$(EXTRAS)] and compiling its C++ kernels (petal_kernels/_ext)"
	@echo "   (about 4-5 min on 2 cores with MAX_JOBS=$${MAX_JOBS:-2}; pip prints nothing until it is done)"
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $(STAMP)
	@echo "== petal setup done"

demo: setup
	@echo '== petal demo: pre-trains the embedded base once per machine (about 40 s, then cached in'
	@echo '   $$PETAL_CACHE or ~/.cache/petal), then tunes it with PETAL (about 1-2 min on a laptop CPU)'
	$(PY) -m petal demo

test: setup
	$(PY) -m pytest -q

$(COMPAT_STAMP): pyproject.toml
	test -n "$(TRANSFORMERS_LOWEST)" || { echo "no transformers>=X, floor in pyproject.toml"; exit 1; }
	test -x $(COMPAT_PY) || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q --upgrade pip
	$(COMPAT_PY) -m pip install -q "$(TORCH)" setuptools wheel numpy
	PETAL_SKIP_EXT=1 $(COMPAT_PY) -m pip install -q --no-build-isolation -e ".[models]" pytest \
		"transformers==$(TRANSFORMERS_LOWEST)"
	touch $(COMPAT_STAMP)

test-compat: setup $(COMPAT_STAMP)
	$(COMPAT_PY) -c "import transformers; print('transformers', transformers.__version__)"
	$(COMPAT_PY) -m pytest -q $(COMPAT_TESTS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m pytest bench/ --benchmark-only --benchmark-json=.benchmarks/latest.json
	$(PY) bench/report.py .benchmarks/latest.json

clean:
	rm -rf build *.egg-info petal_kernels/*.so petal_kernels/_ext $(VENV) $(COMPAT_VENV)
