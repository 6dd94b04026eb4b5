"""Tool calling (OpenAI `tools` / `tool_choice`) for any model, grammar-enforced.

Every request with tools uses one generic format, whatever the model's chat template: the
tools are described in the system message, and a grammar built from their JSON schemas
makes the model answer either `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or
`{"response": "..."}` (llama-server's "generic" tool format). So every call parses, names
a real tool and carries arguments that follow its schema, even from a small model; the
price is that a model trained on a native tool syntax is asked for JSON instead.

History goes through the same format: an assistant turn's tool_calls become that JSON, and
tool results become turns the template can render.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from server.chat.json_schema_grammar import SchemaError, json_schema_to_gbnf
from server.chat.requests import ChatCompletionRequest
from server.errors import InvalidRequest
from server.ids import new_id

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# What the grammar lets the model open with, before the answer's string starts.
_RESPONSE_OPENING = re.compile(r'^\s*\{\s*"response"\s*:\s*"')
# The grammar's tool-call form, up to where a call list, and each call's arguments, begin.
_CALLS_OPENING = re.compile(r'\s*\{\s*"tool_calls"\s*:\s*\[')
_CALL_CLOSING = re.compile(r"\s*\}")
_CALL_OPENING = re.compile(r'\s*,?\s*\{\s*"name"\s*:\s*"([a-zA-Z0-9_-]+)"\s*,\s*"arguments"\s*:\s*')


@dataclass(frozen=True)
class ToolPlan:
    """How one request uses its tools."""

    functions: list[dict[str, Any]]  # {"name", "description", "parameters"}
    required: bool  # tool_choice "required" or a named function: no plain answer
    parallel: bool
    grammar: str

    def instructions(self) -> str:
        listing = json.dumps(self.functions, ensure_ascii=False, indent=1)
        calls = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
        lines = [
            "You can call these tools:",
            listing,
            "",
            "Reply with JSON only. To call "
            + ("one or more tools" if self.parallel else "a tool")
            + f": {calls}",
        ]
        if self.required:
            lines.append("You must call a tool now.")
        else:
            lines.append('To answer without a tool: {"response": "<your answer>"}')
        return "\n".join(lines)

    def apply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages with the tool instructions in the (first) system message."""
        text = self.instructions()
        if messages and messages[0]["role"] == "system":
            first = {**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}
            return [first, *messages[1:]]
        return [{"role": "system", "content": text}, *messages]


def plan_tools(req: ChatCompletionRequest) -> ToolPlan | None:
    """Validate tools and tool_choice; None when the request uses no tools."""
    if not req.tools:
        if req.tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools.", param="tool_choice")
        return None
    functions = [_function(tool, i) for i, tool in enumerate(req.tools)]
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param="tools")
    choice = req.tool_choice if req.tool_choice is not None else "auto"
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        allowed = functions
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        allowed = [f for f in functions if f["name"] == name]
        if not allowed:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not among the tools.",
                param="tool_choice.function.name",
            )
    else:
        raise InvalidRequest(
            "tool_choice must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    required = choice != "auto"
    # Off unless asked for, as in llama-server: small models asked for "one or more" calls
    # tend to repeat the same call until max_tokens (measured here with SmolLM2).
    parallel = req.parallel_tool_calls is True
    try:
        grammar = json_schema_to_gbnf(_answer_schema(allowed, required, parallel))
    except SchemaError as e:
        raise InvalidRequest(f"Unsupported tool parameters schema: {e}", param="tools") from None
    return ToolPlan(functions, required, parallel, grammar)


def _function(tool: Any, i: int) -> dict[str, Any]:
    param = f"tools.[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise InvalidRequest("Only tools of type 'function' are supported.", param=f"{param}.type")
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequest("A tool needs a 'function' object.", param=f"{param}.function")
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(
            "A function name must be 1-64 letters, digits, '_' or '-'.",
            param=f"{param}.function.name",
        )
    parameters = fn.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            "Function parameters must be a JSON schema object.",
            param=f"{param}.function.parameters",
        )
    description = fn.get("description")
    if isinstance(description, str):
        return {"name": name, "description": description, "parameters": parameters}
    return {"name": name, "parameters": parameters}


