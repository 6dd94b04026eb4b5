"""A loaded GGUF model: weights, vocabulary, tokenizer and metadata.

Read-only after loading, so tokenizing from the API's thread while the engine thread
decodes is safe (llama.cpp's vocab is immutable; llama-server does the same).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

_backend_ready = False
_PARSED_AS_SPECIAL = (
    llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
)


class ModelLoadError(RuntimeError):
    """The GGUF could not be loaded; the message names the file."""


def _ensure_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    description: str
    n_ctx_train: int
    n_vocab: int
    size_bytes: int
    n_params: int


class LlamaModel:
    def __init__(self, path: str | Path, n_gpu_layers: int = -1) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        _ensure_backend()
        params = llama_cpp.llama_model_default_params()
        # Negative means all layers, as llama.h says. (A huge count instead, which older
        # llama.cpp wanted, makes this one crash while placing layers on a GPU.)
        params.n_gpu_layers = -1 if n_gpu_layers < 0 else n_gpu_layers
        self.ptr = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.ptr:
            raise ModelLoadError(f"llama.cpp could not load {self.path} (see the log above)")
        self.n_layer: int = llama_cpp.llama_model_n_layer(self.ptr)
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.add_bos: bool = (
            bool(llama_cpp.llama_vocab_get_add_bos(self.vocab)) and self.bos_token is not None
        )
        self._special_ok = self._can_add_special()
        self._pieces: dict[int, bytes] = {}
        self.eog_tokens: frozenset[int] = frozenset(
            t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)
        )
        # What llama_tokenize(parse_special=True) turns into a control token when the text
        # spells it (llama.cpp's own cache_special_tokens: control, user-defined, unknown).
        self.special_texts: frozenset[str] = frozenset(
            text
            for t in range(self.n_vocab)
            if llama_cpp.llama_vocab_get_attr(self.vocab, t) & _PARSED_AS_SPECIAL
            and (text := self.token_text(t))
        )
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.ptr, desc, len(desc))
        self.info = ModelInfo(
            path=self.path,
            description=desc.value.decode("utf-8", errors="replace"),
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(self.ptr),
            n_vocab=self.n_vocab,
            size_bytes=llama_cpp.llama_model_size(self.ptr),
            n_params=llama_cpp.llama_model_n_params(self.ptr),
        )

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    # --- metadata -------------------------------------------------------------------------

    def metadata(self, key: str) -> str | None:
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def token_text(self, token: int | None) -> str:
        """The vocabulary entry itself (e.g. "<|im_end|>"), special tokens included; ""
        for None or an id outside the vocabulary (llama.cpp aborts on those)."""
        if token is None or not self.is_valid_token(token):
            return ""
        raw = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    # llama.cpp answers -1 (LLAMA_TOKEN_NULL) for a token the model does not have; every
    # call that takes a token id aborts on it, so it never leaves this class.
    @property
    def bos_token(self) -> int | None:
        return self._present(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos_token(self) -> int | None:
        return self._present(llama_cpp.llama_vocab_eos(self.vocab))

    @property
    def sep_token(self) -> int | None:
        return self._present(llama_cpp.llama_vocab_sep(self.vocab))

    @property
    def adds_eos(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_eos(self.vocab)) and self.eos_token is not None

    @property
    def adds_sep(self) -> bool:
        return bool(llama_cpp.llama_vocab_get_add_sep(self.vocab)) and self.sep_token is not None

    @property
    def is_wordpiece(self) -> bool:
        """BERT's tokenizer: inputs are [CLS] ... [SEP], pairs [CLS] a [SEP] b [SEP]."""
        return llama_cpp.llama_vocab_type(self.vocab) == llama_cpp.LLAMA_VOCAB_TYPE_WPM

    def named_template(self, name: str) -> str | None:
        """A named template the GGUF carries (e.g. "rerank": how a reranker wants a
        query and a document laid out, with {query} and {document})."""
        raw = llama_cpp.llama_model_chat_template(self.ptr, name.encode())
        return raw.decode("utf-8", errors="replace") if raw else None

    def _present(self, token: int) -> int | None:
        return token if self.is_valid_token(token) else None

    def _can_add_special(self) -> bool:
        """Whether llama_tokenize(add_special=True) is safe: it asserts (and aborts the
        process) when the vocabulary asks for a BOS, EOS or SEP token it does not have."""
        vocab = self.vocab
        needed = []
        if llama_cpp.llama_vocab_get_add_bos(vocab):
            needed.append(llama_cpp.llama_vocab_bos(vocab))
        if llama_cpp.llama_vocab_get_add_eos(vocab):
            needed.append(llama_cpp.llama_vocab_eos(vocab))
        if llama_cpp.llama_vocab_get_add_sep(vocab):
            needed.append(llama_cpp.llama_vocab_sep(vocab))
        if llama_cpp.llama_vocab_type(vocab) == llama_cpp.LLAMA_VOCAB_TYPE_WPM:
            needed += [llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_sep(vocab)]
        return all(self.is_valid_token(t) for t in needed)

    # --- tokenizer ------------------------------------------------------------------------

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        data = text.encode("utf-8")
        add_special = add_special and self._special_ok
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if n < 0:  # buffer too small: llama.cpp says how many it needs
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """The bytes a generated token stands for; special tokens render as nothing."""
        piece = self._pieces.get(token)
        if piece is None:
            if not self.is_valid_token(token):
                raise ValueError(f"token {token} is outside the vocabulary")
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def is_valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab
