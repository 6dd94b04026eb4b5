"""Custom tools (OpenAI's `type: "custom"`): input grammars in Lark or regex syntax become
GBNF that llama.cpp's grammar engine enforces (checked here against Python's `re` and
Lark's own parser, string by string), tool_choice names them or lists `allowed_tools`, and
the calls come back in chat and Responses shapes through the official client."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from lark import Lark
from lark.exceptions import LarkError

from server.chat.custom_grammar import CustomGrammarError, input_rules
from server.chat.requests import ChatCompletionRequest
from server.chat.tools import history_messages, parse_answer, plan_tools
from server.errors import InvalidRequest
from server.llama.model import LlamaModel
from server.llama.sampler import Candidates, grammar_sampler
from server.model_files import resolve_chat_model

ARITHMETIC = r"""
start: expr
expr: term (("+" | "-" | "*") term)*
term: NUMBER | "(" expr ")"
%import common.NUMBER
%import common.WS
%ignore WS
"""

SHORT_SUM = r"""
start: DIGITS "+" DIGITS
DIGITS: /[0-9]{1,3}/
"""


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    loaded = LlamaModel(resolve_chat_model(""))
    yield loaded
    loaded.close()


def accepts(model: LlamaModel, gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar engine lets the model write exactly `text` and stop."""
    grammar = grammar_sampler(model.vocab, gbnf)
    one = Candidates(1)
    try:
        for token in model.tokenize(text, add_special=False):
            one.one(token)
            grammar.apply(one)
            if not np.isfinite(one.data["logit"][0]):
                return False
            grammar.accept(token)  # only ever an allowed token: llama.cpp aborts otherwise
        one.one(next(iter(model.eog_tokens)))
        grammar.apply(one)
        return bool(np.isfinite(one.data["logit"][0]))
    finally:
        grammar.close()


REGEX_CASES = [
    (r"\d{3}-\d{4}", ["555-1234", "55-1234", "555-12345", "abc-defg", "555 1234"]),
    (r"(?i)yes|no", ["yes", "YES", "No", "nO", "maybe", "yesno", ""]),
    (r"[a-c]+x?", ["abc", "abcx", "x", "abcd", "cab"]),
    (r"[^\d\s]{2}", ["ab", "a1", "--", "a ", "é!"]),
    (r"^(ab|cd)*$", ["", "ab", "abcd", "abc", "cdab"]),
    (r"a.b", ["a-b", "a\nb", "ab", "a.b"]),
    (r"(?s)a.b", ["a\nb", "a-b"]),
    (r'"[^"]*"', ['"hi"', '"a"b"', '""', '"x']),
    (r"\w+@\w+\.(com|org)", ["me@host.com", "me@host.net", "@host.com", "a_b@c.org"]),
    (r"(\d{1,3}\.){3}\d{1,3}", ["10.0.0.1", "255.255.255.255", "1.2.3", "1.2.3.4.5", "1234.1.1.1"]),
    # A group repeated 500 times: llama.cpp counts the group's rules times 500 against its
    # limit of 2000, so the conversion must not wrap atoms in needless groups.
    (r"(\w+\s?){1,500}", ["one two three", "word", "", "a  b"]),
]


@pytest.mark.parametrize(("pattern", "texts"), REGEX_CASES)
def test_a_regex_grammar_allows_what_the_regex_matches(
    model: LlamaModel, pattern: str, texts: list[str]
) -> None:
    gbnf = input_rules("regex", pattern, "c-").replace("c-root", "root")
    for text in texts:
        assert accepts(model, gbnf, text) == bool(re.fullmatch(pattern, text)), (pattern, text)


LARK_CASES = [
    (ARITHMETIC, ["1+2", "12 * (3 + 4)", "(1)", "1 +", "+1", "1 2", "3.5*2", "1+2 "]),
    (SHORT_SUM, ["1+2", "123+456", "1234+1", "1 + 2", "a+b"]),
    (
        r"""
        start: _list{item, ","}
        _list{x, sep}: "[" [x (sep x)*] "]"
        item: WORD | ESCAPED_STRING
        %import common.WORD
        %import common.ESCAPED_STRING
        """,
        ["[]", "[a]", "[a,b]", '[a,"b c"]', "[a,]", "[a b]", "a"],
    ),
    (
        r"""
        start: greeting~2..3
        greeting: "hi"i | NAME
        NAME: "bob" | "al" ("ice")?
        """,
        ["hihi", "HiHI", "bobalice", "hi", "hihihihi", "alal"],
    ),
]


