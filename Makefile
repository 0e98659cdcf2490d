# Two commands (see README):  `make demo`  sets up and runs the offline demo (build, then a small detector);  `make test`  runs the tests.
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
# The demo detector: trained on DEMO_TRAIN, tested on DEMO_TEST (photos it never saw), on the frozen pretrained backbone.
DEMO_TRAIN ?= examples/photos/demo-train.txt
DEMO_TEST ?= examples/photos/demo-heldout.txt
BACKBONE ?= examples/weights/mobilenet_v2_1.0_224
DET := $(OUT)/detector
TRAIN := $(BIN)/sefmodel train --config examples/demo-train.toml --data $(DET)/train --no-progress
EXPERT := $(TRAIN) --backbone mobilenet_v2 --backbone-id $(BACKBONE) --image-size 96 --feature-layer 2 \
	--feature-pool mean_std --input-filter highpass --spectrum --stage expert
demo: export HF_HUB_OFFLINE = 1
demo: setup
	$(BIN)/sefdata build $(PHOTOS) --recipe $(RECIPE) --out $(OUT)
	$(BIN)/sefdata preview $(OUT) --out $(OUT)/preview.png
	@echo "shards:  $(OUT)/shard-*.tar  (manifest: $(OUT)/manifest.json)"
	@echo "preview: $(OUT)/preview.png"
	@test -f $(BACKBONE)/model.safetensors || { echo "error: no pretrained backbone at $(BACKBONE) (config.json + model.safetensors; see examples/weights/README.md)" >&2; exit 2; }
	rm -rf $(DET)
	$(BIN)/sefdata build $(DEMO_TRAIN) --recipe manifests/recipes/demo-detector.toml --out $(DET)/train
	$(BIN)/sefdata build $(DEMO_TEST) --recipe manifests/recipes/demo-detector.toml --out $(DET)/test
	$(EXPERT) --domain recon --out $(DET)/recon
	$(EXPERT) --domain sr --out $(DET)/sr
	$(TRAIN) --stage fusion --fusion moe --experts $(DET)/recon $(DET)/sr --gate-hidden 32 --out $(DET)/sef
	$(BIN)/python examples/demo_bench.py $(DET)/test $(DET)/bench
	$(BIN)/sefmodel eval $(DET)/sef --bench $(DET)/bench --out $(DET)/eval --no-progress
	@cat $(DET)/eval/results.md
# the detector's golden set: held-out reals and fakes with its probabilities, re-scored by `sefmodel check`
	$(BIN)/sefmodel golden $(DET)/sef $(DET)/test --threads 1
	$(BIN)/sefmodel check $(DET)/sef --threads 1
	@echo "detector: $(DET)/sef/detector (golden set: golden/)  report: $(DET)/eval/results.md  plots: $(DET)/eval/plots/"
	@echo "try it in a browser: $(BIN)/sefmodel serve $(DET)/sef --report $(DET)/eval   (then open http://127.0.0.1:7860/)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/generation.py --repeats 9
