# One command sets everything up and runs the demo; one sets up and runs the tests.
#   make demo    venv + install + synth -> preprocess -> info -> verify -> sample (plan) -> train on that plan (pack, train, report)
#   make test    venv + install + the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gnn-ooc-installed
DEMO   ?= demo

.PHONY: setup demo test typecheck lint bench-preprocess bench-sampler bench-features bench-train bench-integrity bench-memory bench-scale bench-cache bench-step gpu-wheels clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch pinned first so that no dependency range ever pulls a newer multi-GB build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/gnn-ooc synth $(DEMO)/raw --nodes 200000 --avg-degree 15 --feature-dim 64 --classes 8 --seed 0 --overwrite
	$(BIN)/gnn-ooc preprocess $(DEMO)/raw -o $(DEMO)/dataset --undirected --dedup --memory-budget 256M
	$(BIN)/gnn-ooc info $(DEMO)/dataset
	$(BIN)/gnn-ooc verify $(DEMO)/dataset
	$(BIN)/gnn-ooc sample $(DEMO)/dataset --fanouts 10,5 --batch-size 1024 --epochs 3 --seed 0 --name demo --force --no-progress
	rm -rf $(DEMO)/run
	$(BIN)/gnn-ooc train $(DEMO)/dataset --plan demo --epochs 3 --hidden 128 --memory-budget 256M --out $(DEMO)/run --no-progress
	$(BIN)/gnn-ooc info $(DEMO)/dataset
	@echo "demo dataset: $(abspath $(DEMO)/dataset)"
	@echo "demo run (metrics, checkpoints, summary.json): $(abspath $(DEMO)/run)"

test: setup
	$(BIN)/python -m pytest -q

# The wheels of the dependencies a GPU machine's image lacks (pydantic and what it needs), for
# Python 3.12 on x86_64 Linux, into .whl/ (ignored): carried there and installed with
# pip install --no-index --no-deps .whl/*.whl, since nothing can be downloaded on that machine.
GPU_WHEELS ?= pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

typecheck: setup
	$(BIN)/python -m mypy src graphstore sampler trainer tools

lint: setup
	$(BIN)/python -m ruff check src graphstore sampler trainer cuda tools tests

bench-preprocess: setup
	$(BIN)/python -m gnn_ooc.tools.bench.preprocess

bench-sampler: setup
	$(BIN)/python -m gnn_ooc.tools.bench.sampler

bench-features: setup
	$(BIN)/python -m gnn_ooc.tools.bench.features

bench-integrity: setup
	$(BIN)/python -m gnn_ooc.tools.bench.integrity

bench-memory: setup
	$(BIN)/python -m gnn_ooc.tools.bench.memory

bench-cache: setup
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m gnn_ooc.tools.bench.cache --plot docs/bench-cache.png

bench-scale: setup
	$(BIN)/python -m gnn_ooc.tools.bench.scale

bench-step: setup
	$(BIN)/python -m gnn_ooc.tools.bench.step

bench-train: setup
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m gnn_ooc.tools.bench.train --plot docs/bench-train.png

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache
