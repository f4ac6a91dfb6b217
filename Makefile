# kdlight — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdlight-installed
DOCS_STAMP := $(VENV)/.kdlight-docs-installed
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist
EXPERIMENT ?= fmnist_mlp_kd

.DEFAULT_GOAL := help
.PHONY: help install data train test test-all lint format tensorboard bench bench-peers docs docs-serve clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install kdlight with its dev, sweep, export and loggers extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,sweep,export,loggers,timm,shards]'
	touch $(STAMP)

data: ## get Fashion-MNIST (Debian's dataset-fashion-mnist when root; else torchvision downloads it)
	@if [ -d $(FMNIST_DEBIAN) ]; then echo "Fashion-MNIST: $(FMNIST_DEBIAN)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null \
	  && echo "Fashion-MNIST installed in $(FMNIST_DEBIAN)"; \
	else echo "Fashion-MNIST not installed system-wide; torchvision will download it into data/"; fi

train: install data ## set up, then train the teacher (once) and distill the student: EXPERIMENT=fmnist_mlp_kd
	$(PY) -m kdlight.train +experiment=$(EXPERIMENT) $(ARGS)

test: install ## set up, then run the unit and smoke tests
	$(PY) -m pytest -m "not slow" -q -p no:cacheprovider

test-all: install data ## unit, smoke and slow (real-data) tests
	$(PY) -m pytest -q -p no:cacheprovider

lint: install ## ruff: lint and format check
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install ## ruff: fix and format
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

tensorboard: install ## open TensorBoard on every run under logs/
	$(VENV)/bin/tensorboard --logdir logs

bench: install data ## speed benchmarks (JSON on stdout; see benchmarks/)
	$(PY) benchmarks/bench_kd.py

bench-peers: install ## kdlight vs timm and torchdistill (own venv benchmarks/peers/.venv); writes docs/performance/peers.*
	bash benchmarks/peers/setup_venv.sh $(PY)
	$(PY) benchmarks/peers/bench_peers.py --output docs/performance/peers.json --page docs/performance/peers.md $(ARGS)

docs: $(DOCS_STAMP) ## build the docs site into site/ (mkdocs build --strict)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(DOCS_STAMP) ## serve the docs site with live reload on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

clean: ## remove logs, stores, caches (keeps .venv and data/)
	rm -rf logs store outputs multirun lightning_logs site .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
