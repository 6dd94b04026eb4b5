"""OpenAI's Conversations API with the official client against a real server: the
conversation and its items, and responses that read and extend a conversation (streamed or
not); the store's bounds without a server."""

from __future__ import annotations

import httpx
import openai
import pytest

from server.chat.conversation_store import Conversation, ConversationStore
from server.errors import InvalidRequest
from tests.conftest import RunningServer

FIRST = [
    {"type": "message", "role": "user", "content": "My name is Ada and I keep bees."},
    {"type": "message", "role": "assistant", "content": "Hello Ada!"},
]


def test_a_conversation_and_its_items(client: openai.OpenAI) -> None:
    made = client.conversations.create(items=FIRST, metadata={"topic": "bees"})  # type: ignore[arg-type]
    assert made.id.startswith("conv_") and made.object == "conversation"
    assert client.conversations.retrieve(made.id).metadata == {"topic": "bees"}
    assert client.conversations.update(made.id, metadata={"topic": "honey"}).metadata == {
        "topic": "honey"
    }
    items = client.conversations.items.list(made.id, order="asc").data
    assert [i.role for i in items] == ["user", "assistant"]  # type: ignore[union-attr]
    assert items[0].content[0].type == "input_text"  # type: ignore[union-attr]
    assert items[0].content[0].text == FIRST[0]["content"]  # type: ignore[union-attr]
    assert items[1].content[0].type == "output_text"  # type: ignore[union-attr]
    assert items[1].content[0].text == FIRST[1]["content"]  # type: ignore[union-attr]
    added = client.conversations.items.create(
        made.id,
        items=[
            {"type": "message", "role": "user", "content": "What do bees make?"},
            {"type": "message", "role": "user", "content": "And wax?"},
        ],
    )
    assert len(added.data) == 2 and added.first_id == added.data[0].id
    newest = client.conversations.items.list(made.id, limit=2)  # newest first by default
    assert [i.content[0].text for i in newest.data] == ["And wax?", "What do bees make?"]  # type: ignore[union-attr]
    assert newest.has_more
    rest = client.conversations.items.list(made.id, limit=10, after=newest.data[-1].id)
    assert [i.id for i in rest.data] == [i.id for i in reversed(items)]
    one = client.conversations.items.retrieve(added.data[0].id, conversation_id=made.id)
    assert one.id == added.data[0].id
    after_delete = client.conversations.items.delete(added.data[0].id, conversation_id=made.id)
    assert after_delete.id == made.id
    assert len(client.conversations.items.list(made.id).data) == 3
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(added.data[0].id, conversation_id=made.id)

    with pytest.raises(openai.BadRequestError) as bad:
        client.conversations.create(items=[{"type": "message", "role": "robot", "content": "x"}])  # type: ignore[list-item]
    assert bad.value.body["param"] == "items.[0].role"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(made.id, items=[])
    deleted = client.conversations.delete(made.id)
    assert deleted.deleted and deleted.id == made.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete(made.id)


def test_responses_read_and_extend_their_conversation(
    client: openai.OpenAI, model_id: str, server: RunningServer
) -> None:
    conversation = client.conversations.create(items=FIRST)  # type: ignore[arg-type]
    question = "What do I keep?"
    first = client.responses.create(
        model=model_id, conversation=conversation.id, input=question, max_output_tokens=8
    )
    assert first.conversation is not None and first.conversation.id == conversation.id
    # The conversation's items were the history: the same prompt as sending them inline.
    inline = client.responses.create(
        model=model_id,
        input=[*FIRST, {"type": "message", "role": "user", "content": question}],  # type: ignore[list-item]
        max_output_tokens=8,
        store=False,
    )
    assert first.usage and inline.usage and first.usage.input_tokens == inline.usage.input_tokens
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert len(items) == 4 and items[2].content[0].text == question  # type: ignore[union-attr]
    assert items[3].id == first.output[0].id and items[3].role == "assistant"  # type: ignore[union-attr]

    # Streamed, and named as {"id": ...}: the turn joins the conversation too.
    events = client.responses.create(
        model=model_id,
        conversation={"id": conversation.id},
        input="Say it again.",
        max_output_tokens=8,
        stream=True,
    )
    ends = ("response.completed", "response.incomplete")
    (final,) = [e.response for e in events if e.type in ends]  # type: ignore[union-attr]
    assert final.conversation is not None and final.conversation.id == conversation.id
    assert final.usage and final.usage.input_tokens > first.usage.input_tokens
    assert len(client.conversations.items.list(conversation.id).data) == 6

    with pytest.raises(openai.BadRequestError) as both:
        client.responses.create(
            model=model_id,
            conversation=conversation.id,
            previous_response_id=first.id,
            input="x",
        )
    assert both.value.body["param"] == "conversation"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=model_id, conversation="conv_nope", input="x")
    assert len(client.conversations.items.list(conversation.id).data) == 6  # nothing added
    # Plain HTTP: the error shape, and a response that names none says so.
    r = httpx.post(
        f"{server.base_url}/responses",
        json={"model": model_id, "input": "Hi", "max_output_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["conversation"] is None


def test_the_store_is_bounded() -> None:
    store = ConversationStore(capacity=2, max_bytes=10_000, max_conversation_bytes=200)
    a, b, c = (Conversation(f"conv_{k}", {}) for k in "abc")
    for conversation in (a, b, c):
        store.add(conversation)
    assert store.get("conv_a") is None and store.get("conv_b") is b  # least recently used out
    item = {"id": "msg_1", "type": "message", "role": "user", "content": "x" * 100}
    store.extend(b, [item])
    with pytest.raises(InvalidRequest):  # past the conversation's own bound: nothing added
        store.extend(b, [{**item, "id": "msg_2"}])
    assert [i["id"] for i in b.items] == ["msg_1"]
    store.extend(b, [{**item, "id": "msg_3"}], force=True)  # a response's output
    assert store.bytes == b.size + c.size
    assert store.remove_item(b, "msg_1") and not store.remove_item(b, "msg_1")
    assert store.bytes == b.size + c.size
    big = ConversationStore(capacity=10, max_bytes=250, max_conversation_bytes=200)
    x, y = Conversation("conv_x", {}, [item]), Conversation("conv_y", {}, [item])
    big.add(x)
    big.add(y)  # two past the total: the older goes
    assert big.get("conv_x") is None and big.get("conv_y") is y and big.bytes == y.size
