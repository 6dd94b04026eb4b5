"""What every chat and text completion response and chunk carries, as OpenAI sends it: the
envelope (id, object, created, model) and the usage totals."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from server.chat.generate import ChoiceResult
from server.ids import new_id


@dataclass(frozen=True)
class Envelope:
    id: str
    object: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, id_prefix: str, object: str, model: str) -> Envelope:
        return cls(new_id(id_prefix), object, model)

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }


def usage(results: list[ChoiceResult], n: int) -> dict[str, object]:
    # Each prompt is counted once however many choices it has, as OpenAI does.
    prompt = sum(r.prompt_tokens for r in results[::n])
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": sum(r.cached_tokens for r in results[::n]),
            "cache_write_tokens": sum(r.cache_written_tokens for r in results[::n]),
        },
        # As OpenAI reports them: no reasoning or audio tokens here; prediction tokens when
        # the request carried a prediction (Predicted Outputs).
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": sum(r.accepted_prediction_tokens for r in results),
            "rejected_prediction_tokens": sum(r.rejected_prediction_tokens for r in results),
        },
    }
