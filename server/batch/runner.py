"""Runs batches: each request of the input file goes through the server's own app,
in-process (httpx's ASGI transport: the same validation, limits and engine as a client's
request), a few at a time so that people using the server interactively keep their share
of the engine's sequences. Results are appended to work files as they come, so a restart
goes on where it stopped; at the end they become the batch's output and error files
(Files API, purpose "batch_output"), as OpenAI's Batch API gives them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp

from retrieval.files import FileStore
from server.batch.input_file import BatchLine, read_input_file
from server.batch.records import UNFINISHED, Batch, BatchRecords
from server.ids import new_id, owns

logger = logging.getLogger("hearth")

# Batches read and run at once; the others wait their turn (status "validating"), so many
# large input files are not all held in memory together.
MAX_RUNNING_BATCHES = 4


class BatchRunner:
    def __init__(
        self, records: BatchRecords, files: FileStore, concurrency: int, api_key: str = ""
    ) -> None:
        self.records = records
        self.files = files
        self.concurrency = concurrency
        # Requests of all batches together in flight at once: many batches must not take
        # more of the engine than one.
        self._slots = asyncio.Semaphore(concurrency)
        self._turns = asyncio.Semaphore(MAX_RUNNING_BATCHES)
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._app: ASGIApp | None = None
        # Batches being run, as the runner sees them (newer than their files on disk).
        self._live: dict[str, Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, app: ASGIApp) -> None:
        """Serve through `app`, and go on with the batches a restart interrupted."""
        self._app = app
        for batch in self.records.all():
            if batch.status in UNFINISHED and owns(batch.id, "batch_"):
                self._launch(batch)

    async def stop(self) -> None:
        """Stop running; each batch stays as last saved, to go on at the next start."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def submit(self, batch: Batch) -> None:
        self.records.save(batch)
        self._launch(batch)

    def get(self, batch_id: str) -> Batch | None:
        return self._live.get(batch_id) or self.records.get(batch_id)

    def all(self) -> list[Batch]:
        return [self._live.get(b.id, b) for b in self.records.all()]

    def cancel(self, batch: Batch) -> Batch:
        """Start no more of its requests; those running finish, then it is cancelled."""
        live = self._live.get(batch.id)
        if live is None:  # not running here (a restart will pick it up): mark it only
            batch.mark("cancelling")
            self.records.save(batch)
            return batch
        live.mark("cancelling")
        self.records.save(live)
        return live

    def _launch(self, batch: Batch) -> None:
        self._live[batch.id] = batch
        task = asyncio.get_running_loop().create_task(self._run(batch), name=f"batch {batch.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: Batch) -> None:
        async with self._turns:
            await self._run_now(batch)

    async def _run_now(self, batch: Batch) -> None:
        try:
            if batch.status == "cancelling" and batch.in_progress_at is None:
                await self._finish(batch)  # cancelled while waiting its turn: nothing ran
                return
            lines = await self._read(batch)
            if lines is None:
                return
            if batch.status == "in_progress":
                await self._run_lines(batch, lines)
            await self._finish(batch)
        except Exception as e:  # never lost silently: the batch says it failed, and why
            logger.exception("batch %s failed", batch.id)
            batch.errors = [{"code": "internal_error", "message": str(e), "param": None}]
            batch.mark("failed")
            self.records.save(batch)
        finally:
            self._live.pop(batch.id, None)

    async def _read(self, batch: Batch) -> list[BatchLine] | None:
        """The input file's requests (None: the batch failed validation)."""
        data = await asyncio.to_thread(self._input_bytes, batch.input_file_id)
        # Up to 50,000 lines of JSON: parsed off the event loop.
        parsed = await asyncio.to_thread(read_input_file, data or b"", batch.endpoint)
        if data is None:
            message = f"The input file {batch.input_file_id} is gone."
            errors = [{"code": "file_not_found", "message": message, "param": None}]
        else:
            errors = parsed.errors
        if errors:
            if batch.status != "validating":  # it passed once: deleted since
                logger.warning("batch %s: %s", batch.id, errors[0]["message"])
            batch.errors = [{"line": None, **e} for e in errors]
            batch.mark("failed")
            self.records.save(batch)
            return None
        batch.total, batch.model = len(parsed.lines), parsed.model
        if batch.status == "validating":  # else cancelled meanwhile, or going on after a restart
            batch.mark("in_progress")
        self.records.save(batch)
        return parsed.lines

    def _input_bytes(self, file_id: str) -> bytes | None:
        if self.files.get(file_id) is None:
            return None
        source = self.files.blobs.open(file_id)
        try:
            return source.read()
        finally:
            source.close()

    async def _run_lines(self, batch: Batch, lines: list[BatchLine]) -> None:
        done = await asyncio.to_thread(self._tally, batch)
        todo = iter([line for line in lines if line.custom_id not in done])
        transport = httpx.ASGITransport(app=self._app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=self._headers, timeout=None
        ) as client:

            async def worker() -> None:
                # One shared iterator: each request is taken by exactly one worker.
                for line in todo:
                    async with self._slots:
                        if batch.status != "in_progress":
                            return  # cancelled: start nothing more
                        ok, result, usage = await self._one(client, batch.endpoint, line)
                    self._append(batch, "output" if ok else "error", result)
                    if ok:
                        batch.completed += 1
                    else:
                        batch.failed += 1
                    for key, value in usage.items():
                        batch.usage[key] = batch.usage.get(key, 0) + value
                    self.records.save(batch)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _one(
        self, client: httpx.AsyncClient, endpoint: str, line: BatchLine
    ) -> tuple[bool, dict[str, Any], dict[str, int]]:
        result: dict[str, Any] = {"id": new_id("batch_req_"), "custom_id": line.custom_id}
        try:
            answer = await client.post(endpoint, json=line.body)
            body = answer.json()
        except Exception as e:  # the request's own failure, not the batch's
            logger.warning("batch request %s failed: %r", line.custom_id, e)
            error = {"code": "internal_error", "message": f"The request failed: {e}"}
            return False, {**result, "response": None, "error": error}, {}
        request_id = answer.headers.get("x-request-id") or new_id("req_")
        response = {"status_code": answer.status_code, "request_id": request_id, "body": body}
        ok = answer.status_code < 400
        return ok, {**result, "response": response, "error": None}, _usage(body) if ok else {}

    def _append(self, batch: Batch, kind: str, result: dict[str, Any]) -> None:
        with self.records.work_file(batch.id, kind).open("a", encoding="utf-8") as out:
            out.write(json.dumps(result, ensure_ascii=False) + "\n")

    def _tally(self, batch: Batch) -> set[str]:
        """The custom_ids already answered (from the work files), with the batch's counts
        and usage recounted from them: what a restart found done."""
        done: set[str] = set()
        batch.completed = batch.failed = 0
        batch.usage = {}
        for kind in ("output", "error"):
            for result in _results(self.records.work_file(batch.id, kind)):
                done.add(result["custom_id"])
                if kind == "error":
                    batch.failed += 1
                    continue
                batch.completed += 1
                body = (result.get("response") or {}).get("body") or {}
                for key, value in _usage(body).items():
                    batch.usage[key] = batch.usage.get(key, 0) + value
        return done

    async def _finish(self, batch: Batch) -> None:
        cancelled = batch.status == "cancelling"
        batch.mark("finalizing")
        self.records.save(batch)
        for kind in ("output", "error"):
            path = self.records.work_file(batch.id, kind)
            if path.exists() and path.stat().st_size:
                stored = await asyncio.to_thread(self._store, path, f"{batch.id}_{kind}.jsonl")
                setattr(batch, f"{kind}_file_id", stored)
        batch.mark("cancelled" if cancelled else "completed")
        self.records.save(batch)
        self.records.remove_work_files(batch.id)

    def _store(self, path: Path, filename: str) -> str:
        with path.open("rb") as source:
            return self.files.add(source, filename, "batch_output").id


def _results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        # A line half-written when the process died is not a result: it runs again.
        with contextlib.suppress(ValueError):
            result = json.loads(raw)
            if isinstance(result, dict) and isinstance(result.get("custom_id"), str):
                out.append(result)
    return out


def _usage(body: Any) -> dict[str, int]:
    """Tokens of one answer, whichever API gave it (chat and completions: prompt_ and
    completion_tokens; Responses: input_ and output_tokens; embeddings: prompt_tokens)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return {}
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    counts = {
        "input_tokens": usage.get("prompt_tokens", usage.get("input_tokens", 0)),
        "output_tokens": usage.get("completion_tokens", usage.get("output_tokens", 0)),
        "cached_tokens": details.get("cached_tokens", 0) if isinstance(details, dict) else 0,
        "cache_write_tokens": (
            details.get("cache_write_tokens", 0) if isinstance(details, dict) else 0
        ),
    }
    return {k: v for k, v in counts.items() if isinstance(v, int)}
