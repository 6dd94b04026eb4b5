"""Route llama.cpp's own log lines into Python logging.

llama-cpp-python installs a callback that prints to stderr and, with verbose=False, drops
even ERROR lines. Hearth replaces it so that llama.cpp's errors reach the server log.
"""

from __future__ import annotations

import ctypes
import logging

import llama_cpp

logger = logging.getLogger("hearth.llama_cpp")

# enum ggml_log_level (ggml.h): NONE, DEBUG, INFO, WARN, ERROR, CONT (continues a line).
_LEVELS = {
    0: logging.CRITICAL,
    1: logging.DEBUG,
    2: logging.DEBUG,  # llama.cpp's INFO is load-time chatter; keep it out of the server log
    3: logging.WARNING,
    4: logging.ERROR,
}
_GGML_LOG_LEVEL_CONT = 5


class _LineAssembler:
    """llama.cpp writes a line in several calls; emit whole lines at the level they began."""

    def __init__(self) -> None:
        self.level = logging.DEBUG
        self.parts: list[str] = []

    def feed(self, level: int, text: bytes) -> None:
        if level != _GGML_LOG_LEVEL_CONT:
            if self.parts:
                self._flush()
            self.level = _LEVELS.get(level, logging.DEBUG)
        self.parts.append(text.decode("utf-8", errors="replace"))
        if self.parts[-1].endswith("\n"):
            self._flush()

    def _flush(self) -> None:
        line = "".join(self.parts).rstrip()
        self.parts.clear()
        if line:
            logger.log(self.level, "%s", line)


_assembler = _LineAssembler()


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    _assembler.feed(level, text)


def route_llama_logs_to_python() -> None:
    """Install the callback (process-wide; llama.cpp keeps one logger)."""
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
