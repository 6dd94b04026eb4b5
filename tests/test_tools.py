"""Tool calling: tools / tool_choice / parallel_tool_calls through the official client and
LangChain, streamed and not, with tool results fed back."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from server.chat.tools import AnswerStream, parse_answer
from tests.conftest import RunningServer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
            },
            "required": ["a", "b"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def chat(client: openai.OpenAI, model_id: str, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", QUESTION)
    kwargs.setdefault("max_tokens", 200)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=model_id, **kwargs)


def assert_weather_call(call: Any) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")


def test_required_tool_call(client: openai.OpenAI, model_id: str) -> None:
    r = chat(client, model_id, tools=[WEATHER], tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert_weather_call(call)
    assert len({c.id for c in choice.message.tool_calls}) == len(choice.message.tool_calls)


def test_named_tool_choice_and_no_parallel_calls(client: openai.OpenAI, model_id: str) -> None:
    r = chat(
        client,
        model_id,
        messages=[{"role": "user", "content": "Add 2 and 3, and also 4 and 5."}],
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=False,
        temperature=1.0,
        seed=5,
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "add"
    args = json.loads(call.function.arguments)
    assert isinstance(args["a"], int) and isinstance(args["b"], int)
    assert -1000 <= args["a"] <= 1000 and -1000 <= args["b"] <= 1000


def test_auto_gives_a_call_or_an_answer(client: openai.OpenAI, model_id: str) -> None:
    for messages in (QUESTION, [{"role": "user", "content": "Say hello to me."}]):
        choice = chat(client, model_id, messages=messages, tools=[WEATHER, ADD]).choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
        else:
            # A plain answer (possibly cut by max_tokens), not the JSON the grammar made
            # the model write.
            assert choice.finish_reason in ("stop", "length")
            assert choice.message.content and not choice.message.content.startswith("{")


def test_tool_choice_none_is_a_plain_answer(client: openai.OpenAI, model_id: str) -> None:
    choice = chat(client, model_id, tools=[WEATHER], tool_choice="none", max_tokens=30).choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content and not choice.message.content.lstrip().startswith('{"')


def test_streamed_tool_call(client: openai.OpenAI, model_id: str) -> None:
    stream = chat(client, model_id, tools=[WEATHER], tool_choice="required", stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and calls
    for entry in calls.values():
        assert entry["name"] == "get_weather" and entry["id"].startswith("call_")
        assert set(json.loads(entry["arguments"])) == {"city", "unit"}


def test_tool_results_go_back_in(client: openai.OpenAI, model_id: str) -> None:
    first = chat(client, model_id, tools=[WEATHER], tool_choice="required").choices[0].message
    messages: list[dict[str, Any]] = [*QUESTION, first.model_dump(exclude_none=True)]
    for call in first.tool_calls or []:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"})
    for stream in (False, True):
        r = chat(client, model_id, messages=messages, tools=[WEATHER], stream=stream)
        if stream:
            finishes = [c.choices[0].finish_reason for c in r if c.choices]
            assert finishes[-1] in ("stop", "tool_calls", "length")
        else:
            assert r.choices[0].finish_reason in ("stop", "tool_calls", "length")


def test_langchain_bind_tools(server: RunningServer, model_id: str) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    llm = ChatOpenAI(
        base_url=server.base_url, api_key="unused", model=model_id, temperature=0, max_tokens=100
    )
    message = llm.bind_tools([multiply], tool_choice="multiply").invoke("What is 6 times 7?")
    assert message.tool_calls
    call = message.tool_calls[0]
    assert call["name"] == "multiply" and set(call["args"]) == {"a", "b"}
    assert all(isinstance(v, int) for v in call["args"].values())


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools.[0].type"),
        ({"tools": [{"type": "function"}]}, "tools.[0].function"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, None),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice.function.name",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_bad_tool_requests(
    server: RunningServer, model_id: str, extra: dict[str, Any], param: str | None
) -> None:
    body = {"model": model_id, "messages": QUESTION, **extra}
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == (param or "tools.[0].function.name")
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("piece", [1, 2, 3, 7])
def test_answer_stream_decodes_the_response_string_as_it_arrives(piece: int) -> None:
    answer = 'Hi "there"\\ — naïve 😀 \t end'
    raw = '{ "response": ' + json.dumps(answer) + " }"
    stream = AnswerStream()
    sent = "".join(stream.feed(raw[i : i + piece]) for i in range(0, len(raw), piece))
    rest, calls = stream.finish()
    assert calls is None and sent + rest == answer
    assert sent == answer  # all of it streamed before the end


def test_an_answer_cut_by_max_tokens_is_still_just_the_answer() -> None:
    content, calls = parse_answer('{"response": "Hello, I am a long answer th')
    assert content == "Hello, I am a long answer th" and calls is None


def test_non_ascii_arguments_come_back_as_written() -> None:
    raw = '{"tool_calls": [{"name": "add", "arguments": {"who": "你好 こんにちは"}}]}'
    _, calls = parse_answer(raw)
    assert calls is not None
    assert calls[0]["function"]["arguments"] == '{"who": "你好 こんにちは"}'  # not \\u escapes


def test_answer_stream_holds_tool_calls_to_the_end() -> None:
    raw = '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}'
    stream = AnswerStream()
    assert all(stream.feed(raw[i : i + 4]) == "" for i in range(0, len(raw), 4))
    rest, calls = stream.finish()
    assert rest == "" and calls is not None
    assert calls[0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"tool_calls": [{"na', None),  # no call named yet
        ('{"tool_calls": [{"name": "add", "arguments": ', [("add", "")]),
        ('{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b', [("add", '{"a": 1, "b')]),
        (  # the first call whole, the second cut
            '{"tool_calls": [{"name": "add", "arguments": {"a": 1}}, {"name": "mul", '
            '"arguments": {"x": "}, {\\"name',
            [("add", '{"a": 1}'), ("mul", '{"x": "}, {\\"name')],
        ),
        ('{"tool_calls": [{"name": "add", "arguments": {"a": 1} ', [("add", '{"a": 1}')]),
    ],
)
def test_tool_calls_cut_by_max_tokens_come_back_as_calls(
    raw: str, expected: list[tuple[str, str]] | None
) -> None:
    content, calls = parse_answer(raw)
    assert not content  # never Hearth's own JSON format as text
    if expected is None:
        assert calls is None
    else:
        assert calls is not None
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == expected


def test_a_call_cut_by_max_tokens_says_length_in_every_api(
    client: openai.OpenAI, server: RunningServer, model_id: str
) -> None:
    # Greedy, so each limit cuts the same answer further along: before the call is named
    # (no call, no text), then inside its arguments (a call whose arguments are cut short,
    # as OpenAI returns it, with finish_reason "length", never "tool_calls").
    cut_inside_arguments = 0
    for limit in range(8, 40, 3):
        choice = chat(client, model_id, tools=[WEATHER], tool_choice="required", max_tokens=limit)
        assert choice.choices[0].finish_reason == "length"
        message = choice.choices[0].message
        assert not (message.content or "").strip()
        if message.tool_calls:
            (call,) = message.tool_calls
            assert call.function.name == "get_weather" and call.id.startswith("call_")
            try:
                json.loads(call.function.arguments)  # whole, the answer cut just after
            except json.JSONDecodeError:
                cut_inside_arguments += 1
                last_limit, arguments = limit, call.function.arguments
    assert cut_inside_arguments >= 3

    streamed = chat(
        client,
        model_id,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=last_limit,
        stream=True,
    )
    deltas, finishes = [], []
    for chunk in streamed:
        for c in chunk.choices:
            deltas += c.delta.tool_calls or []
            finishes.append(c.finish_reason)
    assert [f for f in finishes if f] == ["length"]
    assert [d.function.arguments for d in deltas] == [arguments]

    body = {
        "model": model_id,
        "input": QUESTION[0]["content"],
        "tools": [{"type": "function", **WEATHER["function"]}],
        "tool_choice": "required",
        "max_output_tokens": last_limit,
        "temperature": 0,
    }
    response = httpx.post(f"{server.base_url}/responses", json=body, timeout=60).json()
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    (item,) = response["output"]
    assert item["type"] == "function_call" and item["status"] == "incomplete"
    assert item["name"] == "get_weather" and item["arguments"] == arguments

    body = {
        "model": model_id,
        "max_tokens": last_limit,
        "messages": QUESTION,
        "tools": [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}],
        "tool_choice": {"type": "any"},
        "temperature": 0,
    }
    message = httpx.post(f"{server.url}/v1/messages", json=body, timeout=60).json()
    assert message["stop_reason"] == "max_tokens"
    assert message["content"][-1]["type"] == "tool_use"
    assert message["content"][-1]["input"] == {}


def test_after_a_tool_result_the_answer_comes_from_it(client: openai.OpenAI, model_id: str) -> None:
    """An agent's second turn: given the tool's result, the model answers from it rather
    than calling the same tool again (which left agents looping until their turn limit)."""
    messages: list[dict[str, Any]] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."},
    ]
    choice = chat(client, model_id, messages=messages, tools=[WEATHER]).choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "sunny" in (choice.message.content or "").lower()


def test_a_tool_result_is_said_in_words_where_the_template_has_no_tool_role() -> None:
    from server.chat.tools import history_messages

    call = {"id": "call_9", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    messages = [
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": "5"},
    ]
    without = history_messages(messages, "{{ message['role'] }}")
    assert without[1] == {
        "role": "user",
        "content": 'Result of add: {"tool_call_id": "call_9", "content": "5"}',
    }
    with_role = history_messages(messages, "{% if message['role'] == 'tool' %}")
    assert with_role[1]["role"] == "tool"
    assert json.loads(with_role[1]["content"]) == {
        "tool_response": {"tool_call_id": "call_9", "content": "5"}
    }


def test_legacy_functions_and_function_call(client: openai.OpenAI, model_id: str) -> None:
    """The API before tools: functions + function_call in, message.function_call and
    finish_reason "function_call" out (streamed: a function_call delta), and an earlier
    call and its `function` message read back as history."""
    functions = [WEATHER["function"]]
    named = {"name": "get_weather"}
    reply = chat(client, model_id, functions=functions, function_call=named)
    choice = reply.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    call = choice.message.function_call
    assert call is not None and call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city", "unit"}
    stream = chat(client, model_id, functions=functions, function_call=named, stream=True)
    deltas, finish = [], None
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.function_call is not None:
                deltas.append(chunk.choices[0].delta.function_call)
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "function_call" and [d.name for d in deltas] == ["get_weather"]
    assert json.loads(deltas[0].arguments or "")
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "function_call": call.model_dump()},
        {"role": "function", "name": "get_weather", "content": "22 C and sunny"},
    ]
    after = chat(client, model_id, messages=history, functions=functions, function_call="none")
    assert after.choices[0].finish_reason in ("stop", "length")
    assert after.choices[0].message.content and after.choices[0].message.function_call is None
    with pytest.raises(openai.BadRequestError) as both:
        chat(client, model_id, functions=functions, tools=[WEATHER])
    assert both.value.param == "functions"


def test_an_earlier_refusal_part_goes_back_as_text(client: openai.OpenAI, model_id: str) -> None:
    messages = [
        {"role": "user", "content": "Tell me a secret."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't share that."}]},
        {"role": "user", "content": "Then say hello."},
    ]
    reply = chat(client, model_id, messages=messages, max_tokens=8)
    assert reply.choices[0].message.content is not None