@pytest.mark.parametrize(("definition", "texts"), LARK_CASES)
def test_a_lark_grammar_allows_what_lark_parses(
    model: LlamaModel, definition: str, texts: list[str]
) -> None:
    gbnf = input_rules("lark", definition, "c-").replace("c-root ::=", "root ::=")
    parser = Lark(definition, parser="earley")
    for text in texts:
        try:
            parser.parse(text)
            parsed = True
        except LarkError:
            parsed = False
        assert accepts(model, gbnf, text) == parsed, (text, gbnf)


@pytest.mark.parametrize(
    ("syntax", "definition", "says"),
    [
        ("regex", r"(?<=a)b", "lookaround"),
        ("regex", r"(a)\1", "backreferences"),
        ("regex", r"a\bb", "word boundaries"),
        ("regex", r"a{5000}", "limit is 2000"),
        ("regex", r"(a", "does not parse"),
        ("regex", "(" * 5000 + ")" * 5000, "nests too deeply"),
        ("lark", "start: foo", "not defined"),
        ("lark", "%import os.path\nstart: A", "%import os.path"),
        ("lark", '%import .secrets (X)\nstart: "a"', "%import .secrets"),
        ("lark", "start: A\n%declare A", "%declare"),
        ("lark", 'item: "a"', "no 'start' rule"),
        ("lark", 'start: "x"~3000', "limit is 2000"),
        ("lark", "x" * 70_000, "limit is"),
        ("yaml", "a: b", "unknown grammar syntax"),
        ("regex", "  ", "empty"),
    ],
)
def test_grammars_that_cannot_be_enforced_are_refused(
    syntax: str, definition: str, says: str
) -> None:
    with pytest.raises(CustomGrammarError, match=re.escape(says)):
        input_rules(syntax, definition, "c-")


def custom(name: str, syntax: str | None = None, definition: str = "") -> dict:
    fmt = (
        {"type": "text"}
        if syntax is None
        else {
            "type": "grammar",
            "grammar": {"syntax": syntax, "definition": definition},
        }
    )
    return {"type": "custom", "custom": {"name": name, "format": fmt}}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def plan(tools: list[dict], choice: object = None):
    req = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], tools=tools, tool_choice=choice
    )
    return plan_tools(req)


