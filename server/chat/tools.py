"""Tool calling (OpenAI `tools` / `tool_choice`) for any model, grammar-enforced.

Every request with tools uses one generic format, whatever the model's chat template: the
tools are described in the system message, and a grammar built from their JSON schemas
makes the model answer either `{"tool_calls": [{"name": ..., "arguments": {...}}]}` or
`{"response": "..."}` (llama-server's "generic" tool format). So every call parses, names
a real tool and carries arguments that follow its schema, even from a small model; the
price is that a model trained on a native tool syntax is asked for JSON instead.

Custom tools (OpenAI's `type: "custom"`, whose input is text, free or following a Lark or
regex grammar) are called with a header line, `{"custom_tool": "<name>"}`, followed by the
input as plain text to the end of the answer: the input's own grammar (custom_grammar.py)
follows the header in the same grammar, and needs no JSON escaping. One custom call per
answer; `tool_choice` may name a custom tool or list `allowed_tools`.

History goes through the same format: an assistant turn's tool_calls become that JSON, and
tool results become turns the template can render.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from server.chat.custom_grammar import CustomGrammarError, input_rules
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
# A custom tool's call: this header line, then its input as plain text to the end.
_CUSTOM_HEADER = '{{"custom_tool": "{name}"}}\n'
_CUSTOM_OPENING = re.compile(r'^\s*\{"custom_tool": "')
_CUSTOM_CALL = re.compile(r'^\s*\{"custom_tool": "([a-zA-Z0-9_-]+)"\}\n')


@dataclass(frozen=True)
class CustomTool:
    """A tool whose input is free text, or text a Lark or regex grammar allows (OpenAI's
    `type: "custom"` tools)."""

    name: str
    description: str | None
    syntax: str | None  # None: any text; else "lark" or "regex"
    definition: str | None

    def listing(self) -> str:
        described = f"{self.name}: {self.description}" if self.description else self.name
        if self.syntax is None:
            return f"- {described}\n  Input: any text."
        kind = "Lark grammar" if self.syntax == "lark" else "regular expression"
        return (
            f"- {described}\n  Input: text matching this {kind}:\n{(self.definition or '').strip()}"
        )


@dataclass(frozen=True)
class ToolPlan:
    """How one request uses its tools."""

    functions: list[dict[str, Any]]  # {"name", "description", "parameters"}
    required: bool  # tool_choice "required" or a named tool: no plain answer
    parallel: bool
    grammar: str
    customs: list[CustomTool] = field(default_factory=list)

    def instructions(self) -> str:
        lines = []
        if self.functions:
            listing = json.dumps(self.functions, ensure_ascii=False, indent=1)
            calls = '{"tool_calls": [{"name": "<tool name>", "arguments": {<arguments>}}]}'
            lines += [
                "You can call these tools:",
                listing,
                "",
                "Reply with JSON only. To call "
                + ("one or more tools" if self.parallel else "a tool")
                + f": {calls}",
            ]
        if self.customs:
            header = _CUSTOM_HEADER.format(name="<tool name>").rstrip("\n")
            lines += [
                "You can call these tools, whose input is plain text:",
                *(c.listing() for c in self.customs),
                "",
                f"To call one of them, write {header} on a line of its own, then its input.",
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
    tools = [_tool(tool, i) for i, tool in enumerate(req.tools)]
    names = [t.name if isinstance(t, CustomTool) else t["name"] for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param="tools")
    functions = [t for t in tools if isinstance(t, dict)]
    customs = [t for t in tools if isinstance(t, CustomTool)]
    choice = req.tool_choice if req.tool_choice is not None else "auto"
    if choice == "none":
        return None
    allowed_names, required = _allowed(choice, set(names))
    allowed_functions = [f for f in functions if f["name"] in allowed_names]
    allowed_customs = [c for c in customs if c.name in allowed_names]
    # Off unless asked for, as in llama-server: small models asked for "one or more" calls
    # tend to repeat the same call until max_tokens (measured here with SmolLM2).
    parallel = req.parallel_tool_calls is True
    forms: list[dict[str, Any]] = []
    if not required:
        forms.append(_RESPONSE_FORM)
    if allowed_functions:
        forms.append(_calls_form(allowed_functions, parallel))
    try:
        rules = [
            input_rules(c.syntax, c.definition or "", f"custom{k}-")
            for k, c in enumerate(allowed_customs)
            if c.syntax is not None
        ]
    except CustomGrammarError as e:
        raise InvalidRequest(f"Invalid custom tool grammar: {e}.", param="tools") from None
    json_rules = None  # no JSON form at all when only custom tools may, and must, be called
    if forms:
        try:
            json_rules = json_schema_to_gbnf(forms[0] if len(forms) == 1 else {"anyOf": forms})
        except SchemaError as e:
            message = f"Unsupported tool parameters schema: {e}"
            raise InvalidRequest(message, param="tools") from None
    if allowed_customs:
        grammar = _with_customs(json_rules, allowed_customs, rules)
    else:
        assert json_rules is not None  # forms holds a function form, or the plain answer
        grammar = json_rules
    return ToolPlan(functions, required, parallel, grammar, customs)


def _with_customs(json_rules: str | None, customs: list[CustomTool], rules: list[str]) -> str:
    """The answer grammar: the JSON forms, or a custom tool's header line and input."""
    alternatives = ["json-root"] if json_rules is not None else []
    inputs = iter(rules)
    lines = []
    for k, custom in enumerate(customs):
        header = _CUSTOM_HEADER.format(name=custom.name).replace("\n", "\\n").replace('"', '\\"')
        body = f"custom{k}-root" if custom.syntax is not None else "[^\\x00]*"
        lines.append(f'custom{k}-call ::= "{header}" {body}')
        alternatives.append(f"custom{k}-call")
        if custom.syntax is not None:
            lines.append(next(inputs).rstrip("\n"))
    if json_rules is not None:
        lines.append(re.sub(r"^root ::=", "json-root ::=", json_rules, count=1, flags=re.M))
    return "\n".join([f"root ::= {' | '.join(alternatives)}", *lines]) + "\n"


