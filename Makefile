# colo — `make run` (set up + plan the bundled newsroom) and `make test` (set up + lint + types + tests).
# Works from a fresh clone: creates .venv when missing. torch comes as the pinned build in constraints.txt
# (a local CPU wheel on CI machines) so no install ever pulls a CUDA build here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
COLO   := $(VENV)/bin/colo

.PHONY: run test lint typecheck pytest bench schema clean gpu-test gpu-smoke gpu-bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true

$(VENV)/.stamp-run: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -c constraints.txt -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import colo" && touch $@

$(VENV)/.stamp-dev: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -c constraints.txt -e '.[dev,profile]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import colo, pytest, mypy, torch, transformers" && touch $@ $(VENV)/.stamp-run

run: $(VENV)/.stamp-run
	$(COLO) plan examples/newsroom/colo.yaml --out out/mps_allocation_config.json
	@echo
	@echo "colo is installed in $(VENV): run it as $(COLO), or 'source $(VENV)/bin/activate' and then 'colo'."
	@echo "The example's agents need torch: $(VENV)/bin/pip install -c constraints.txt -e '.[profile]'  (README.md)"

test: $(VENV)/.stamp-dev lint typecheck pytest

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check src tests

typecheck: $(VENV)/.stamp-dev
	$(VENV)/bin/mypy --strict src

pytest: $(VENV)/.stamp-dev
	$(PY) -m pytest -q

bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/plan_scale.py

schema: $(VENV)/.stamp-run
	$(COLO) schema > docs/colo.schema.json

# On a machine with a GPU, MPS and torch (docs/testing.md); colo need not be installed there: the scripts set
# PYTHONPATH=src. gpu-test: every GPU test in one run (three lanes at once, <= 8 minutes), the per-file table
# last (logs under out/gpu-suite; $$OUT/gpu-suite.tar.gz when $$OUT is set). gpu-smoke: <= 2 minutes, the first
# thing to run after a GPU-facing change (daemon, newsroom, one request per agent, an MPS fault, colo down).
gpu-test:
	scripts/gpu_suite.sh

gpu-smoke:
	scripts/gpu_smoke.sh

# The H100 benchmark behind docs/benchmarks.md (about 7 minutes).
gpu-bench:
	scripts/gpu_bench.sh

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache
