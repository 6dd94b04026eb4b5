"""`hearth quantize IN.gguf OUT.gguf --type q4_0`: llama.cpp's quantizer, with progress."""

from __future__ import annotations

import ctypes
import re
import threading
from pathlib import Path

import llama_cpp
from tqdm import tqdm

# User-facing names → llama.cpp file types (the common ones; `hearth quantize --help`).
TYPES = {
    "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "q5_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q5_k_s": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_S,
    "q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q4_k_s": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "q3_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "q2_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K,
}
# llama.cpp logs one line per tensor: "[  12/ 272] blk.0.attn_q.weight - ..."
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


class QuantizeError(RuntimeError):
    pass


def quantize(
    source: Path, dest: Path, type_name: str, threads: int = 0, show_progress: bool = True
) -> Path:
    ftype = TYPES.get(type_name.lower())
    if ftype is None:
        raise QuantizeError(f"unknown type {type_name!r}; choose one of {', '.join(TYPES)}")
    if not source.is_file():
        raise QuantizeError(f"model file not found: {source}")
    if dest.resolve() == source.resolve():
        raise QuantizeError("the output must be a different file from the input")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    # Re-quantizing an already quantized file loses some quality, but is what people with
    # only a quantized GGUF can do; llama.cpp refuses it unless asked.
    params.allow_requantize = True

    bar = tqdm(
        total=None, unit="tensor", desc=f"quantize to {type_name}", disable=not show_progress
    )
    previous = _capture_progress(bar)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            llama_cpp.llama_model_quantize(
                str(source).encode(), str(dest).encode(), ctypes.byref(params)
            )
        )
    )
    try:
        worker.start()
        worker.join()
    finally:
        bar.close()
        _restore(previous)
    if not result or result[0] != 0:
        dest.unlink(missing_ok=True)
        raise QuantizeError(
            f"llama.cpp could not quantize {source.name} to {type_name} "
            "(unsupported for this model's tensors?); see the log above"
        )
    return dest


_keep_alive: list[object] = []


def _capture_progress(bar: tqdm) -> tuple[object, object]:
    """Route llama.cpp's per-tensor log lines into the progress bar while quantizing."""
    old_cb = llama_cpp.llama_log_callback()
    old_data = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(old_cb), ctypes.byref(old_data))

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        match = _TENSOR_LINE.search(text.decode("utf-8", errors="replace"))
        if match:
            bar.total = int(match.group(2))
            bar.n = int(match.group(1))
            bar.refresh()
        elif level >= 4 and level != 5:  # errors still reach the terminal
            bar.write(text.decode("utf-8", errors="replace").rstrip())

    _keep_alive.append(callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    return old_cb, old_data


def _restore(previous: tuple[object, object]) -> None:
    callback, data = previous
    llama_cpp.llama_log_set(callback, data)