def _allowed(choice: Any, names: set[str]) -> tuple[set[str], bool]:
    """(names of the tools the model may call, whether it must call one) for tool_choice."""
    if choice in ("auto", "required"):
        return names, choice == "required"
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        spec = choice.get("allowed_tools", choice)  # chat nests it; Responses does not
        mode = spec.get("mode") if isinstance(spec, dict) else None
        listed = spec.get("tools") if isinstance(spec, dict) else None
        if mode not in ("auto", "required") or not isinstance(listed, list) or not listed:
            raise InvalidRequest(
                "allowed_tools needs a mode ('auto' or 'required') and a list of tools.",
                param="tool_choice.allowed_tools",
            )
        allowed = {_chosen_name(t, "tool_choice.allowed_tools.tools") for t in listed}
        missing = sorted(allowed - names)
        if missing:
            raise InvalidRequest(
                f"allowed_tools names {missing[0]!r}, which is not among the tools.",
                param="tool_choice.allowed_tools.tools",
            )
        return allowed, mode == "required"
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom", None):
        name = _chosen_name(choice, "tool_choice")
        if name not in names:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not among the tools.",
                param=f"tool_choice.{choice.get('type') or 'function'}.name",
            )
        return {name}, True
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required', "
        '{"type": "function", "function": {"name": ...}}, '
        '{"type": "custom", "custom": {"name": ...}} or '
        '{"type": "allowed_tools", "allowed_tools": {"mode": ..., "tools": [...]}}.',
        param="tool_choice",
    )


def _chosen_name(choice: Any, param: str) -> str:
    """The tool a choice names: chat's {"type": t, t: {"name"}} or Responses' flat form."""
    if isinstance(choice, dict):
        kind = choice.get("type") or "function"
        inner = choice.get(kind)
        name = inner.get("name") if isinstance(inner, dict) else choice.get("name")
        if isinstance(name, str):
            return name
    raise InvalidRequest("A tool choice needs a tool name.", param=param)


def _tool(tool: Any, i: int) -> dict[str, Any] | CustomTool:
    param = f"tools.[{i}]"
    kind = tool.get("type", "function") if isinstance(tool, dict) else None
    if kind == "custom":
        return _custom(tool, param)
    if kind != "function":
        raise InvalidRequest(
            "Only tools of type 'function' or 'custom' are supported.", param=f"{param}.type"
        )
    fn = tool.get("function")
    if not isinstance(fn, dict):
        raise InvalidRequest("A tool needs a 'function' object.", param=f"{param}.function")
    name = _tool_name(fn.get("name"), f"{param}.function.name")
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