def test_allowed_tools_narrow_the_grammar_but_every_tool_stays_listed(model: LlamaModel) -> None:
    tools = [WEATHER, custom("phone", "regex", r"\d{3}"), custom("shell")]
    only_phone = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [{"type": "custom", "custom": {"name": "phone"}}],
        },
    }
    narrowed = plan(tools, only_phone)
    # The prompt lists all three (a prefix shared with other requests), the grammar one.
    for name in ("get_weather", "phone", "shell"):
        assert name in narrowed.instructions()
    assert accepts(model, narrowed.grammar, '{"custom_tool": "phone"}\n123')
    assert not accepts(model, narrowed.grammar, '{"custom_tool": "shell"}\nls')
    assert not accepts(model, narrowed.grammar, '{"response": "hello"}')
    free = plan(
        tools, {**only_phone, "allowed_tools": {**only_phone["allowed_tools"], "mode": "auto"}}
    )
    assert accepts(model, free.grammar, '{"response": "hello"}')
    assert not accepts(model, free.grammar, '{"custom_tool": "shell"}\nls')
    anything = plan(tools)
    assert accepts(model, anything.grammar, '{"custom_tool": "shell"}\nls -la\n')
    assert accepts(
        model,
        anything.grammar,
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}',
    )
    named = plan(tools, {"type": "custom", "custom": {"name": "shell"}})
    assert named.required and not accepts(model, named.grammar, '{"custom_tool": "phone"}\n123')


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([custom("a")], {"type": "custom", "custom": {"name": "b"}}, "tool_choice.custom.name"),
        (
            [custom("a")],
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "sometimes",
                    "tools": [{"type": "custom", "custom": {"name": "a"}}],
                },
            },
            "tool_choice.allowed_tools",
        ),
        (
            [custom("a")],
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "z"}}],
                },
            },
            "tool_choice.allowed_tools.tools",
        ),
        ([custom("a"), custom("a")], None, "tools"),
        (
            [{"type": "custom", "custom": {"name": "a", "format": {"type": "grammar"}}}],
            None,
            "tools.[0].custom.format",
        ),
        ([custom("a", "regex", "(?=x)")], None, "tools"),
        ([{"type": "custom", "custom": {"name": "bad name"}}], None, "tools.[0].custom.name"),
    ],
)
def test_bad_custom_tool_requests_name_their_parameter(
    tools: list, choice: object, param: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        plan(tools, choice)
    assert raised.value.param == param


def test_a_custom_call_is_parsed_and_goes_back_into_the_history_as_written() -> None:
    content, calls = parse_answer('{"custom_tool": "shell"}\nls -la\necho "done"')
    assert content is None and calls is not None
    assert calls[0]["type"] == "custom"
    assert calls[0]["custom"] == {"name": "shell", "input": 'ls -la\necho "done"'}
    history = history_messages(
        [
            {"role": "user", "content": "list"},
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "a.txt"},
        ],
        template_source="{{ messages }}",  # a template with no tool role
    )
    assert history[1]["content"] == '{"custom_tool": "shell"}\nls -la\necho "done"'
    assert history[2] == {
        "role": "user",
        "content": f'Result of shell: {{"tool_call_id": "{calls[0]["id"]}", "content": "a.txt"}}',
    }
    # Cut by max_tokens before the header ended: no call to give.
    assert parse_answer('{"custom_tool": "sh') == ("", None)


# --- through the server, with the official client --------------------------------------------


def test_chat_custom_tool_calls_follow_their_grammar(client: openai.OpenAI, model_id: str) -> None:
    tools = [custom("dial", "regex", r"\d{3}-\d{4}"), custom("add", "lark", SHORT_SUM), WEATHER]
    for name, check in (
        ("dial", lambda text: re.fullmatch(r"\d{3}-\d{4}", text)),
        ("add", lambda text: Lark(SHORT_SUM).parse(text)),
    ):
        reply = client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "Call 555-1234, or add 2 and 3."}],
            tools=tools,
            tool_choice={"type": "custom", "custom": {"name": name}},
            max_tokens=40,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls or []
        assert call.type == "custom" and call.custom.name == name
        assert check(call.custom.input), call.custom.input
        assert choice.message.content is None


def test_a_streamed_custom_call_and_its_result_going_back(
    client: openai.OpenAI, model_id: str
) -> None:
    tools = [custom("dial", "regex", r"\d{3}-\d{4}")]
    messages: list = [{"role": "user", "content": "Call 555-1234."}]
    stream = client.chat.completions.create(
        model=model_id,
        messages=messages,
        tools=tools,
        tool_choice="required",
        max_tokens=30,
        stream=True,
    )
    deltas, finish = [], None
    for chunk in stream:
        if chunk.choices:
            deltas += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    (delta,) = deltas
    assert delta.type == "custom" and delta.id
    assert re.fullmatch(r"\d{3}-\d{4}", delta.custom["input"])
    call = {"id": delta.id, "type": "custom", "custom": delta.custom}
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": delta.id, "content": "Nobody answered."},
    ]
    after = client.chat.completions.create(
        model=model_id, messages=messages, tools=tools, tool_choice="none", max_tokens=20
    )
    assert after.choices[0].message.content


def test_a_custom_call_cut_by_max_tokens_says_length(client: openai.OpenAI, model_id: str) -> None:
    reply = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Write a long shell script that backs up my home."}],
        tools=[custom("shell")],
        tool_choice="required",
        max_tokens=16,  # the header line is about 9 tokens; the script needs many more
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 16
    (call,) = choice.message.tool_calls or []
    assert call.custom.name == "shell" and call.custom.input  # the input so far


