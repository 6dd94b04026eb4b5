"""Convert a BERT-family model (safetensors + WordPiece vocab) to GGUF: a sentence-transformers
embedding model, or a cross-encoder reranker (BertForSequenceClassification, such as
cross-encoder/ms-marco-MiniLM-L6-v2).

Only numpy, safetensors and the `gguf` package: no torch, no transformers. Follows what
llama.cpp's convert_hf_to_gguf.py writes for BertModel with the default 16-bit output
(2-D weights F16; 1-D tensors, norms, position and token-type embeddings F32; the vocab in
"phantom space" form), and also records `tokenizer.ggml.normalizer.lowercase`, which the
gguf package does not write but llama.cpp's WordPiece tokenizer reads.

A cross-encoder keeps its whole head, as transformers computes it: rank pooling takes the
[CLS] state through the pooler (`cls`, dense + tanh) and the classifier (`cls.output`).
llama.cpp's own converter drops the pooler of BertForSequenceClassification, which gives
other scores than the model was trained to give.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

EMBEDDING_ARCHITECTURES = {"BertModel", "BertForMaskedLM"}
RERANKER_ARCHITECTURES = {"BertForSequenceClassification"}
SUPPORTED_ARCHITECTURES = EMBEDDING_ARCHITECTURES | RERANKER_ARCHITECTURES
# A cross-encoder's head, by its transformers name.
_HEAD = {
    "pooler.dense.weight": "cls.weight",
    "pooler.dense.bias": "cls.bias",
    "classifier.weight": "cls.output.weight",
    "classifier.bias": "cls.output.bias",
}
# Dropped as llama.cpp's converter drops them: embeddings only need the encoder.
_SKIPPED = ("embeddings.position_ids", "pooler.", "cls.")


# BERT's markers, for vocabularies that come without tokenizer.json.
_WORDPIECE_SPECIALS = (
    ("bos", "[CLS]"),
    ("sep", "[SEP]"),
    ("pad", "[PAD]"),
    ("unk", "[UNK]"),
    ("mask", "[MASK]"),
)


class ConversionError(ValueError):
    pass


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _pooling_type(model_dir: Path) -> gguf.PoolingType:
    modules = model_dir / "modules.json"
    if modules.is_file():
        for module in _read_json(modules):
            if str(module.get("type", "")).endswith("Pooling"):
                config = _read_json(model_dir / module["path"] / "config.json")
                if config.get("pooling_mode_cls_token"):
                    return gguf.PoolingType.CLS
                if config.get("pooling_mode_lasttoken"):
                    return gguf.PoolingType.LAST
                return gguf.PoolingType.MEAN
    return gguf.PoolingType.MEAN


def _vocab(model_dir: Path) -> tuple[list[str], list[int], bool]:
    """Tokens in id order (phantom-space form), their types, and whether to lowercase."""
    vocab_file = model_dir / "vocab.txt"
    if not vocab_file.is_file():
        raise ConversionError(f"{model_dir} has no vocab.txt (a WordPiece vocabulary)")
    tokens = vocab_file.read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    special: set[str] = set()
    lowercase = True
    special_map = model_dir / "special_tokens_map.json"
    if special_map.is_file():
        for value in _read_json(special_map).values():
            content = value.get("content") if isinstance(value, dict) else value
            if isinstance(content, str):
                special.add(content)
    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        tok = _read_json(tokenizer_json)
        special |= {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
        lowercase = bool((tok.get("normalizer") or {}).get("lowercase", True))
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        lowercase = bool(_read_json(config_file).get("do_lower_case", lowercase))
    types = []
    out = []
    for token in tokens:
        if token in special:
            types.append(gguf.TokenType.CONTROL)
            out.append(token)
        else:
            types.append(gguf.TokenType.NORMAL)
            # WordPiece continuation pieces lose "##"; word starts get the phantom space.
            out.append(token[2:] if token.startswith("##") else "\u2581" + token)
    return out, types, lowercase


def _tensor_type(name: str, array: np.ndarray) -> type[np.floating]:
    if array.ndim <= 1 or name.endswith("_norm.weight"):
        return np.float32
    if name.startswith(("position_embd.", "token_types.")):
        return np.float32
    return np.float16


def convert(model_dir: str | Path, out_file: str | Path, name: str | None = None) -> Path:
    model_dir, out_file = Path(model_dir), Path(out_file)
    config_file = model_dir / "config.json"
    weights_file = model_dir / "model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise ConversionError(f"{model_dir} needs config.json and model.safetensors")
    config = _read_json(config_file)
    archs = set(config.get("architectures") or [])
    if not archs & SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"{model_dir}: architecture {sorted(archs)} is not a BERT model "
            f"(supported: {sorted(SUPPORTED_ARCHITECTURES)})"
        )
    reranker = bool(archs & RERANKER_ARCHITECTURES)
    n_layers = int(config["num_hidden_layers"])
    tokens, types, lowercase = _vocab(model_dir)
    if len(tokens) != int(config.get("vocab_size", len(tokens))):
        raise ConversionError(
            f"vocab.txt has {len(tokens)} tokens but config.json says {config['vocab_size']}"
        )

    out_file.parent.mkdir(parents=True, exist_ok=True)
    # Named for this process: two processes preparing the same model at once (replicas
    # starting together) each write their own file, and the last rename wins whole.
    tmp_file = out_file.with_suffix(f"{out_file.suffix}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layers)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_causal_attention(False)
    if reranker:
        writer.add_pooling_type(gguf.PoolingType.RANK)
        labels = config.get("id2label") or {"0": "LABEL_0"}
        n_labels = int(config.get("num_labels", len(labels)))
        writer.add_classifier_output_labels(
            [str(labels.get(str(i), f"LABEL_{i}")) for i in range(n_labels)]
        )
    else:
        writer.add_pooling_type(_pooling_type(model_dir))
    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bool(
        gguf.Keys.Tokenizer.NORMALIZER_LOWERCASE
        if hasattr(gguf.Keys.Tokenizer, "NORMALIZER_LOWERCASE")
        else "tokenizer.ggml.normalizer.lowercase",
        lowercase,
    )
    # SpecialVocab warns that it has no key for [CLS]; llama.cpp takes it as BOS anyway.
    vocab_logger = logging.getLogger("gguf.vocab")
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)
    try:
        special_vocab = gguf.SpecialVocab(model_dir, n_vocab=len(tokens))
    finally:
        vocab_logger.setLevel(level)
    # Without tokenizer.json the ids of [CLS] and [SEP] are not found, and llama.cpp would
    # fall back to BERT's usual 101 and 102: take them from the vocabulary itself.
    index = {t: i for i, t in enumerate(tokens)}
    for kind, token in _WORDPIECE_SPECIALS:
        if kind not in special_vocab.special_token_ids and token in index:
            special_vocab.special_token_ids[kind] = index[token]
    special_vocab.add_to_gguf(writer, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    for hf_name, array in load_file(str(weights_file)).items():
        hf_name = hf_name.removeprefix("bert.")
        if reranker and hf_name in _HEAD:
            head = _HEAD[hf_name]
            writer.add_tensor(head, array.astype(np.float16 if array.ndim > 1 else np.float32))
            continue
        if hf_name.startswith(_SKIPPED):
            continue
        hf_name = hf_name.replace(".gamma", ".weight").replace(".beta", ".bias")
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ConversionError(f"no GGUF name for tensor {hf_name!r}")
        writer.add_tensor(new_name, array.astype(_tensor_type(new_name, array)))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp_file.replace(out_file)  # never leave a half-written model behind
    return out_file
