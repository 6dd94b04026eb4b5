"""A persistent llama.cpp CPU thread pool for the engine's context.

Without one, ggml creates and joins a throw-away pool on every llama_decode; llama-server
attaches a persistent pool, and so does Hearth. llama-cpp-python does not bind these
functions yet, so they are bound here from the libraries it ships.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from llama_cpp import llama_cpp as _bindings

logger = logging.getLogger("hearth.engine")

GGML_MAX_N_THREADS = 512


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def _library(stem: str) -> ctypes.CDLL | None:
    lib_dir = Path(_bindings._base_path)  # where llama-cpp-python loaded libllama from
    for candidate in sorted(lib_dir.glob(f"lib{stem}.*")):
        if candidate.suffix in (".so", ".dylib", ".dll"):
            return ctypes.CDLL(str(candidate))
    return None


class ThreadPool:
    """Owns a ggml thread pool attached to one context; close() before freeing the context."""

    def __init__(self, ctx_ptr: object, n_threads: int) -> None:
        self._ctx_ptr = ctx_ptr
        self._ptr: int | None = None
        base, cpu = _library("ggml-base"), _library("ggml-cpu")
        llama = _bindings._lib
        if base is None or cpu is None or not hasattr(llama, "llama_attach_threadpool"):
            logger.info("no persistent CPU thread pool (libraries not found)")
            return
        base.ggml_threadpool_params_init.argtypes = [
            ctypes.POINTER(_ThreadpoolParams),
            ctypes.c_int,
        ]
        cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
        cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
        params = _ThreadpoolParams()
        base.ggml_threadpool_params_init(ctypes.byref(params), n_threads)
        self._ptr = cpu.ggml_threadpool_new(ctypes.byref(params))
        if not self._ptr:
            self._ptr = None
            return
        self._cpu, self._llama = cpu, llama
        llama.llama_attach_threadpool(ctx_ptr, self._ptr, self._ptr)

    def close(self) -> None:
        if self._ptr is not None:
            self._llama.llama_detach_threadpool(self._ctx_ptr)
            self._cpu.ggml_threadpool_free(self._ptr)
            self._ptr = None
