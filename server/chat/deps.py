"""What the chat service needs from the server that runs it (server/runtime.py provides
it): named here so the service depends on an interface, not on the composition root."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from retrieval.service import RetrievalService
    from server.chat.prompt import PromptBuilder
    from server.engine.engine import Engine
    from server.llama.model import LlamaModel
    from server.settings import Settings


class ChatRuntime(Protocol):
    settings: Settings
    model: LlamaModel
    model_id: str
    model_aliases: tuple[str, ...]
    engine: Engine
    prompts: PromptBuilder
    retrieval: RetrievalService
