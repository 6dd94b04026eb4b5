"""Parsing in a child process, with a time and a memory limit: a file that makes a parser
slow, greedy or crash costs that file, never the server.

The parsers (pypdf, Markdown, text) run in one long-lived child process, a fresh Python
(`python -m retrieval.parse_process`) that talks over two pipes: not forked (the server
has threads) and not through multiprocessing's spawn (which re-imports the server's own
main module). The server waits for each answer at most `timeout` seconds; past it the
child is killed and the next parse starts a new one. A child that dies mid-parse (a crash,
the memory limit) takes only that file with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from retrieval.parsing import ParseError, Section, parse

logger = logging.getLogger("hearth.parsing")

# Address space of the child: a crafted document that makes pypdf allocate without end
# gets a MemoryError (a failed file), not the machine's memory.
MEMORY_LIMIT = 4 << 30


class ParseTimeout(ParseError):
    pass


class ParserCrashed(ParseError):
    pass


class ParserProcess:
    """Thread-safe; one parse at a time."""

    def __init__(
        self,
        timeout: float,
        memory_limit: int = MEMORY_LIMIT,
        module: str = "retrieval.parse_process",
    ) -> None:
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.module = module  # what the child runs (tests give one that misbehaves)
        self._process: subprocess.Popen[bytes] | None = None
        self._requests: Connection | None = None
        self._answers: Connection | None = None
        self._lock = threading.Lock()

    def parse(self, path: Path, filename: str) -> list[Section]:
        with self._lock:
            requests, answers = self._pipes()
            try:
                requests.send((str(path), filename))
                if not answers.poll(self.timeout):
                    self._stop()
                    raise ParseTimeout(
                        f"parsing took longer than {self.timeout:g} s (retrieval.parse_timeout)"
                    )
                kind, value = answers.recv()
            except (EOFError, OSError):
                code = self._exit_code()
                self._stop()
                raise ParserCrashed(f"the parser crashed on this file (exit code {code})") from None
            if kind == "error":
                raise ParseError(value)
            return value

    def _exit_code(self) -> int | None:
        """How the child ended (it closed its pipe as it died; it may not be reaped yet)."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def _pipes(self) -> tuple[Connection, Connection]:
        if self._process is None or self._process.poll() is not None:
            self._stop()
            request_r, request_w = os.pipe()
            answer_r, answer_w = os.pipe()
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    self.module,
                    str(request_r),
                    str(answer_w),
                    str(self.memory_limit),
                ],
                pass_fds=(request_r, answer_w),
                stdin=subprocess.DEVNULL,
            )
            os.close(request_r)
            os.close(answer_w)
            self._requests = Connection(request_w, readable=False)
            self._answers = Connection(answer_r, writable=False)
        assert self._requests is not None and self._answers is not None
        return self._requests, self._answers

    def _stop(self) -> None:
        for conn in (self._requests, self._answers):
            if conn is not None:
                conn.close()
        self._requests = self._answers = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        """Stop the child, even in the middle of a parse (which then fails as crashed)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()  # not under the lock: a parse may hold it for its whole limit
        with self._lock:
            self._stop()


def serve(requests: Connection, answers: Connection, memory_limit: int) -> None:
    """The child: parse what is asked until the pipe closes."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    while True:
        try:
            path, filename = requests.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        try:
            answer: tuple[str, object] = ("ok", parse(Path(path), filename))
        except ParseError as e:
            answer = ("error", str(e))
        except MemoryError:
            answer = ("error", "parsing it needed more memory than the parser may use")
        except Exception as e:
            answer = ("error", f"{type(e).__name__}: {e}")
        answers.send(answer)


def child_pipes() -> tuple[Connection, Connection, int]:
    """The child's ends, from its command line: requests, answers, memory limit."""
    request_fd, answer_fd, memory_limit = (int(a) for a in sys.argv[1:4])
    return (
        Connection(request_fd, writable=False),
        Connection(answer_fd, readable=False),
        memory_limit,
    )


if __name__ == "__main__":
    serve(*child_pipes())
