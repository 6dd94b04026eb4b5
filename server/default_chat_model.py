"""The packaged chat model in the fastest form that loses nothing, measured on this machine.

SmolLM2-135M ships as Q4_1. On CPUs where llama.cpp's Q4_1 kernels are slow, the same
weights re-quantized to Q8_0 (8 bits hold every 4-bit value closely) prefill about twice as
fast with the same perplexity. Whether that holds here is measured, not assumed:
`hearth models prepare` writes the Q8_0 file once, times both files on a small serving mix
(several prompts prefilled together, then batched decode steps), compares their perplexity
on a fixed English text, and records the choice in <data_dir>/models/default-chat.json. The
server then loads the chosen file when no model is configured; the original stays
available by its id (`--model SmolLM2-135M-Instruct.Q4_1`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from server.llama.context import ContextParams, LlamaContext, TokenBatch
from server.llama.model import LlamaModel

logger = logging.getLogger(__name__)

CHOICE_FILE = "default-chat.json"
FAST_TYPE = "q8_0"
# Q8_0 must be at least this much faster on the serving mix (best of alternated rounds:
# this kind of machine drifts by 10% between minutes) ...
MIN_SPEEDUP = 1.10
# ... and its perplexity within this ratio of the original's (re-quantizing can only add
# error; within 1% is measurement noise on a text this short).
MAX_PERPLEXITY_RATIO = 1.01
ROUNDS = 2
MIX_SEQUENCES, MIX_PROMPT_TOKENS, MIX_DECODE_STEPS = 8, 96, 16


@dataclass(frozen=True)
class Measurement:
    mix_seconds: float  # best of ROUNDS
    perplexity: float


@dataclass(frozen=True)
class Choice:
    chosen: str  # file name: the original, or the re-quantized file beside the choice file
    source: str
    source_size: int
    llama_cpp_python: str
    original: Measurement | None = None
    fast: Measurement | None = None

    @property
    def speedup(self) -> float | None:
        if self.original is None or self.fast is None:
            return None
        return self.original.mix_seconds / self.fast.mix_seconds


def fast_file_name(source: Path) -> str:
    """SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct.Q8_0.gguf"""
    stem = source.name.removesuffix(".gguf")
    base = stem.rsplit(".", 1)[0] if "." in stem else stem
    return f"{base}.{FAST_TYPE.upper()}.gguf"


def read_choice(models_dir: Path, source: Path) -> Choice | None:
    """The recorded choice, if it was made for this source file and this llama.cpp."""
    try:
        raw = json.loads((models_dir / CHOICE_FILE).read_text())
        choice = Choice(
            **{
                **raw,
                "original": Measurement(**raw["original"]) if raw.get("original") else None,
                "fast": Measurement(**raw["fast"]) if raw.get("fast") else None,
            }
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if (
        choice.source != source.name
        or choice.source_size != source.stat().st_size
        or choice.llama_cpp_python != _llama_cpp_version()
    ):
        return None
    return choice


def chosen_file(models_dir: Path, source: Path) -> Path:
    """The file to serve for the packaged model: the recorded choice when it still applies
    and its file is there, else the original."""
    choice = read_choice(models_dir, source)
    if choice is None or choice.chosen == source.name:
        return source
    path = models_dir / choice.chosen
    return path if path.is_file() else source


def prepare(models_dir: Path, source: Path, threads: int = 0) -> Choice:
    """Make and record the choice once; later calls return it."""
    existing = read_choice(models_dir, source)
    if existing is not None and (
        existing.chosen == source.name or (models_dir / existing.chosen).is_file()
    ):
        return existing
    from server.llama.quantize import quantize

    models_dir.mkdir(parents=True, exist_ok=True)
    fast_path = models_dir / fast_file_name(source)
    partial = fast_path.with_suffix(".partial")
    quantize(source, partial, FAST_TYPE, threads, show_progress=False)
    partial.replace(fast_path)
    threads = threads or os.cpu_count() or 1
    text = calibration_text()
    original, fast = _measure(source, fast_path, text, threads)
    chosen = fast_path if worth_switching(original, fast) else source
    if chosen == source:
        fast_path.unlink(missing_ok=True)  # not worth its disk space
    choice = Choice(
        chosen=chosen.name,
        source=source.name,
        source_size=source.stat().st_size,
        llama_cpp_python=_llama_cpp_version(),
        original=original,
        fast=fast,
    )
    tmp = models_dir / f"{CHOICE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(choice), indent=1))
    tmp.replace(models_dir / CHOICE_FILE)
    return choice


def worth_switching(original: Measurement, fast: Measurement) -> bool:
    """Clearly faster and as good."""
    faster = original.mix_seconds >= fast.mix_seconds * MIN_SPEEDUP
    lossless = fast.perplexity <= original.perplexity * MAX_PERPLEXITY_RATIO
    return faster and lossless


def _measure(
    original_path: Path, fast_path: Path, text: str, threads: int
) -> tuple[Measurement, Measurement]:
    from server.perplexity import perplexity

    best = {original_path: float("inf"), fast_path: float("inf")}
    for _ in range(ROUNDS):  # alternated, so a slow minute hurts both
        for path in best:
            best[path] = min(best[path], serving_mix_seconds(path, text, threads))
    ppl = {path: perplexity(path, text, 256, threads, max_chunks=4)[0] for path in best}
    return (
        Measurement(best[original_path], ppl[original_path]),
        Measurement(best[fast_path], ppl[fast_path]),
    )


def serving_mix_seconds(path: Path, text: str, threads: int) -> float:
    """Seconds to prefill MIX_SEQUENCES prompts together, then MIX_DECODE_STEPS batched
    decode steps: the shape of the server's work, prompt work dominating as it does."""
    model = LlamaModel(path)
    n_prompt = MIX_SEQUENCES * MIX_PROMPT_TOKENS
    ctx = LlamaContext(
        model,
        ContextParams(
            n_ctx=n_prompt + MIX_SEQUENCES * MIX_DECODE_STEPS,
            n_seq_max=MIX_SEQUENCES,
            n_batch=512,
            n_ubatch=512,
            n_threads=threads,
        ),
    )
    batch = TokenBatch(512)
    try:
        tokens = model.tokenize(text, add_special=False)[:n_prompt]
        if len(tokens) < n_prompt:
            raise ValueError("the calibration text is too short")
        pending = [
            (s, pos, tokens[s * MIX_PROMPT_TOKENS + pos])
            for s in range(MIX_SEQUENCES)
            for pos in range(MIX_PROMPT_TOKENS)
        ]
        started = time.perf_counter()
        while pending:
            part, pending = pending[:512], pending[512:]
            batch.clear()
            for s, pos, token in part:
                batch.add(token, pos, s, pos == MIX_PROMPT_TOKENS - 1)
            if ctx.decode(batch) != 0:
                raise RuntimeError("llama_decode failed")
        for step in range(MIX_DECODE_STEPS):
            batch.clear()
            for s in range(MIX_SEQUENCES):
                batch.add(tokens[step], MIX_PROMPT_TOKENS + step, s, True)
            if ctx.decode(batch) != 0:
                raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started
    finally:
        batch.close()
        ctx.close()
        model.close()


def calibration_text() -> str:
    """English prose that ships with Python: its language reference (pydoc_data), the same
    text every time."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # stripped-down Pythons; the choice then rests on a shorter text
        return " ".join((__doc__ or "") for _ in range(8))
    keys = ("assignment", "for", "function", "class", "exceptions", "import", "if", "while")
    return "\n\n".join(topics[k] for k in keys if k in topics)


def _llama_cpp_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return ""
