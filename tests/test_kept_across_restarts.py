"""What clients keep on the server outlives a restart, as it does on OpenAI: a stored
response (and previous_response_id from it), a stored chat completion, a conversation
and its items; a background response the restart interrupted says it failed. With
storage.keep_across_restarts off, nothing is written."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.conftest import start_server, stop_server


def test_stored_objects_outlive_a_killed_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir), "--parallel", "2", "--n-ctx", "4096")
    first = start_server(tmp_path, *args)
    try:
        client = first.client()
        model = first.model_id()
        response = client.responses.create(
            model=model, input="My name is Ada.", max_output_tokens=8, temperature=0
        )
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            store=True,
            metadata={"topic": "greeting"},
        )
        conversation = client.conversations.create(
            items=[{"type": "message", "role": "user", "content": "I keep bees."}],
            metadata={"who": "ada"},
        )
        client.conversations.items.create(
            conversation.id,
            items=[{"type": "message", "role": "user", "content": "In Lyon."}],
        )
        client.conversations.update(conversation.id, metadata={"who": "ada", "where": "lyon"})
        gone = client.conversations.create(metadata={"x": "y"})
        client.conversations.delete(gone.id)
        running = client.responses.create(
            model=model,
            input="Tell a long story.",
            background=True,
            max_output_tokens=2000,
            extra_body={"ignore_eos": True},
        )
        while client.responses.retrieve(running.id).status == "queued":
            time.sleep(0.05)
    finally:
        first.proc.process.kill()  # no chance to write anything more
        first.proc.process.wait()

    second = start_server(tmp_path, *args)
    try:
        client = second.client()
        kept = client.responses.retrieve(response.id)
        assert kept.output_text == response.output_text
        assert [i.type for i in client.responses.input_items.list(response.id)] == ["message"]
        follow_up = client.responses.create(
            model=model, previous_response_id=response.id, input="What is my name?"
        )
        assert follow_up.usage.input_tokens > response.usage.input_tokens
        stored = client.chat.completions.retrieve(completion.id)
        assert stored.choices[0].message.content == completion.choices[0].message.content
        assert stored.metadata == {"topic": "greeting"}
        again = client.conversations.retrieve(conversation.id)
        assert again.metadata == {"who": "ada", "where": "lyon"}
        texts = [i.content[0].text for i in client.conversations.items.list(conversation.id)]
        assert texts == ["I keep bees.", "In Lyon."] or texts == ["In Lyon.", "I keep bees."]
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(gone.id)
        interrupted = client.responses.retrieve(running.id)
        assert interrupted.status == "failed" and interrupted.error is not None
    finally:
        stop_server(second)


def test_nothing_is_written_when_turned_off(tmp_path: Path) -> None:
    config = tmp_path / "hearth.toml"
    config.write_text("[storage]\nkeep_across_restarts = false\n")
    data_dir = tmp_path / "data"
    args = ("--config", str(config), "--data-dir", str(data_dir), "--parallel", "2")
    server = start_server(tmp_path, *args)
    try:
        client = server.client()
        response = client.responses.create(model=server.model_id(), input="Hi", max_output_tokens=4)
    finally:
        stop_server(server)
    assert not (data_dir / "kept.db").exists()
    server = start_server(tmp_path, *args)
    try:
        with pytest.raises(openai.NotFoundError):
            server.client().responses.retrieve(response.id)
    finally:
        stop_server(server)
