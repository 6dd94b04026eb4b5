"""Start and stop server processes on loopback ports: Hearth itself and peers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.peer_build import llama_server_path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    # Fields every request to this server carries on top of the workload's (how it is told
    # to ignore EOS, for one).
    extra_body: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_process(
    cmd: list[str], port: int, log: Path, timeout: float = 180, ready_path: str = "/health"
) -> ServerProcess:
    """Run cmd and wait until GET ready_path answers 200 on the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}{ready_path}", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{cmd[0]} did not become healthy:\n{server.log_text()}")


def start_hearth(log_dir: Path, *args: str) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), *args]
    return start_process(cmd, port, log_dir / f"hearth-{port}.log")


def start_llama_server(
    log_dir: Path, model: Path, parallel: int, n_ctx: int, threads: int, *extra: str
) -> ServerProcess:
    """llama.cpp's llama-server on loopback with unified KV, like Hearth's context."""
    port = free_port()
    cmd = [
        str(llama_server_path()),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(parallel),
        "-c",
        str(n_ctx),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "--kv-unified",
        "--no-webui",
        *extra,
    ]
    return start_process(cmd, port, log_dir / f"llama-server-{port}.log")


def start_llama_server_embeddings(
    log_dir: Path, model: Path, parallel: int, n_ctx: int, n_batch: int, threads: int
) -> ServerProcess:
    return start_llama_server(
        log_dir,
        model,
        parallel,
        n_ctx,
        threads,
        "--embedding",
        "--pooling",
        "mean",
        "-b",
        str(n_batch),
        "-ub",
        str(n_batch),
    )


def eog_tokens(model: Path) -> list[int]:
    """The model's end-of-generation token ids, read from its vocabulary only."""
    import llama_cpp

    from server.engine.model import _ensure_backend

    _ensure_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    ptr = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    if not ptr:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {model}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(ptr)
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        return [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    finally:
        llama_cpp.llama_model_free(ptr)


def start_llama_cpp_python(
    log_dir: Path, model: Path, n_ctx: int, threads: int, alias: str = "default"
) -> ServerProcess:
    """llama-cpp-python's own server (`python -m llama_cpp.server`) on the same model file.

    It runs one request at a time (no parallel slots), has no /health and no `ignore_eos`,
    so readiness is GET /v1/models answering and EOS is suppressed with a -100 logit bias
    on every end-of-generation token, so it generates as many tokens as the others."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        # By default a new request interrupts the one being streamed; queue it instead,
        # as every other server here does.
        "--interrupt_requests",
        "False",
    ]
    server = start_process(
        cmd, port, log_dir / f"llama-cpp-python-{port}.log", ready_path="/v1/models"
    )
    server.extra_body = {"logit_bias": {str(t): -100.0 for t in eog_tokens(model)}}
    return server
