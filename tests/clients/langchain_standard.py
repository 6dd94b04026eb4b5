"""LangChain's own standard integration tests (`langchain-tests`), the suite every LangChain
chat model and embeddings integration must pass, run against a Hearth server through
`ChatOpenAI` and `OpenAIEmbeddings` pointed at it, as a user would configure them.

Run by tests/test_langchain_standard.py in `.venv-langchain` (`make clients`), with the
server's address and model ids in HEARTH_URL, HEARTH_CHAT_MODEL, HEARTH_EMBEDDING_MODEL.
"""

from __future__ import annotations

import os
from typing import Any

from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests

BASE_URL = os.environ["HEARTH_URL"].rstrip("/") + "/v1"


class TestHearthChat(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Greedy, so that what a small model writes is the same on every run.
        return {
            "model": os.environ["HEARTH_CHAT_MODEL"],
            "base_url": BASE_URL,
            "api_key": "unused",
            "temperature": 0,
            "max_tokens": 256,
            "stream_usage": True,
        }

    @property
    def tool_choice_value(self) -> str:
        # The suite's way for models that need to be told to call a tool: "any" is OpenAI's
        # tool_choice "required", which Hearth enforces with a grammar.
        return "any"

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False


class TestHearthEmbeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[OpenAIEmbeddings]:
        return OpenAIEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        # check_embedding_ctx_length=False: otherwise the client tokenizes with tiktoken
        # (OpenAI's vocabularies, fetched from the internet) and sends token ids.
        return {
            "model": os.environ["HEARTH_EMBEDDING_MODEL"],
            "base_url": BASE_URL,
            "api_key": "unused",
            "check_embedding_ctx_length": False,
        }
