"""Which chat models this server can serve: the configured default, the `[[models.entries]]`
of the configuration and every `*.gguf` under `models.dir`. Each is described without
loading it (the GGUF header only), so a folder of large files lists in milliseconds; a file
that cannot be read is listed with the reason instead of failing the server.

The memory a model needs once loaded is estimated from its file and its KV cache:
file size + n_ctx x layers x 2 (K and V) x KV width x 2 bytes (f16 cells), where the KV
width is embedding length / heads x KV heads (grouped-query attention). Compute buffers
(tens of MB for small models) are not counted.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from server.model_files import packaged_chat_model, resolve_chat_model
from server.settings import ModelEntry, Settings

logger = logging.getLogger("hearth")

# Architectures whose GGUFs are encoders: they make embeddings, not chat.
EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder"}
)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    path: Path
    aliases: tuple[str, ...] = ()
    kind: str = "chat"  # chat | embedding
    architecture: str = ""
    size_bytes: int = 0
    n_ctx_train: int = 0
    # What the model's KV cache costs per cell (bytes, f16), from its metadata.
    kv_bytes_per_cell: int = 0
    quantization: str = ""  # Q8_0, Q4_K_M, F16, ...
    n_params: int = 0
    # Per-model settings; 0 / None: the server's (model.n_ctx, engine.max_running, ...).
    n_ctx: int = 0
    context_length: int = 0
    max_running: int = 0
    n_gpu_layers: int | None = None
    chat_template: str = ""
    pinned: bool = False
    keep_alive: float | None = None  # seconds; None: models.keep_alive
    # Why it cannot be served (unreadable file, not a chat model); None: it can.
    problem: str | None = None
    default: bool = False  # the configured model: loaded at start-up
    source: str = "folder"  # default | config | folder
    names: frozenset[str] = field(default_factory=frozenset)

    def memory_estimate(self, n_ctx: int) -> int:
        return self.size_bytes + n_ctx * self.kv_bytes_per_cell


# GGUF metadata value types (gguf.GGUFValueType) and the struct formats of the scalars.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
# Far above any real model's header; a file claiming more is corrupt.
_MAX_COUNT = 1 << 24


class _Header:
    """Reads a GGUF file's header (metadata and tensor shapes) and nothing else: the
    gguf package's reader also maps every tensor and decodes the vocabulary, seconds for
    a small model, too slow to list a folder of them."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size

    def take(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        data = self.f.read(n)
        if len(data) != n:
            raise ValueError("the file ends inside its header")
        return struct.unpack(fmt, data)[0]

    def count(self) -> int:
        n = self.take("<Q")
        if n > _MAX_COUNT:
            raise ValueError(f"a count of {n} in its header")
        return n

    def string(self, keep: bool = True) -> str:
        n = self.take("<Q")
        if n > self.size:
            raise ValueError("a string longer than the file")
        if not keep:
            self.f.seek(n, 1)
            return ""
        return self.f.read(n).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool = True) -> Any:
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string(keep)
        if kind == _ARRAY:  # vocabularies and the like: skipped, not kept
            inner, n = self.take("<I"), self.count()
            if inner in _SCALARS:
                self.f.seek(n * struct.calcsize(_SCALARS[inner]), 1)
            else:
                for _ in range(n):
                    self.value(inner, keep=False)
            return None
        raise ValueError(f"an unknown metadata type {kind}")


def read_header(path: Path) -> tuple[dict[str, Any], list[int]]:
    """The scalar metadata of a GGUF file and its tensors' element counts; ValueError
    with the reason when the file is not a readable GGUF."""
    try:
        with path.open("rb") as f:
            h = _Header(f, path.stat().st_size)
            if f.read(4) != b"GGUF":
                raise ValueError("it does not start with GGUF's magic bytes")
            version = h.take("<I")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version} is not supported")
            n_tensors, n_kv = h.count(), h.count()
            metadata = {}
            for _ in range(n_kv):
                key = h.string()
                value = h.value(h.take("<I"))
                if value is not None:
                    metadata[key] = value
            elements = []
            for _ in range(n_tensors):
                h.string(keep=False)
                n_dims = h.take("<I")
                if n_dims > 8:
                    raise ValueError(f"a tensor with {n_dims} dimensions")
                dims = [h.take("<Q") for _ in range(n_dims)]
                h.take("<I")  # type
                h.take("<Q")  # offset
                elements.append(math.prod(dims))
            return metadata, elements
    except OSError as e:
        raise ValueError(f"the file cannot be read: {e.strerror or e}") from None
    except (ValueError, struct.error) as e:
        raise ValueError(f"not a readable GGUF file: {e}") from None


