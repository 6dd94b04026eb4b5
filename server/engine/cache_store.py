"""Persist the prefix cache across restarts, so a restarted server does not start cold.

On shutdown the most recently used cache entries are written with llama.cpp's
`llama_state_seq_save_file` (KV cells plus the token ids they hold), newest first, until a
size limit; on start-up they are loaded back and put into the radix tree again (prefixes two
files share are deduplicated there, as any concurrent computation would be). A manifest
names the model file the KV belongs to; files made for another model are ignored.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from server.engine.scheduler import Scheduler
from server.llama.context import LlamaContext

logger = logging.getLogger("hearth.cache")

MANIFEST = "manifest.json"


def model_identity(ctx: LlamaContext) -> dict[str, object]:
    info = ctx.model.info
    return {"file": info.path.name, "size": info.size_bytes, "params": info.n_params}


def save(ctx: LlamaContext, scheduler: Scheduler, directory: Path, max_bytes: int) -> int:
    """Write entries, most recently used first, within max_bytes; returns how many.

    Written into a fresh directory beside the old one, which it then replaces: a crash
    while saving leaves the previous cache whole. Only the user may read the files (the KV
    of their prompts)."""
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=parent))  # mode 0700
    try:
        written, total = _write_entries(ctx, scheduler, staging, max_bytes)
        # Oldest first in the manifest: loading in that order leaves the newest most recent.
        manifest = {"model": model_identity(ctx), "files": list(reversed(written))}
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
    logger.info(
        "saved %d prefix cache entries (%.1f MiB) to %s", len(written), total / 2**20, directory
    )
    return len(written)


def _write_entries(
    ctx: LlamaContext, scheduler: Scheduler, directory: Path, max_bytes: int
) -> tuple[list[str], int]:
    written: list[str] = []
    total = 0
    for seq_id, tokens in scheduler.cache_entries():
        path = directory / f"{len(written):04d}.kv"
        size = ctx.save_sequence(path, seq_id, tokens)
        if size == 0 or total + size > max_bytes:
            path.unlink(missing_ok=True)
            break
        total += size
        written.append(path.name)
    return written, total


def load(ctx: LlamaContext, scheduler: Scheduler, directory: Path) -> int:
    """Restore saved entries into an idle engine; returns how many."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return 0
    if manifest.get("model") != model_identity(ctx):
        logger.info("prefix cache in %s was saved for another model; not loading it", directory)
        return 0
    loaded = 0
    for name in manifest.get("files", []):
        if not scheduler.free_sequence_ids:
            break
        path = directory / name
        if scheduler.restore_entry(lambda seq_id, p=path: ctx.load_sequence(p, seq_id)):
            loaded += 1
        else:
            logger.warning("could not load prefix cache file %s", name)
    logger.info(
        "restored %d prefix cache entries (%d cells) from %s",
        loaded,
        scheduler.cache.cells,
        directory,
    )
    return loaded