def test_responses_custom_tools(client: openai.OpenAI, model_id: str) -> None:
    tool = {
        "type": "custom",
        "name": "add",
        "format": {"type": "grammar", "syntax": "lark", "definition": SHORT_SUM},
    }
    made = client.responses.create(
        model=model_id,
        input="Add 2 and 3.",
        tools=[tool],
        tool_choice={"type": "custom", "name": "add"},
        max_output_tokens=30,
    )
    (item,) = made.output
    assert item.type == "custom_tool_call" and item.name == "add" and item.call_id
    Lark(SHORT_SUM).parse(item.input)
    # Its call and output go back as input items.
    after = client.responses.create(
        model=model_id,
        input=[
            {"role": "user", "content": "Add 2 and 3."},
            {
                "type": "custom_tool_call",
                "call_id": item.call_id,
                "name": "add",
                "input": item.input,
            },
            {"type": "custom_tool_call_output", "call_id": item.call_id, "output": "5"},
        ],
        tools=[tool],
        tool_choice="none",
        max_output_tokens=20,
    )
    assert after.status in ("completed", "incomplete") and after.output[0].type == "message"
    # Streamed, with allowed_tools: the input arrives in custom_tool_call_input events.
    with client.responses.stream(
        model=model_id,
        input="Add 2 and 3.",
        tools=[tool, {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        tool_choice={
            "type": "allowed_tools",
            "mode": "required",
            "tools": [{"type": "custom", "name": "add"}],
        },
        max_output_tokens=30,
    ) as stream:
        seen = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in seen]
    (streamed,) = final.output
    assert streamed.type == "custom_tool_call"
    Lark(SHORT_SUM).parse(streamed.input)
    # The input streams as it is written: the item announced first, then its pieces, all
    # under the one item id the finished response gives it.
    deltas = [e for e in seen if e.type == "response.custom_tool_call_input.delta"]
    assert len(deltas) > 1 and "".join(d.delta for d in deltas) == streamed.input
    added = kinds.index("response.output_item.added")
    assert added < kinds.index("response.custom_tool_call_input.delta")
    assert kinds.index("response.custom_tool_call_input.done") > kinds.index(
        "response.custom_tool_call_input.delta"
    )
    assert seen[added].item.id == streamed.id and all(d.item_id == streamed.id for d in deltas)


def test_bad_custom_tools_are_400s_in_both_apis(client: openai.OpenAI, model_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model=model_id,
            messages=[{"role": "user", "content": "hi"}],
            tools=[custom("x", "regex", r"(a)\1")],
        )
    assert "backreferences" in chat.value.message and chat.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as responses:
        client.responses.create(
            model=model_id,
            input="hi",
            tools=[
                {
                    "type": "custom",
                    "name": "x",
                    "format": {"type": "grammar", "syntax": "lark", "definition": "start: nothing"},
                }
            ],
        )
    assert "not defined" in responses.value.message


def test_langchain_custom_tool_over_the_responses_api(server, model_id: str) -> None:
    """LangChain's @custom_tool (its own docs' Lark grammar, with aliases) bound to ChatOpenAI
    on the Responses API: the call parses, its output goes back, an answer comes."""
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI, custom_tool

    grammar = """
    start: expr
    expr: term (SP ADD SP term)* -> add
    | term
    term: factor (SP MUL SP factor)* -> mul
    | factor
    factor: INT
    SP: " "
    ADD: "+"
    MUL: "*"
    %import common.INT
    """

    @custom_tool(format={"type": "grammar", "syntax": "lark", "definition": grammar})
    def do_math(input_string: str) -> str:
        """Do a mathematical operation."""
        return "27"

    llm = ChatOpenAI(
        base_url=server.base_url,
        api_key="unused",
        model=model_id,
        use_responses_api=True,
        temperature=0,
        max_tokens=40,
    )
    question = HumanMessage("Use the tool to calculate 3 * 9.")
    called = llm.bind_tools([do_math], tool_choice="do_math").invoke([question])
    (call,) = called.tool_calls
    assert call["name"] == "do_math"
    # (Lark itself refuses to build a parser from this grammar, "rules defined twice"; what
    # it allows is this.)
    assert re.fullmatch(r"\d+( [+*] \d+)*", call["args"]["__arg1"])
    result = do_math.invoke(call)
    answer = llm.bind_tools([do_math]).invoke([question, called, result])
    assert answer.text
