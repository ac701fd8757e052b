# sharpkit developer and user entry points.
#   make demo   set up (first time) and run the main job: train two models, measure, interpolate, plot
#   make test   set up (first time) and run the test suite
#   make check  everything CI runs: lint, typecheck, docs, tests

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.sharpkit-installed
DEMO   ?= demo
JOBS   ?= 2

.PHONY: setup data demo test test-fast lint format typecheck docs docs-cli docs-api bench check clean

$(STAMP): pyproject.toml plugins/sharpkit-fisher-rao/pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision first, at the releases this project is tested with (a range in pyproject)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install -q -e ".[dev]" -e plugins/sharpkit-fisher-rao
	@$(MAKE) --no-print-directory data
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST from Debian's package where apt exists (CIFAR-10: see docs/installation.md).
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
	  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "warning: could not install dataset-fashion-mnist; use --download or --data-root"; \
	else \
	  echo "note: no apt-get here; sharpkit will use --data-root, \$$SHARPKIT_DATA or --download"; \
	fi

# The main job on the embedded defaults (about 35 s on 2 quiet CPU cores after set-up, plus a first-time calibration of its time prediction).
demo: $(STAMP)
	$(BIN)/sharpkit reproduce demo --out $(DEMO)

# One worker per core (TEST_WORKERS=1: one process); a test module stays on one worker, so
# its module-scoped fixtures (trained models, real data) are built once.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope -m "not slow and not distributed"

lint: $(STAMP)
	$(BIN)/ruff check src tests plugins bench docs/gen_api.py conftest.py
	$(BIN)/ruff format --check src tests plugins bench docs/gen_api.py conftest.py
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix src tests plugins bench docs/gen_api.py conftest.py
	$(BIN)/ruff format src tests plugins bench docs/gen_api.py conftest.py

typecheck: $(STAMP)
	$(BIN)/mypy

docs-cli: $(STAMP)
	$(BIN)/typer sharpkit.cli utils docs --name sharpkit --output docs/cli.md

docs-api: $(STAMP)
	$(PY) docs/gen_api.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/bench_curvature.py
	$(PY) bench/bench_training.py

check: lint typecheck docs test

clean:
	rm -rf site .pytest_cache .mypy_cache .ruff_cache $(DEMO)
