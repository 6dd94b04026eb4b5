"""A batch's input file: OpenAI's JSONL, one request a line
(`{"custom_id": ..., "method": "POST", "url": <the batch's endpoint>, "body": {...}}`),
checked whole before anything runs. One bad line fails the batch, as on OpenAI, with every
problem found (up to a limit) and its line number."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# OpenAI's limits on an input file.
MAX_REQUESTS = 50_000
MAX_CUSTOM_ID_CHARS = 512
# Problems reported for a file that fails (the rest would say the same again).
MAX_ERRORS = 100


@dataclass(frozen=True)
class BatchLine:
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class InputFile:
    lines: list[BatchLine]
    errors: list[dict[str, Any]]

    @property
    def model(self) -> str | None:
        models = [line.body.get("model") for line in self.lines]
        return next((m for m in models if isinstance(m, str)), None)


def read_input_file(data: bytes, endpoint: str) -> InputFile:
    """The requests in `data`, or the problems that fail the batch."""
    errors: list[dict[str, Any]] = []
    lines: list[BatchLine] = []
    seen: set[str] = set()

    def problem(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": line})

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        problem("invalid_file_format", "The input file is not UTF-8 text.", None)
        return InputFile([], errors)
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            request = json.loads(raw)
        except ValueError:
            problem("invalid_json_line", "This line is not valid JSON.", number)
            continue
        if not isinstance(request, dict):
            problem("invalid_json_line", "Each line must be a JSON object.", number)
            continue
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            problem("missing_required_parameter", "A line needs a custom_id.", number, "custom_id")
        elif len(custom_id) > MAX_CUSTOM_ID_CHARS:
            message = f"custom_id is longer than {MAX_CUSTOM_ID_CHARS} characters."
            problem("invalid_value", message, number, "custom_id")
        elif custom_id in seen:
            message = f"The custom_id {custom_id!r} is used by an earlier line."
            problem("duplicate_custom_id", message, number, "custom_id")
        if request.get("method") != "POST":
            problem("invalid_value", "The method must be POST.", number, "method")
        if request.get("url") != endpoint:
            message = f"The url must be {endpoint}, the batch's endpoint."
            problem("invalid_url", message, number, "url")
        body = request.get("body")
        if not isinstance(body, dict):
            problem("invalid_value", "The body must be a JSON object.", number, "body")
        elif body.get("stream"):
            message = "Streaming is not available in a batch."
            problem("invalid_value", message, number, "body.stream")
        if len(errors) == 0 and isinstance(custom_id, str) and isinstance(body, dict):
            seen.add(custom_id)
            lines.append(BatchLine(custom_id, body))
        elif isinstance(custom_id, str):
            seen.add(custom_id)
    if not lines and not errors:
        problem("empty_file", "The input file holds no requests.", None)
    if len(lines) > MAX_REQUESTS:
        message = f"The input file holds {len(lines)} requests; at most {MAX_REQUESTS} are run."
        problem("too_many_requests", message, None)
    return InputFile(lines if not errors else [], errors)
