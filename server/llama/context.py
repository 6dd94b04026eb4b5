"""The one llama.cpp context: a unified KV cache shared by numbered sequences.

Only the engine thread touches a LlamaContext. Everything here is a thin, typed layer over
llama.cpp's C API; policy (who gets which sequence, what goes in a batch) lives elsewhere.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np

from server.llama.model import LlamaModel
from server.llama.threadpool import ThreadPool


class ContextError(RuntimeError):
    pass


class DecodeStatus:
    """llama_decode's return values (include/llama.h)."""

    OK = 0
    NO_KV_SLOT = 1  # memory restored: free cells and retry
    ABORTED = 2


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int
    n_seq_max: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    # A context that pools embeddings per sequence (the model's pooling) instead of logits.
    embeddings: bool = False


class TokenBatch:
    """A reusable llama_batch; each token belongs to exactly one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n_tokens = 0

    def clear(self) -> None:
        self.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append one token; returns its index, which is also its row in the logits."""
        i = self.n_tokens
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq_id
        raw.logits[i] = logits
        self.n_tokens = i + 1
        return i

    def close(self) -> None:
        if self.raw is not None:
            llama_cpp.llama_batch_free(self.raw)
            self.raw = None


class LlamaContext:
    def __init__(self, model: LlamaModel, params: ContextParams) -> None:
        self.model = model
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = params.n_ctx
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = params.n_ubatch
        cparams.n_seq_max = params.n_seq_max
        cparams.n_threads = params.n_threads
        cparams.n_threads_batch = params.n_threads
        # One cell pool for every sequence: seq_cp then shares cells instead of copying,
        # and any sequence may grow to the whole context.
        cparams.kv_unified = True
        cparams.swa_full = True
        cparams.no_perf = True
        cparams.embeddings = params.embeddings
        self.ptr = llama_cpp.llama_init_from_model(model.ptr, cparams)
        if not self.ptr:
            raise ContextError("llama.cpp could not create a context (see the log above)")
        self.memory = llama_cpp.llama_get_memory(self.ptr)
        self.n_ctx: int = llama_cpp.llama_n_ctx(self.ptr)
        self.n_seq_max: int = params.n_seq_max
        self.n_batch: int = params.n_batch
        self.n_vocab = model.n_vocab
        self.n_embd: int = llama_cpp.llama_model_n_embd(model.ptr)
        self.pooling: int = llama_cpp.llama_pooling_type(self.ptr)
        # What a pooled sequence gives: a vector, or (rank pooling) one score per class.
        self.pooled_size: int = (
            max(1, llama_cpp.llama_model_n_cls_out(model.ptr))
            if self.pooling == llama_cpp.LLAMA_POOLING_TYPE_RANK
            else self.n_embd
        )
        # An encoder-only model (BERT) runs through llama_encode, everything else decode.
        self._encoder_only = bool(
            llama_cpp.llama_model_has_encoder(model.ptr)
            and not llama_cpp.llama_model_has_decoder(model.ptr)
        )
        self._threadpool = ThreadPool(self.ptr, params.n_threads)

    def close(self) -> None:
        if self.ptr:
            self._threadpool.close()
            llama_cpp.llama_free(self.ptr)
            self.ptr = None

    def decode(self, batch: TokenBatch) -> int:
        batch.raw.n_tokens = batch.n_tokens
        return llama_cpp.llama_decode(self.ptr, batch.raw)

    def embed(self, batch: TokenBatch) -> int:
        """Run a batch through an embeddings context (encode or decode, as the model is)."""
        batch.raw.n_tokens = batch.n_tokens
        run = llama_cpp.llama_encode if self._encoder_only else llama_cpp.llama_decode
        return run(self.ptr, batch.raw)

    def sequence_embedding(self, seq_id: int) -> np.ndarray:
        """The pooled embedding of a sequence after embed() (rank pooling: its scores): a
        copy."""
        ptr = llama_cpp.llama_get_embeddings_seq(self.ptr, seq_id)
        if not ptr:
            raise ContextError("the model produced no pooled embedding")
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.pooled_size,)
        ).copy()

    def logits(self, batch_index: int) -> np.ndarray:
        """A view of the logits row for a batch position that asked for logits.

        Valid until the next decode; copy it if it must outlive the step.
        """
        ptr = llama_cpp.llama_get_logits_ith(self.ptr, batch_index)
        if not ptr:
            raise ContextError(f"no logits for batch index {batch_index}")
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )

    # --- sequences in the KV cache --------------------------------------------------------

    def seq_remove(self, seq_id: int, p0: int = -1, p1: int = -1) -> None:
        """Drop seq_id's tag from its cells in [p0, p1) (-1: open end); untagged cells are free."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, p0, p1)

    def seq_copy(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Tag src's cells in [p0, p1) with dst as well: shared, not copied (kv_unified)."""
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_pos_max(self, seq_id: int) -> int:
        """Largest position seq_id holds, or -1 when it holds none."""
        return llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id)

    def clear(self) -> None:
        """Drop every sequence's cells (a model without a KV cache, like BERT, has none)."""
        if self.memory:
            llama_cpp.llama_memory_clear(self.memory, True)

    # --- a sequence's state, copied out and back in ----------------------------------------

    def save_state(self, seq_id: int) -> bytearray | None:
        """A copy of seq_id's KV and positions (llama_state_seq_get_data); None on failure.
        llama.cpp writes straight into the bytearray returned: an entry is tens of MB, and
        a second copy (into bytes) took most of a spill's time."""
        size = llama_cpp.llama_state_seq_get_size(self.ptr, seq_id)
        if size == 0:
            return None
        data = bytearray(size)
        buf = (ctypes.c_uint8 * size).from_buffer(data)
        written = llama_cpp.llama_state_seq_get_data(self.ptr, buf, size, seq_id)
        del buf  # a bytearray with an exported buffer cannot be resized
        if not written:
            return None
        if written < size:
            del data[written:]
        return data

    def load_state(self, seq_id: int, data: bytes | bytearray) -> bool:
        """Put state from save_state into seq_id (which must hold nothing): it takes free
        cells for every token. False when llama.cpp could not (no room, bad data). The
        data is read in place, not copied."""
        n = len(data)
        buf: ctypes.Array[ctypes.c_uint8] | ctypes._Pointer[ctypes.c_uint8]
        if isinstance(data, bytearray):
            buf = (ctypes.c_uint8 * n).from_buffer(data)
        else:  # bytes (read from disk) are immutable: point at them, llama.cpp only reads
            buf = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
        return llama_cpp.llama_state_seq_set_data(self.ptr, buf, n, seq_id) > 0
