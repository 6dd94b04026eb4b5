"""The prefix cache's third tier: disk, across restarts (restart -> disk -> RAM -> cells).

At shutdown every cache entry, those in the KV cells and those in host RAM, is written
newest first until a size limit: one file each, the token ids it covers and its KV state
(llama_state_seq_get_data's bytes). At start-up the files go back into the host-RAM tier
(nothing enters the cells until a request matches them), or straight into cells when the
host tier is off. A manifest names the model file and the llama-cpp-python version the
state belongs to; files made for another are ignored.

The files are written into a fresh directory that then replaces the old one (a crash
while saving leaves the previous cache whole), readable only by the user (the KV of their
prompts).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from server.engine.scheduler import Scheduler
from server.engine.stats import DiskStats
from server.llama.context import LlamaContext

logger = logging.getLogger("hearth.cache")

MANIFEST = "manifest.json"


def model_identity(ctx: LlamaContext) -> dict[str, object]:
    info = ctx.model.info
    return {
        "file": info.path.name,
        "size": info.size_bytes,
        "params": info.n_params,
        "llama_cpp_python": version("llama-cpp-python"),
    }


def _write(path: Path, tokens: list[int], data: bytes | bytearray) -> int:
    header = np.array([len(tokens)], dtype="<u4").tobytes()
    body = np.asarray(tokens, dtype="<i4").tobytes()
    path.write_bytes(header + body + data)
    return len(header) + len(body) + len(data)


def _read(path: Path) -> tuple[list[int], bytes] | None:
    raw = path.read_bytes()
    if len(raw) < 4:
        return None
    n = int(np.frombuffer(raw[:4], dtype="<u4")[0])
    if len(raw) < 4 + 4 * n:
        return None
    tokens = np.frombuffer(raw[4 : 4 + 4 * n], dtype="<i4").tolist()
    return tokens, raw[4 + 4 * n :]


def save(
    ctx: LlamaContext, scheduler: Scheduler, directory: Path, max_bytes: int, stats: DiskStats
) -> int:
    """Write entries, most recently used first, within max_bytes; returns how many."""
    started = time.perf_counter()
    cache = scheduler.cache
    # Newest first: resident entries (in use most recently), then RAM, newest first.
    # (tokens, data or None, seq id to save from, first position the data covers)
    entries: list[tuple[list[int], bytes | bytearray | None, int | None, int]] = [
        (tokens, None, seq_id, 0) for seq_id, tokens in scheduler.cache_entries()
    ]
    entries += [(e.tokens, e.data, None, e.start) for e in reversed(cache.stored_entries())]
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=parent))  # mode 0700
    try:
        written: list[str] = []
        starts: list[int] = []
        total = 0
        for tokens, data, seq_id, start in entries:
            if data is None and seq_id is not None:
                data = ctx.save_state(seq_id)
            if not data or total + len(data) > max_bytes:
                continue
            name = f"{len(written):04d}.kv"
            total += _write(staging / name, tokens, data)
            written.append(name)
            starts.append(start)
        # Oldest first in the manifest: loading in that order leaves the newest most recent.
        # An entry starting past position 0 holds only the end of its path (host_kv.py).
        manifest = {
            "model": model_identity(ctx),
            "files": list(reversed(written)),
            "starts": list(reversed(starts)),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest))
        for path in staging.iterdir():
            path.chmod(0o600)
        old = parent / f".{directory.name}-old"
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        staging.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stats.saved_entries, stats.saved_bytes = len(written), total
    stats.save_seconds = time.perf_counter() - started
    logger.info(
        "saved %d prefix cache entries (%.1f MiB) to %s", len(written), total / 2**20, directory
    )
    return len(written)


def load(ctx: LlamaContext, scheduler: Scheduler, directory: Path, stats: DiskStats) -> int:
    """Restore saved entries into an idle engine (RAM tier, else cells); how many."""
    started = time.perf_counter()
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return 0
    if manifest.get("model") != model_identity(ctx):
        logger.info("prefix cache in %s was saved for another model; not loading it", directory)
        return 0
    cache = scheduler.cache
    loaded = 0
    files = manifest.get("files", [])
    starts = manifest.get("starts") or [0] * len(files)
    if len(starts) != len(files) or not all(isinstance(s, int) and s >= 0 for s in starts):
        logger.warning("prefix cache manifest in %s is damaged; not loading it", directory)
        return 0
    # Whole paths first, then entries holding the end of a path, shallowest first: each
    # finds the head of its path in the tree (the order within each kind is kept).
    order = sorted(range(len(files)), key=lambda i: (starts[i] > 0, starts[i]))
    for i in order:
        name, start = files[i], starts[i]
        if start > 0 and cache.host.budget <= 0:
            continue  # only the RAM tier can take the end of a path
        try:
            read = _read(directory / name)
        except OSError:
            read = None
        if read is None or not all(0 <= t < ctx.n_vocab for t in read[0]):
            logger.warning("could not load prefix cache file %s", name)
            continue
        tokens, data = read
        if start >= len(tokens):
            logger.warning("could not load prefix cache file %s", name)
            continue
        if cache.host.budget > 0:
            ok = cache.adopt_stored(tokens, data, start)
        elif not scheduler.free_sequence_ids:
            break
        else:
            ok = scheduler.restore_entry(
                lambda seq_id, t=tokens, d=data: t if ctx.load_state(seq_id, d) else None
            )
            if not ok:
                logger.warning("could not load prefix cache file %s", name)
        if ok:
            loaded += 1
            stats.loaded_bytes += len(data)
    stats.loaded_entries = loaded
    stats.load_seconds = time.perf_counter() - started
    logger.info(
        "restored %d prefix cache entries (%d cells, %.1f MiB in RAM) from %s",
        loaded,
        cache.cells,
        cache.host.bytes / 2**20,
        directory,
    )
    return loaded
