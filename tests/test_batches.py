"""OpenAI's Batch API through the official client against a real server: chat,
embeddings and Responses batches, answers as output and error files, validation that
fails a batch with line numbers, cancelling, and a batch that goes on after the server
was killed mid-way."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from server.batch.input_file import read_input_file
from tests.conftest import RunningServer, start_server, stop_server

FINISHED = ("completed", "failed", "cancelled", "expired")


def upload(client: openai.OpenAI, lines: list[Any], purpose: str = "batch") -> str:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    return client.files.create(file=("in.jsonl", io.BytesIO(text.encode())), purpose=purpose).id


def wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...] = FINISHED) -> Any:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def results(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    lines = [json.loads(x) for x in client.files.content(file_id).text.splitlines()]
    assert len({x["custom_id"] for x in lines}) == len(lines)  # each request answered once
    return {x["custom_id"]: x for x in lines}


def chat_line(custom_id: str, model: str, question: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 8,
            "temperature": 0,
            **body,
        },
    }


def test_a_chat_batch_answers_every_line_in_output_and_error_files(
    client: openai.OpenAI, model_id: str
) -> None:
    lines = [chat_line(f"q{i}", model_id, f"Name a colour, number {i}.") for i in range(5)]
    lines.append(chat_line("no-messages", model_id, "x") | {"body": {"model": model_id}})
    lines.append(chat_line("unknown-model", "no-such-model", "Hi"))
    input_id = upload(client, lines)
    batch = client.batches.create(
        input_file_id=input_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "docs"},
    )
    assert batch.object == "batch" and batch.id.startswith("batch_")
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"team": "docs"}
    batch = wait(client, batch.id)
    assert batch.status == "completed" and batch.completed_at and batch.in_progress_at
    assert batch.model == model_id
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (7, 5, 2)

    answered = results(client, batch.output_file_id)
    assert sorted(answered) == [f"q{i}" for i in range(5)]
    for line in answered.values():
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == model_id
        assert body["choices"][0]["message"]["content"]
    prompt_tokens = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in answered.values())
    output_tokens = sum(
        x["response"]["body"]["usage"]["completion_tokens"] for x in answered.values()
    )
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (prompt_tokens, output_tokens)

    failed = results(client, batch.error_file_id)
    assert failed["no-messages"]["response"]["status_code"] == 400
    assert failed["no-messages"]["response"]["body"]["error"]["param"] == "messages"
    assert failed["unknown-model"]["response"]["status_code"] == 404

    outputs = client.files.list(purpose="batch_output").data
    assert {batch.output_file_id, batch.error_file_id} <= {f.id for f in outputs}
    listed = client.batches.list(limit=100).data
    assert batch.id in [b.id for b in listed]


def test_an_embeddings_batch_gives_the_vectors_a_direct_call_gives(
    client: openai.OpenAI, server: RunningServer
) -> None:
    models = client.models.list().data
    embedding = next(m.id for m in models if m.model_extra["meta"]["kind"] == "embedding")
    texts = [["red apples"], ["a lighthouse at night", "tax forms"]]
    lines = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": embedding, "input": batch},
        }
        for i, batch in enumerate(texts)
    ]
    batch = client.batches.create(
        input_file_id=upload(client, lines), endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = wait(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 2
    answered = results(client, batch.output_file_id)
    for i, inputs in enumerate(texts):
        vectors = [d["embedding"] for d in answered[f"e{i}"]["response"]["body"]["data"]]
        direct = client.embeddings.create(model=embedding, input=inputs).data
        assert len(vectors) == len(direct)
        for got, want in zip(vectors, direct, strict=True):
            assert max(abs(a - b) for a, b in zip(got, want.embedding, strict=True)) < 1e-4


def test_a_responses_batch(client: openai.OpenAI, model_id: str) -> None:
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/responses",
        "body": {"model": model_id, "input": "Say hello.", "max_output_tokens": 8},
    }
    batch = client.batches.create(
        input_file_id=upload(client, [line]), endpoint="/v1/responses", completion_window="24h"
    )
    batch = wait(client, batch.id)
    body = results(client, batch.output_file_id)["r1"]["response"]["body"]
    assert body["object"] == "response" and body["output"][0]["type"] == "message"


def test_an_input_file_with_bad_lines_fails_the_batch_naming_each_line(
    client: openai.OpenAI, model_id: str
) -> None:
    lines: list[Any] = [
        chat_line("a", model_id, "Hi"),
        "not json",
        chat_line("a", model_id, "Again"),  # duplicate custom_id
        chat_line("b", model_id, "Hi") | {"url": "/v1/embeddings"},
        chat_line("c", model_id, "Hi", stream=True),
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
    ]
    batch = client.batches.create(
        input_file_id=upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    batch = wait(client, batch.id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.output_file_id is None and batch.request_counts.completed == 0
    found = {(e.line, e.code) for e in batch.errors.data}
    assert found == {
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_url"),
        (5, "invalid_value"),
        (6, "missing_required_parameter"),
    }


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"endpoint": "/v1/images/generations"}, 400, "endpoint"),
        ({"completion_window": "1h"}, 400, "completion_window"),
        ({"input_file_id": "file-nothere"}, 404, "input_file_id"),
        ({"input_file_id": None}, 400, "input_file_id"),
        ({"metadata": {"k" * 65: "v"}}, 400, None),
    ],
)
def test_bad_create_requests(
    server: RunningServer, client: openai.OpenAI, change: dict[str, Any], status: int, param: Any
) -> None:
    body = {
        "input_file_id": upload(client, ["{}"]),
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **change,
    }
    r = httpx.post(f"{server.base_url}/batches", json=body, timeout=30)
    assert r.status_code == status, r.text
    if param:
        assert r.json()["error"]["param"] == param


def test_a_file_not_uploaded_for_batches_is_refused(client: openai.OpenAI) -> None:
    file_id = upload(client, ["{}"], purpose="user_data")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "purpose 'batch'" in str(e.value)


def test_cancel_stops_a_batch_and_keeps_what_was_answered(
    client: openai.OpenAI, model_id: str
) -> None:
    lines = [
        chat_line(f"long{i}", model_id, "Tell a story.", max_tokens=48, ignore_eos=True)
        for i in range(40)
    ]
    batch = client.batches.create(
        input_file_id=upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait(client, batch.id, until=("in_progress",))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    batch = wait(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    counts = batch.request_counts
    assert counts.total == 40 and counts.completed < 40
    assert len(results(client, batch.output_file_id)) == counts.completed
    with pytest.raises(openai.APIStatusError) as e:
        client.batches.cancel(batch.id)
    assert e.value.status_code == 409
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_0123456789abcdef01234567")


def test_a_batch_goes_on_after_the_server_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir), "--parallel", "4", "--n-ctx", "4096")
    first = start_server(tmp_path, *args)
    try:
        client = first.client()
        model = first.model_id()
        lines = [
            chat_line(f"n{i}", model, f"Count to {i}.", max_tokens=24, ignore_eos=True)
            for i in range(16)
        ]
        batch = client.batches.create(
            input_file_id=upload(client, lines),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        deadline = time.monotonic() + 120
        while client.batches.retrieve(batch.id).request_counts.completed < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        first.proc.process.kill()  # no goodbye: the batch stops wherever it was
        first.proc.process.wait()
    done_before = len((data_dir / "batches" / f"{batch.id}.output.jsonl").read_text().splitlines())
    assert 3 <= done_before < 16
    second = start_server(tmp_path, *args)
    try:
        client = second.client()
        batch = wait(client, batch.id)
        assert batch.status == "completed"
        assert (batch.request_counts.completed, batch.request_counts.failed) == (16, 0)
        assert sorted(results(client, batch.output_file_id)) == sorted(f"n{i}" for i in range(16))
    finally:
        stop_server(second)


def test_input_file_rules() -> None:
    ok = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}})
    assert [line.custom_id for line in read_input_file(ok.encode(), "/v1/embeddings").lines] == [
        "x"
    ]
    assert read_input_file(b"\n\n", "/v1/embeddings").errors[0]["code"] == "empty_file"
    assert read_input_file(b"\xff\xfe", "/v1/embeddings").errors[0]["code"] == (
        "invalid_file_format"
    )
    many = "\n".join(ok.replace('"x"', f'"x{i}"') for i in range(300)).encode()
    bad = many.replace(b'"POST"', b'"GET"')
    assert len(read_input_file(bad, "/v1/embeddings").errors) == 100  # reported up to a limit


def test_batches_together_leave_half_the_sequences_to_interactive_requests(
    server: RunningServer, client: openai.OpenAI, model_id: str
) -> None:
    # The session server runs 8 sequences: all batches together may use 4 of them.
    ids = []
    for b in range(2):
        lines = [
            chat_line(f"b{b}-{i}", model_id, "Tell a story.", max_tokens=32, ignore_eos=True)
            for i in range(12)
        ]
        ids.append(
            client.batches.create(
                input_file_id=upload(client, lines),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id
        )
    most = 0
    answered = None
    while any(client.batches.retrieve(i).status not in FINISHED for i in ids):
        most = max(most, server.stats()["running"])
        if answered is None and most >= 4:
            # Asked while the batches run: it gets a sequence of its own.
            answered = chat_line("x", model_id, "Hello")["body"]
            answered = client.chat.completions.create(**answered)
    assert 4 <= most <= 5  # 5: the interactive one, if seen finishing
    assert answered is not None and answered.choices[0].message.content
    for i in ids:
        assert client.batches.retrieve(i).request_counts.completed == 12


def test_batches_past_four_wait_their_turn_and_can_be_cancelled_meanwhile(
    client: openai.OpenAI, model_id: str
) -> None:
    def create(n: int, tokens: int) -> str:
        lines = [
            chat_line(f"w{i}", model_id, "Tell a story.", max_tokens=tokens, ignore_eos=True)
            for i in range(n)
        ]
        return client.batches.create(
            input_file_id=upload(client, lines),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id

    running = [create(3, 32) for _ in range(4)]
    waiting = create(3, 4)
    assert client.batches.retrieve(waiting).status == "validating"  # not read yet
    cancelled = client.batches.cancel(waiting)
    assert cancelled.status == "cancelling"
    done = wait(client, waiting)
    assert done.status == "cancelled" and done.request_counts.completed == 0
    assert done.output_file_id is None
    for batch_id in running:
        assert wait(client, batch_id).request_counts.completed == 3
