"""What llama.cpp runs on, as /health and the start-up line report it (issue 16)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.llama.backend import BackendInfo, Device, backend_info, layers_offloaded
from tests.conftest import RunningServer


def test_health_reports_the_backend(server: RunningServer) -> None:
    body = httpx.get(f"{server.url}/health").json()
    backend = body["backend"]
    assert backend["backend"] in {"cpu", "cuda", "metal", "vulkan", "hip", "sycl"}
    assert any(d["kind"] == "cpu" for d in backend["devices"])
    assert backend["layers"] == 31  # SmolLM2-135M: 30 blocks and the output layer
    if backend["backend"] == "cpu":
        assert backend["layers_on_gpu"] == 0 and "warning" not in backend
    # all-MiniLM-L6-v2: 6 blocks and the pooling/output layer, offloaded like the chat model
    embedding = backend["embedding"]
    assert embedding["layers"] == 7
    assert embedding["layers_on_gpu"] == (0 if backend["backend"] == "cpu" else 7)


def test_a_gpu_build_without_a_gpu_says_so(tmp_path: Path) -> None:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    fake = tmp_path / "lib"
    fake.mkdir()
    (fake / "libggml-cuda.so").write_bytes(b"")  # built with CUDA ...
    for f in lib.glob("libggml*.so*"):  # ... and the real ggml, which sees no GPU here
        if "cuda" not in f.name:
            shutil.copy(f, fake / f.name)
    info = backend_info(fake)
    if info.gpus:  # this machine has one: nothing to warn about
        return
    assert info.backend == "cuda" and info.warning and "sees no GPU" in info.warning


def test_layers_on_the_gpu() -> None:
    gpu = BackendInfo("cuda", [Device("CUDA0", "NVIDIA H200", "gpu")])
    cpu = BackendInfo("cpu", [Device("CPU", "x86", "cpu")])
    assert layers_offloaded(30, -1, gpu) == 31
    assert layers_offloaded(30, 10, gpu) == 10
    assert layers_offloaded(30, 99, gpu) == 31
    assert layers_offloaded(30, -1, cpu) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux-only measure")
def test_the_cpp_runtime_is_shared_before_llama_cpp_loads() -> None:
    """server/__init__.py puts libstdc++ in the global symbol scope (a CUDA llama.cpp
    crashed beside numpy and LanceDB without it, on the H200 machine): `operator delete`
    then resolves from the process itself, which it does not after llama_cpp alone."""
    probe = "import ctypes, server; print(hasattr(ctypes.CDLL(None), '_ZdlPv'))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert r.stdout.strip() == "True", r.stderr
