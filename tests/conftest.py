"""Fixtures that run the real thing: the real model, a real server on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    api_key: str = "unused"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, **kwargs)  # type: ignore[arg-type]

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)

    def stats(self) -> dict[str, float]:
        return httpx.get(f"{self.url}/stats").json()

    def model_id(self) -> str:
        return self.client().models.list().data[0].id

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(tmp: Path, *args: str, api_key: str | None = None) -> RunningServer:
    port = free_port()
    log = tmp / f"server-{port}.log"
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), *args]
    if api_key:
        cmd += ["--api-key", api_key]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", proc, log, api_key or "unused")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{server.log_text()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default model, 8 parallel sequences, a context small enough to start fast."""
    s = start_server(
        tmp_path_factory.mktemp("server"),
        "--n-ctx",
        "8192",
        "--parallel",
        "8",
        "--context-length",
        "2048",
    )
    yield s
    stop_server(s)


@pytest.fixture(scope="session")
def client(server: RunningServer) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def model_id(server: RunningServer) -> str:
    return server.model_id()
