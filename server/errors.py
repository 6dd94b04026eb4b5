"""What can be wrong with a request, in the service layers' words: no HTTP here.

server/api/errors.py maps each of these (and the engines' own EngineBusy, EngineDead,
ContextLengthExceeded, EmbedderBusy, EmbedderError) to OpenAI's error shape and an HTTP
status, in one place.
"""

from __future__ import annotations


class RequestError(Exception):
    """The request cannot be served as asked; `param` names the field (as OpenAI does:
    "messages.[0].content"), `code` a machine-readable reason."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(RequestError):
    """Something in the request is not valid (HTTP 400)."""


class NotFound(RequestError):
    """The request names something that does not exist (HTTP 404)."""


class FeatureDisabled(RequestError):
    """The request needs a part of the server that is switched off (HTTP 503)."""


class Unavailable(RequestError):
    """The request cannot be served now, but may be later: no room to load the model it
    names, or its load failed (HTTP 503)."""


class GenerationFailed(Exception):
    """The engine failed this request (HTTP 500; a stream ends with an error event)."""


class ClientGone(Exception):
    """The client hung up before its answer was complete; its generation was cancelled.
    Normal, not a fault: logged as one line, answered with nothing anyone reads."""
