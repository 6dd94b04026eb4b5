"""Fixtures that run the real thing: the real model, a real server on a loopback port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from server.launch import ROOT, ServerProcess, start_hearth

__all__ = ["ROOT", "RunningServer", "hearth_cli", "start_server", "stop_server"]


def hearth_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `hearth` command (from this checkout) and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@dataclass
class RunningServer:
    proc: ServerProcess
    api_key: str = "unused"

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0)

    def stats(self) -> dict[str, float]:
        return httpx.get(f"{self.url}/stats").json()

    def model_id(self) -> str:
        return self.client().models.list().data[0].id


def start_server(tmp: Path, *args: str, api_key: str | None = None) -> RunningServer:
    extra = ["--api-key", api_key] if api_key else []
    return RunningServer(start_hearth(tmp, *args, *extra), api_key or "unused")


def stop_server(server: RunningServer) -> None:
    server.proc.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default model, 8 parallel sequences, 2048 tokens per request."""
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
