"""OpenAI's Responses API: POST /v1/responses, GET and DELETE /v1/responses/{id}, POST
/v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items.

A Responses request is translated into a chat request (wire.py) and runs through the same
path as /v1/chat/completions (template, prefix cache, grammar, tools, retrieval); what
differs is the wire shape: input items in, output items out (output.py), typed stream
events (stream.py), and responses kept in memory for previous_response_id (the runtime's
ResponseStore).
Supported: text and message inputs, `instructions`, function tools and their call / output
items, `text.format` (JSON object or schema), `file_search` over Hearth's vector stores
(with file citations), streaming (SSE with `data: [DONE]`, or the WebSocket mode:
websocket.py), background responses (made by a task of their own, streamed again from any
event, cancelled: background.py), POST /v1/responses/compact (compact.py); every response
object carries the fields the Open Responses specification requires.
"""

from server.api.responses.compact import compact_response
from server.api.responses.handlers import (
    cancel_response,
    count_input_tokens,
    create_response,
    delete_response,
    get_response,
    list_input_items,
)
from server.api.responses.websocket import responses_socket

__all__ = [
    "cancel_response",
    "compact_response",
    "count_input_tokens",
    "create_response",
    "delete_response",
    "get_response",
    "list_input_items",
    "responses_socket",
]
