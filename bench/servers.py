"""Start and stop server processes on loopback ports: Hearth itself and peers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LLAMA_SERVER = ROOT / ".cache/peers/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_process(cmd: list[str], port: int, log: Path, timeout: float = 180) -> ServerProcess:
    """Run cmd and wait until GET /health answers 200 on the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
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
        str(LLAMA_SERVER),
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
