#!/usr/bin/env bash
# On a GPU machine without network (the device tool's H200): build llama.cpp with CUDA once
# (libllama for llama-cpp-python's bindings, and llama-server from the same source), then
# measure Hearth against llama-server with bench/gpu/measure.py. Everything it needs comes
# in .gpu/ (python -m bench.gpu.prepare, here). Results go to $OUT (or ./gpu-results).
#
#   bash bench/gpu/run.sh [build|measure|all|install-check|functional] [arguments...]
#
# install-check: build the CUDA wheel the way `make install` does with HEARTH_BACKEND=cuda
# (pip wheel on the sdist; no build isolation, the machine reaches no index), then start
# Hearth on it and print what /health says of the backend.
#
# functional: every feature with both models on the GPU (functional.py). What it needs is too
# big for one call (prepare.py --functional): carry .gpu/minilm.gguf.gz and
# .gpu/reference.json with the build call, .gpu/retrieval.tar.xz with this one; whatever
# came is unpacked into .gpubuild/ at the start of every step.
#
# The build is kept in .gpubuild/ (ignored by git, not carried: a carried folder is replaced
# on every call) and reused while the machine stays warm.
set -euo pipefail
cd "$(dirname "$0")/../.."
step=${1:-all}
shift || true
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
ARCH=${CUDA_ARCHITECTURES:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/wheels/*.whl
B=.gpubuild
if [ ! -d $B/src ]; then
  mkdir -p $B/src && tar xzf .gpu/src.tar.gz -C $B/src
fi
[ -f .gpu/minilm.gguf.gz ] && gunzip -c .gpu/minilm.gguf.gz > $B/minilm.gguf
[ -f .gpu/reference.json ] && cp .gpu/reference.json $B/reference.json
if [ -f .gpu/retrieval.tar.xz ]; then
  rm -rf $B/retrieval-site && mkdir -p $B/retrieval-site
  tar xJf .gpu/retrieval.tar.xz -C $B/retrieval-site
fi
export PYTHONPATH=/tmp/site:$PWD/$B/src
export LLAMA_CPP_LIB_PATH=$PWD/$B/build/bin
t_start=$(date +%s)

if [ "$step" = build ] || [ "$step" = all ]; then
  if [ ! -x $B/build/bin/llama-server ]; then
    t0=$(date +%s)
    cmake -S $B/src/llama.cpp -B $B/build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
      -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF > "$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; exit 1; }
    cmake --build $B/build -j "$(nproc)" --target llama llama-server > "$OUT/build.log" 2>&1 \
      || { tail -60 "$OUT/build.log"; exit 1; }
    echo "built llama.cpp for sm_$ARCH in $(( $(date +%s) - t0 )) s"
  fi
  ls $B/build/bin | head -20
fi

if [ "$step" = install-check ]; then
  t0=$(date +%s)
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH" python3 -m pip wheel -q \
    --no-deps --no-cache-dir --no-build-isolation -w /tmp/w .gpu/sdist/*.tar.gz \
    > "$OUT/wheel.log" 2>&1 || { tail -30 "$OUT/wheel.log"; exit 1; }
  echo "wheel built in $(( $(date +%s) - t0 )) s: $(ls /tmp/w)"
  python3 -m pip install -q --no-index --no-deps --target /tmp/wheel-site /tmp/w/*.whl
  [ -f $B/standin.gguf ] || gunzip -c .gpu/standin.gguf.gz > $B/standin.gguf
  printf '[embedding]\nenabled = false\n' > /tmp/check.toml
  env -u LLAMA_CPP_LIB_PATH PYTHONPATH=/tmp/wheel-site:/tmp/site python3 -m server.cli serve \
    --config /tmp/check.toml --data-dir /tmp/check --model $B/standin.gguf --port 8095 \
    > "$OUT/install-check.log" 2>&1 &
  for _ in $(seq 60); do curl -sf localhost:8095/health > /dev/null && break; sleep 1; done
  curl -s localhost:8095/health
  kill %1
fi

if [ "$step" = measure ] || [ "$step" = all ]; then
  [ -f $B/standin.gguf ] || gunzip -c .gpu/standin.gguf.gz > $B/standin.gguf
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv > "$OUT/gpu.txt"
  python3 -c "import llama_cpp, sys; print('llama_cpp', llama_cpp.__version__, sys.version)" \
    | tee "$OUT/versions.txt"
  # Two alternated rounds when the build left time for them in a 10-minute call, else one.
  rounds=2
  [ $(( $(date +%s) - t_start )) -gt 240 ] && rounds=1
  PYTHONUNBUFFERED=1 python3 -m bench.gpu.measure --model $B/standin.gguf \
    --llama-server $B/build/bin/llama-server --out "$OUT" --rounds $rounds "$@"
fi

if [ "$step" = functional ]; then
  [ -f $B/standin.gguf ] || gunzip -c .gpu/standin.gguf.gz > $B/standin.gguf
  PYTHONPATH=$PYTHONPATH:$PWD/$B/retrieval-site PYTHONUNBUFFERED=1 python3 -m bench.gpu.functional \
    --chat $B/standin.gguf --embedding $B/minilm.gguf --reference $B/reference.json \
    --out "$OUT" "$@"
fi
