"""Token log-probabilities in OpenAI's two wire shapes (chat and legacy completions)."""

from __future__ import annotations

from typing import Any

from server.engine.logprobs import TokenLogprob
from server.llama.model import LlamaModel


def _piece(model: LlamaModel, token: int) -> tuple[str, list[int]]:
    raw = model.token_bytes(token)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(model: LlamaModel, items: list[TokenLogprob]) -> dict[str, Any]:
    """choice.logprobs of a chat completion: {"content": [...], "refusal": None}."""
    content = []
    for item in items:
        text, raw = _piece(model, item.token)
        top = []
        for token, logprob in item.top:
            t_text, t_raw = _piece(model, token)
            top.append({"token": t_text, "logprob": logprob, "bytes": t_raw})
        content.append({"token": text, "logprob": item.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content, "refusal": None}


def echo_logprobs(
    model: LlamaModel,
    first_token: int,
    prompt: list[TokenLogprob],
    completion: list[TokenLogprob],
) -> dict[str, Any]:
    """completion_logprobs over prompt + completion; the first prompt token has nothing
    before it to be scored against, so its entries are null (as OpenAI and vLLM send)."""
    first_text, _ = _piece(model, first_token)
    rest = completion_logprobs(model, [*prompt, *completion], text_offset=len(first_text))
    return {
        "tokens": [first_text, *rest["tokens"]],
        "token_logprobs": [None, *rest["token_logprobs"]],
        "top_logprobs": [None, *rest["top_logprobs"]],
        "text_offset": [0, *rest["text_offset"]],
    }


def completion_logprobs(
    model: LlamaModel, items: list[TokenLogprob], text_offset: int = 0
) -> dict[str, Any]:
    """choice.logprobs of a text completion: parallel lists, as the legacy API has them."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    for item in items:
        text, _ = _piece(model, item.token)
        tokens.append(text)
        token_logprobs.append(item.logprob)
        top_logprobs.append({_piece(model, t)[0]: lp for t, lp in item.top})
        offsets.append(text_offset)
        text_offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }
