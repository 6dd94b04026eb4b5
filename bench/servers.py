"""Start and stop server processes on loopback ports: Hearth itself and peers."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.peer_build import llama_server_path
from server.launch import ROOT, ServerProcess, free_port, start_hearth, start_process
from server.model_files import resolve_chat_model
from server.settings import load_settings

# Hearth's own process helpers live in server/launch.py; bench modules take them from here.
__all__ = ["ROOT", "ServerProcess", "start_hearth", "start_process"]


def hearth_model_file() -> Path:
    """The GGUF a Hearth server started here loads (config, env, and the form of the
    packaged model `hearth models prepare` chose): peers must run on the very same file."""
    settings = load_settings()
    return resolve_chat_model(settings.model.path, settings.storage.resolved_data_dir())


def start_llama_server(
    log_dir: Path,
    model: Path,
    parallel: int,
    n_ctx: int,
    threads: int | None,
    *extra: str,
    binary: Path | None = None,
    timeout: float = 180,
) -> ServerProcess:
    """llama.cpp's llama-server on loopback with unified KV, like Hearth's context.
    threads None: llama-server's own choice (a GPU run); binary: another build than the
    one bench.peer_build makes here."""
    port = free_port()
    thread_args = ["-t", str(threads), "-tb", str(threads)] if threads is not None else []
    cmd = [
        str(binary or llama_server_path()),
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
        *thread_args,
        "--kv-unified",
        "--no-webui",
        *extra,
    ]
    return start_process(cmd, port, log_dir / f"llama-server-{port}.log", timeout=timeout)


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

    from server.llama.model import _ensure_backend

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
