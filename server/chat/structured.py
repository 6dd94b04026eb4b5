"""Structured output: the wire's `response_format` (and llama-server's `grammar` and
`json_schema` extensions) → the GBNF grammar the engine's sampler enforces.

Every grammar is compiled against the model's vocabulary here, before anything is queued,
so a bad schema or grammar (or one over a limit) is a 400 naming the field, never an
engine error. Converting and compiling take time on big schemas: callers run these
functions in a worker thread, never on the event loop.
"""

from __future__ import annotations

from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF

from server.chat.json_schema_grammar import SchemaError, json_schema_to_gbnf
from server.errors import InvalidRequest
from server.llama.grammar import GrammarError
from server.llama.model import LlamaModel
from server.llama.sampler import grammar_sampler


def schema_grammar(schema: Any, param: str) -> str:
    """GBNF for a JSON schema (local $refs only)."""
    if not isinstance(schema, dict):
        raise InvalidRequest("The JSON schema must be an object.", param=param)
    try:
        return json_schema_to_gbnf(schema)
    except SchemaError as e:
        raise InvalidRequest(f"Unsupported JSON schema: {e}", param=param) from None


def response_format_grammar(response_format: dict[str, Any] | None) -> str | None:
    """OpenAI's response_format: text, json_object, or json_schema {name, schema, strict}."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        # llama-server also takes a schema here; honour it when given.
        if "schema" in response_format:
            return schema_grammar(response_format["schema"], "response_format.schema")
        return JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest(
                "response_format.json_schema must be an object with a 'name' and a 'schema'.",
                param="response_format.json_schema",
            )
        schema = spec.get("schema")
        if schema is None:
            return JSON_GBNF  # no schema: any JSON object, as OpenAI allows
        return schema_grammar(schema, "response_format.json_schema.schema")
    raise InvalidRequest(
        f"Invalid response_format type {kind!r}: expected 'text', 'json_object' or 'json_schema'.",
        param="response_format.type",
    )


def request_grammar(
    model: LlamaModel,
    response_format: dict[str, Any] | None,
    grammar: str | None = None,
    json_schema: dict[str, Any] | None = None,
) -> str | None:
    """The one grammar a request asks for (at most one way of asking), checked to compile."""
    asked: dict[str, str] = {}
    from_format = response_format_grammar(response_format)
    if from_format is not None:
        asked["response_format"] = from_format
    if grammar is not None:
        asked["grammar"] = grammar
    if json_schema is not None:
        asked["json_schema"] = schema_grammar(json_schema, "json_schema")
    if len(asked) > 1:
        raise InvalidRequest(
            f"Use only one of {' and '.join(asked)}: each constrains the whole output.",
            param=list(asked)[1],
        )
    if not asked:
        return None
    ((param, gbnf),) = asked.items()
    check_compiles(model, gbnf, param)
    return gbnf


def check_compiles(model: LlamaModel, gbnf: str, param: str) -> None:
    """400 naming `param` unless llama.cpp accepts the grammar."""
    try:
        grammar_sampler(model.vocab, gbnf).close()
    except GrammarError as e:
        raise InvalidRequest(f"Invalid grammar: {e}.", param=param) from None
