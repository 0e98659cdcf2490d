# Two commands (see README):  `make demo`  sets up and runs the offline demo build;  `make test`  runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned to the release the suite is tested on; pip picks the CPU or CUDA build for the host.
TORCH := torch==2.14.1 torchvision==0.29.1

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: setup demo test lint bench
setup: $(BIN)/.installed

# Override any of these: make demo PHOTOS=/my/photos OUT=out/mine
PHOTOS ?= examples/photos
RECIPE ?= manifests/recipes/demo.toml
OUT ?= out/demo
demo: setup
	$(BIN)/sefdata build $(PHOTOS) --recipe $(RECIPE) --out $(OUT)
	$(BIN)/sefdata preview $(OUT) --out $(OUT)/preview.png
	@echo "shards:  $(OUT)/shard-*.tar  (manifest: $(OUT)/manifest.json)"
	@echo "preview: $(OUT)/preview.png"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/generation.py
