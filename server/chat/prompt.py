"""Prompt text into prompt tokens: chat messages through the model's template, plain text
as it is.

In a chat prompt only the template's own markup becomes special tokens; client text that
spells one stays text (special_tokens.py). A text prompt (/v1/completions) is the client's
own, and its special tokens are parsed, as llama-server does.
"""

from __future__ import annotations

from typing import Any

from server.chat.special_tokens import SpecialTokenGuard, new_marker, tokenize_pieces
from server.chat.template import ChatTemplate
from server.llama.model import LlamaModel


class PromptBuilder:
    def __init__(self, model: LlamaModel, template: ChatTemplate) -> None:
        self.model = model
        self.template = template
        self.special_tokens = SpecialTokenGuard(model.special_texts)

    def chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render messages with the chat template and tokenize the prompt; BOS is added
        only when the template did not write it already. Raises ChatTemplateError."""
        marker = new_marker()
        text = self.template.render(self.special_tokens.defang(messages, marker))
        bos_text = self.template.bos_token
        add_bos = self.model.add_bos and not (bos_text and text.startswith(bos_text))

        def tokenize(piece: str, first: bool) -> list[int]:
            return self.model.tokenize(piece, add_special=add_bos and first, parse_special=True)

        return tokenize_pieces(text, marker, tokenize)

    def text(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=self.model.add_bos, parse_special=True)