def describe(path: Path) -> dict[str, object]:
    """Architecture, training context, KV size per cell, quantization and parameter count,
    from the GGUF header; ValueError with the reason for a file that is no chat model."""
    metadata, elements = read_header(path)
    arch = str(metadata.get("general.architecture") or "")
    if not arch:
        raise ValueError("not a model GGUF: it names no architecture")

    def number(key: str) -> int:
        v = metadata.get(f"{arch}.{key}")
        return int(v) if isinstance(v, int | float) else 0

    n_layer = number("block_count")
    n_embd = number("embedding_length")
    n_head = number("attention.head_count") or 1
    n_head_kv = number("attention.head_count_kv") or n_head
    head_k = number("attention.key_length") or n_embd // n_head
    head_v = number("attention.value_length") or n_embd // n_head
    try:
        import gguf

        quantization = gguf.LlamaFileType(metadata.get("general.file_type")).name
    except ValueError:
        quantization = ""
    return {
        "architecture": arch,
        "n_ctx_train": number("context_length"),
        "kv_bytes_per_cell": n_layer * n_head_kv * (head_k + head_v) * 2,
        "quantization": quantization.removeprefix("MOSTLY_"),
        "n_params": sum(elements),
    }


def _spec(model_id: str, path: Path, source: str, entry: ModelEntry | None = None) -> ModelSpec:
    spec = ModelSpec(id=model_id, path=path, source=source)
    if entry is not None:
        spec = replace(
            spec,
            n_ctx=entry.n_ctx,
            context_length=entry.context_length,
            max_running=entry.max_running,
            n_gpu_layers=entry.n_gpu_layers,
            chat_template=entry.chat_template,
            pinned=entry.pinned,
            keep_alive=entry.keep_alive,
        )
    try:
        size = path.stat().st_size
    except OSError as e:
        return replace(spec, problem=f"the file cannot be read: {e.strerror or e}")
    try:
        facts = describe(path)
    except ValueError as e:
        return replace(spec, size_bytes=size, problem=str(e))
    kind = "embedding" if facts["architecture"] in EMBEDDING_ARCHITECTURES else "chat"
    return replace(
        spec,
        size_bytes=size,
        kind=kind,
        architecture=str(facts["architecture"]),
        n_ctx_train=int(facts["n_ctx_train"]),  # type: ignore[call-overload]
        kv_bytes_per_cell=int(facts["kv_bytes_per_cell"]),  # type: ignore[call-overload]
        quantization=str(facts["quantization"]),
        n_params=int(facts["n_params"]),  # type: ignore[call-overload]
        problem=None if kind == "chat" else "an embedding model, not a chat model",
    )


def discover(settings: Settings) -> dict[str, ModelSpec]:
    """Every chat model this server knows, by id: the default first."""
    specs: dict[str, ModelSpec] = {}
    data_dir = settings.storage.resolved_data_dir()
    ms = settings.model
    default_path = resolve_chat_model(ms.path, data_dir)
    default_id = ms.alias or default_path.name.removesuffix(".gguf")
    aliases: tuple[str, ...] = ()
    if not ms.path and default_path != (original := packaged_chat_model()):
        aliases = (original.name.removesuffix(".gguf"),)
    specs[default_id] = replace(
        _spec(default_id, default_path, "default"),
        aliases=aliases,
        pinned=True,
        default=True,
        chat_template=ms.chat_template,
    )
    seen = {default_path.resolve()}
    for entry in settings.models.entries:
        path = Path(entry.path).expanduser()
        model_id = entry.alias or path.name.removesuffix(".gguf")
        if model_id in specs:
            logger.warning("models.entries: %s names the id %r twice; ignored", path, model_id)
            continue
        specs[model_id] = _spec(model_id, path, "config", entry)
        seen.add(path.resolve())
    if settings.models.dir:
        folder = Path(settings.models.dir).expanduser()
        for path in sorted(folder.rglob("*.gguf")) if folder.is_dir() else []:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            model_id = path.name.removesuffix(".gguf")
            if model_id in specs:  # the same name in two subfolders: the path tells them apart
                model_id = str(path.relative_to(folder)).removesuffix(".gguf")
            specs[model_id] = _spec(model_id, path, "folder")
    return {
        model_id: replace(spec, names=frozenset({spec.id, *spec.aliases}))
        for model_id, spec in specs.items()
    }
