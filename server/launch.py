"""Starting `hearth serve` (and other servers) as child processes on free loopback ports,
waiting until they answer: what `hearth bench`, `make bench|soak|chaos|fuzz` and the tests
share. Nothing here is used by a running server."""

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

# The checkout (or installed tree) `python -m server.cli` runs from.
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