def _custom(tool: dict[str, Any], param: str) -> CustomTool:
    spec = tool.get("custom", tool)  # chat nests it; Responses does not
    if not isinstance(spec, dict):
        raise InvalidRequest("A custom tool needs a 'custom' object.", param=f"{param}.custom")
    name = _tool_name(spec.get("name"), f"{param}.custom.name")
    description = spec.get("description") if isinstance(spec.get("description"), str) else None
    fmt = spec.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return CustomTool(name, description, None, None)
    if kind == "grammar":
        grammar = fmt.get("grammar", fmt)  # chat nests it; Responses does not
        syntax = grammar.get("syntax") if isinstance(grammar, dict) else None
        definition = grammar.get("definition") if isinstance(grammar, dict) else None
        if syntax in ("lark", "regex") and isinstance(definition, str):
            return CustomTool(name, description, syntax, definition)
    raise InvalidRequest(
        'A custom tool\'s format must be {"type": "text"} or {"type": "grammar", '
        '"grammar": {"syntax": "lark" or "regex", "definition": ...}}.',
        param=f"{param}.custom.format",
    )


def _tool_name(name: Any, param: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest("A tool name must be 1-64 letters, digits, '_' or '-'.", param=param)
    return name


_RESPONSE_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {"response": {"type": "string"}},
    "required": ["response"],
    "additionalProperties": False,
}


def _calls_form(functions: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
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
    return {
        "type": "object",
        "properties": {"tool_calls": array},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }


def history_messages(messages: list[dict[str, Any]], template_source: str) -> list[dict[str, Any]]:
    """Earlier tool calls and results in the generic format, renderable by any template."""
    tool_role = "'tool'" in template_source or '"tool"' in template_source
    names = {
        call.get("id"): (call.get(call.get("type") or "function") or {}).get("name")
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or []
        if isinstance(call, dict)
    }
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            m = {"role": "assistant", "content": _history_calls(m["tool_calls"])}
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


def _history_calls(calls: list[Any]) -> str:
    """An assistant turn's calls as the model writes them: function calls as one JSON
    object, each custom call as its header line and input."""
    custom = [c for c in calls if isinstance(c, dict) and c.get("type") == "custom"]
    functions = [_history_call(c) for c in calls if c not in custom]
    parts = [json.dumps({"tool_calls": functions})] if functions else []
    for call in custom:
        spec = call.get("custom") if isinstance(call.get("custom"), dict) else {}
        header = _CUSTOM_HEADER.format(name=spec.get("name", ""))
        parts.append(header + str(spec.get("input", "")))
    return "\n".join(parts)


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


def _custom_call(name: str, text: str) -> dict[str, Any]:
    return {"id": new_id("call_"), "type": "custom", "custom": {"name": name, "input": text}}


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
    mode: str = "undecided"  # then "response", "tools" or "custom"
    _start: int = 0  # where the response string's characters begin in raw
    _sent: int = 0  # characters of the decoded response already sent
    _pending: list[str] = field(default_factory=list)
    _custom: dict[str, Any] | None = None  # the custom call being written, once named
    _input_sent: int = 0  # characters of its input already given out

    def custom_input(self) -> tuple[dict[str, Any] | None, str]:
        """A custom tool call as it is written: the call (its input empty) once its header
        line has ended, and the input written since the last ask."""
        header = _CUSTOM_CALL.match(self.raw) if self.mode == "custom" else None
        if header is None:
            return None, ""
        if self._custom is None:
            self._custom = _custom_call(header.group(1), "")
        written = self.raw[header.end() :]
        delta = written[self._input_sent :]
        self._input_sent = len(written)
        return self._custom, delta

    def feed(self, text: str) -> str:
        """Content to stream now (may be empty)."""
        self.raw += text
        if self.mode == "undecided":
            opening = _RESPONSE_OPENING.match(self.raw)
            if opening:
                self.mode, self._start = "response", opening.end()
            elif '"tool_calls"' in self.raw:
                self.mode = "tools"
            elif _CUSTOM_OPENING.match(self.raw):
                self.mode = "custom"
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
        if self.mode == "custom":
            # A custom tool's header line, then its input to the end (cut short by
            # max_tokens: the input so far; before the header ended: nothing to give).
            header = _CUSTOM_CALL.match(self.raw)
            if header is None:
                return "", None
            call = self._custom or _custom_call(header.group(1), "")  # the id it streamed with
            custom = {**call["custom"], "input": self.raw[header.end() :]}
            return "", [{**call, "custom": custom}]
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
