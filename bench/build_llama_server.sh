#!/usr/bin/env bash
# Build llama.cpp's llama-server from the sources vendored in the llama-cpp-python sdist that
# Hearth pins (same llama.cpp as Hearth runs), once, under .cache/peers. ~6 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(.venv/bin/python -c "from importlib.metadata import version; print(version('llama-cpp-python'))")
dest=.cache/peers
src=$dest/llama_cpp_python-$version/vendor/llama.cpp
mkdir -p "$dest"
if [ ! -d "$src" ]; then
  .venv/bin/python -m pip download --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$dest"
  tar -xzf "$dest/llama_cpp_python-$version.tar.gz" -C "$dest"
fi
cmake -S "$src" -B "$src/build" -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release
cmake --build "$src/build" --target llama-server -j "$(nproc)"
