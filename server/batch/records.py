"""OpenAI's batch object, and where batches are kept: one JSON file per batch in the data
directory, rewritten whole (atomically) at every change, so a restart finds each batch as
it last was and its runner can go on (server/batch/runner.py)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# What a batch may run (OpenAI's list, less what Hearth has no model for).
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
COMPLETION_WINDOW_SECONDS = 24 * 3600
# Statuses from which a batch still moves on its own.
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass
class Batch:
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    model: str | None = None
    errors: list[dict[str, Any]] | None = None  # why the input file failed validation
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    # Creation order within a second (time.time_ns()), for listing newest first.
    created_ns: int = 0

    def mark(self, status: str) -> None:
        """Move to `status`, stamping its time as OpenAI's `<status>_at` field."""
        self.status = status
        stamp = f"{status}_at"
        if stamp in self.__dataclass_fields__:
            setattr(self, stamp, int(time.time()))

    def wire(self) -> dict[str, Any]:
        """The batch object as OpenAI's API returns it."""
        errors = None
        if self.errors:
            errors = {"object": "list", "data": self.errors}
        usage = None
        if self.usage:
            u = self.usage
            usage = {
                "input_tokens": u.get("input_tokens", 0),
                "input_tokens_details": {
                    "cached_tokens": u.get("cached_tokens", 0),
                    "cache_write_tokens": u.get("cache_write_tokens", 0),
                },
                "output_tokens": u.get("output_tokens", 0),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.get("input_tokens", 0) + u.get("output_tokens", 0),
            }
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            # A local server does not give up on a batch; the field says when OpenAI would.
            "expires_at": self.created_at + COMPLETION_WINDOW_SECONDS,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": None,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "usage": usage,
            "metadata": self.metadata,
        }


class BatchRecords:
    """Batches as JSON files in `folder`, with their work files beside them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, batch_id: str) -> Path:
        return self.folder / f"{batch_id}.json"

    def work_file(self, batch_id: str, kind: str) -> Path:
        """Where a batch's results are appended as its requests finish ("output" or
        "error"), before they become files of the Files API."""
        return self.folder / f"{batch_id}.{kind}.jsonl"

    def save(self, batch: Batch) -> None:
        path = self._path(batch.id)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(batch)))
        os.replace(temporary, path)

    def get(self, batch_id: str) -> Batch | None:
        if not _is_batch_id(batch_id):
            return None  # never a path outside the folder
        try:
            return Batch(**json.loads(self._path(batch_id).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def all(self) -> list[Batch]:
        """Every batch, newest first."""
        batches = []
        for path in self.folder.glob("batch_*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                batches.append(Batch(**json.loads(path.read_text())))
        return sorted(batches, key=lambda b: (b.created_ns, b.id), reverse=True)

    def remove_work_files(self, batch_id: str) -> None:
        for kind in ("output", "error"):
            self.work_file(batch_id, kind).unlink(missing_ok=True)


def _is_batch_id(batch_id: str) -> bool:
    return batch_id.startswith("batch_") and batch_id.replace("_", "").isalnum()
