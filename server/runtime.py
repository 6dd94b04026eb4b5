"""Everything a running server holds: settings, the model, its chat template and the engine."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.chat_template import CHATML_TEMPLATE, ChatTemplate
from server.engine.embedder import Embedder
from server.engine.engine import Engine, EngineConfig
from server.engine.model import LlamaModel
from server.model_files import (
    DEFAULT_EMBEDDING_NAME,
    resolve_chat_model,
    resolve_embedding_model,
)
from server.settings import Settings
from server.special_tokens import SpecialTokenGuard, new_marker, tokenize_pieces

logger = logging.getLogger("hearth")


@dataclass
class Runtime:
    settings: Settings
    model: LlamaModel
    model_id: str
    template: ChatTemplate
    engine: Engine
    created: int
    embedder: Embedder | None = None
    embedding_model_id: str = ""

    def __post_init__(self) -> None:
        self.special_tokens = SpecialTokenGuard(self.model.special_texts)

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        path = resolve_chat_model(settings.model.path)
        model = LlamaModel(path, n_gpu_layers=settings.model.n_gpu_layers)
        ms, es, cs = settings.model, settings.engine, settings.cache
        context_length = ms.context_length or min(ms.n_ctx, model.info.n_ctx_train or ms.n_ctx)
        engine = Engine(
            model,
            EngineConfig(
                n_ctx=ms.n_ctx,
                context_length=context_length,
                max_running=es.max_running,
                max_waiting=es.max_waiting,
                step_token_budget=es.step_token_budget,
                n_batch=ms.n_batch,
                n_ubatch=ms.n_ubatch,
                n_threads=ms.n_threads or os.cpu_count() or 1,
                cache_entries=cs.max_entries if cs.enabled else 0,
                cache_cells=cs.max_cells,
                cache_dir=Path(cs.persist_dir).expanduser() if cs.persist_dir else None,
                cache_dir_max_bytes=cs.persist_max_mb << 20,
            ),
        )
        source = ms.chat_template or model.metadata("tokenizer.chat_template")
        if not source:
            logger.warning("%s has no chat template; using ChatML", path.name)
            source = CHATML_TEMPLATE
        template = ChatTemplate(
            source,
            bos_token=model.token_text(model.bos_token),
            eos_token=model.token_text(model.eos_token),
        )
        model_id = ms.alias or path.name.removesuffix(".gguf")
        logger.info(
            "loaded %s (%s): %d KV cells, %d tokens per request, %d parallel sequences",
            model_id,
            model.info.description,
            engine.ctx.n_ctx,
            engine.context_length,
            es.max_running,
        )
        runtime = cls(settings, model, model_id, template, engine, int(time.time()))
        if settings.embedding.enabled:
            runtime._load_embedder()
        return runtime

    def _load_embedder(self) -> None:
        es = self.settings.embedding
        path = resolve_embedding_model(es.path, self.settings.storage.resolved_data_dir())
        model = LlamaModel(path, n_gpu_layers=self.settings.model.n_gpu_layers)
        threads = self.settings.model.n_threads or os.cpu_count() or 1
        self.embedder = Embedder(model, es.n_ctx, es.n_seq_max, threads)
        default_name = DEFAULT_EMBEDDING_NAME if not es.path else path.name.removesuffix(".gguf")
        self.embedding_model_id = es.alias or default_name
        logger.info(
            "loaded embedding model %s (%d dimensions)", self.embedding_model_id, self.embedder.dim
        )

    def chat_prompt_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render messages with the chat template and tokenize the prompt: the template's
        markup becomes special tokens, client text never does (special_tokens.py); BOS is
        added only when the template did not write it already. Raises ChatTemplateError."""
        marker = new_marker()
        text = self.template.render(self.special_tokens.defang(messages, marker))
        bos_text = self.template.bos_token
        add_bos = self.model.add_bos and not (bos_text and text.startswith(bos_text))

        def tokenize(piece: str, first: bool) -> list[int]:
            return self.model.tokenize(piece, add_special=add_bos and first, parse_special=True)

        return tokenize_pieces(text, marker, tokenize)

    def text_prompt_tokens(self, text: str) -> list[int]:
        return self.model.tokenize(text, add_special=self.model.add_bos, parse_special=True)

    def problems(self) -> list[str]:
        """Why the server cannot serve everything it should (empty: it can)."""
        out = []
        if not self.engine.alive:
            out.append(self.engine.failure or "the engine is not running")
        if self.embedder is not None and not self.embedder.alive:
            out.append(self.embedder.failure or "the embedding engine is not running")
        return out

    def start(self) -> None:
        self.engine.start()
        if self.embedder is not None:
            self.embedder.start()

    def close(self) -> None:
        self.engine.stop()
        self.model.close()
        if self.embedder is not None:
            self.embedder.stop()
            self.embedder.model.close()