def _answer_schema(
    functions: list[dict[str, Any]], required: bool, parallel: bool
) -> dict[str, Any]:
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    array: dict[str, Any] = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
    }
    if not parallel:
        array["maxItems"] = 1
    tool_form = {
        "type": "object",
        "properties": {"tool_calls": array},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    if required:
        return tool_form
    response_form = {
        "type": "object",
        "properties": {"response": {"type": "string"}},
        "required": ["response"],
        "additionalProperties": False,
    }
    return {"anyOf": [response_form, tool_form]}


def history_messages(messages: list[dict[str, Any]], template_source: str) -> list[dict[str, Any]]:
    """Earlier tool calls and results in the generic format, renderable by any template."""
    tool_role = "'tool'" in template_source or '"tool"' in template_source
    names = {
        call.get("id"): (call.get("function") or {}).get("name")
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
        if isinstance(call, dict)
    }
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [_history_call(c) for c in m["tool_calls"]]
            m = {"role": "assistant", "content": json.dumps({"tool_calls": calls})}
        elif m["role"] in ("tool", "function"):
            m = _tool_result(m, tool_role, names)
        out.append(m)
    return out


def _tool_result(message: dict[str, Any], tool_role: bool, names: dict[Any, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if message.get("tool_call_id"):
        result["tool_call_id"] = message["tool_call_id"]
    result["content"] = message.get("content") or ""
    if tool_role:
        if message.get("name"):
            result["name"] = message["name"]
        return {"role": "tool", "content": json.dumps({"tool_response": result})}
    # A template that knows no "tool" role gets the result as a user turn, said in words:
    # given it as the same JSON as its own calls, a small model (SmolLM2-135M, greedy, six
    # tool conversations) answered each with the same call again, so agents never finished;
    # "Result of <tool>: ..." made it answer from the result in all four that wanted an
    # answer (in the two that wanted a second, different call it answered early rather
    # than repeating the first).
    name = message.get("name") or names.get(message.get("tool_call_id")) or "the tool"
    said = json.dumps(result, ensure_ascii=False)
    return {"role": "user", "content": f"Result of {name}: {said}"}


def _history_call(call: Any) -> dict[str, Any]:
    fn = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = fn.get("arguments", "{}")
    # An argument string that is not JSON stays the string the client sent.
    with contextlib.suppress(json.JSONDecodeError):
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    return {"name": fn.get("name", ""), "arguments": arguments}


def tool_calls_of(value: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for call in value["tool_calls"]:
        name = call["name"]
        arguments = json.dumps(call.get("arguments", {}), ensure_ascii=False)
        if (name, arguments) in seen:
            continue  # the same call twice is one call (small models repeat themselves)
        seen.add((name, arguments))
        out.append(_openai_call(name, arguments))
    return out


def _openai_call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": new_id("call_"),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def parse_answer(text: str) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(content, tool_calls) of a whole choice, exactly as streaming would give them."""
    answer = AnswerStream()
    sent = answer.feed(text)
    rest, calls = answer.finish()
    if calls is not None:
        return None, calls
    return sent + rest, None


def _parse_json(text: str) -> tuple[str | None, list[dict[str, Any]] | None] | None:
    """(content, tool_calls) from complete JSON in the generic format; None otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        return None, tool_calls_of(value)
    if isinstance(value, dict) and isinstance(value.get("response"), str):
        return value["response"], None
    return None


@dataclass
class AnswerStream:
    """Turns the streamed JSON of one choice into content deltas as they arrive (a
    `response` string is decoded incrementally) and tool calls at the end."""

    raw: str = ""
    mode: str = "undecided"  # "response", "tools" or "done"
    _start: int = 0  # where the response string's characters begin in raw
    _sent: int = 0  # characters of the decoded response already sent
    _pending: list[str] = field(default_factory=list)

    def feed(self, text: str) -> str:
        """Content to stream now (may be empty)."""
        self.raw += text
        if self.mode == "undecided":
            opening = _RESPONSE_OPENING.match(self.raw)
            if opening:
                self.mode, self._start = "response", opening.end()
            elif '"tool_calls"' in self.raw:
                self.mode = "tools"
        if self.mode != "response":
            return ""
        decoded = _decode_partial(self.raw[self._start :])
        if decoded is None:
            return ""
        delta = decoded[self._sent :]
        self._sent = len(decoded)
        return delta

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        """(content not yet sent, tool calls) once the choice is complete."""
        parsed = _parse_json(self.raw)
        if parsed is not None and parsed[1] is not None:
            return "", parsed[1]
        if self.mode == "response":
            if parsed is not None and parsed[0] is not None:
                return parsed[0][self._sent :], None
            return "", None  # cut short by max_tokens: what decoded so far was sent
        if parsed is not None or not self.raw.lstrip().startswith("{"):
            return self.raw, None  # not the format at all (the grammar prevents it)
        # Cut short inside tool calls: as OpenAI does, the calls so far, the last one with
        # its arguments as far as they got (not valid JSON; finish_reason says "length").
        # Cut short before any call was named: nothing to give (the text so far is Hearth's
        # own wire format, meaningless to a client).
        return "", cut_tool_calls(self.raw)


def cut_tool_calls(raw: str) -> list[dict[str, Any]] | None:
    """The calls in the prefix `raw` of a tool-call answer cut short: each named call, the
    last one's arguments as far as they were written; None when no call was named yet."""
    opening = _CALLS_OPENING.match(raw)
    if opening is None:
        return None
    decoder = json.JSONDecoder()
    complete: list[dict[str, Any]] = []
    pos = opening.end()
    while call := _CALL_OPENING.match(raw, pos):
        start = call.end()
        try:
            arguments, end = decoder.raw_decode(raw, start)
        except json.JSONDecodeError:
            cut = _openai_call(call.group(1), raw[start:].rstrip())
            return [*tool_calls_of({"tool_calls": complete}), cut]
        complete.append({"name": call.group(1), "arguments": arguments})
        closing = _CALL_CLOSING.match(raw, end)
        if closing is None:
            break
        pos = closing.end()
    return tool_calls_of({"tool_calls": complete}) if complete else None


def _decode_partial(body: str) -> str | None:
    """The characters of a JSON string body written so far, up to its closing quote and
    never half an escape or half a surrogate pair; None if it does not decode."""
    end, i = len(body), 0
    while i < len(body):
        c = body[i]
        if c == '"':
            end = i
            break
        if c == "\\":
            width = 6 if body[i + 1 : i + 2] == "u" else 2
            if i + width > len(body):
                end = i
                break
            i += width
            continue
        i += 1
    try:
        text: str = json.loads(f'"{body[:end]}"')
    except json.JSONDecodeError:
        return None
    if text and "\ud800" <= text[-1] <= "\udbff":
        text = text[:-1]  # a high surrogate escape waiting for its pair
    return text
