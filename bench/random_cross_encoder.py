"""A random cross-encoder in transformers' layout (BertForSequenceClassification:
config.json, model.safetensors, vocab.txt), for tests of `hearth models convert`, the
reranker and /v1/rerank without any download, and for the reranker's latency in the bench
(at MiniLM-L6's size it costs what cross-encoder/ms-marco-MiniLM-L6-v2 costs). Its scores
mean nothing, but they are the scores of a real llama.cpp rank-pooling model, fixed by the
seed: a test can check that search puts first what the reranker scores highest.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Size:
    hidden: int = 32
    layers: int = 2
    heads: int = 2
    ffn: int = 64
    positions: int = 128
    vocab: int = 0  # pad the vocabulary with filler pieces up to this many tokens


TINY = Size()
MINILM_L6 = Size(hidden=384, layers=6, heads=12, ffn=1536, positions=512, vocab=30522)


def write_random_cross_encoder(
    directory: Path, words: list[str], size: Size = TINY, seed: int = 5
) -> Path:
    """A model directory whose WordPiece vocabulary holds the given words (lowercased),
    every letter, digit and punctuation mark, and their ## continuations."""
    HIDDEN, LAYERS, HEADS, FFN, POSITIONS = (
        size.hidden,
        size.layers,
        size.heads,
        size.ffn,
        size.positions,
    )
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = list(
        dict.fromkeys(SPECIAL + [w.lower() for w in words] + chars + ["##" + c for c in chars])
    )
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "id2label": {"0": "LABEL_0"},
        "label2id": {"LABEL_0": 0},
        "num_labels": 1,
    }
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True}), encoding="utf-8"
    )
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "unk_token": "[UNK]",
                "mask_token": "[MASK]",
            }
        ),
        encoding="utf-8",
    )
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    tensors = {
        "bert.embeddings.word_embeddings.weight": w(len(vocab), HIDDEN),
        "bert.embeddings.position_embeddings.weight": w(POSITIONS, HIDDEN),
        "bert.embeddings.token_type_embeddings.weight": w(2, HIDDEN),
        "bert.embeddings.LayerNorm.weight": np.ones(HIDDEN, np.float32),
        "bert.embeddings.LayerNorm.bias": np.zeros(HIDDEN, np.float32),
        "bert.pooler.dense.weight": w(HIDDEN, HIDDEN),
        "bert.pooler.dense.bias": w(HIDDEN),
        "classifier.weight": w(1, HIDDEN) * 10,
        "classifier.bias": w(1),
    }
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            tensors[p + name + ".weight"] = w(HIDDEN, HIDDEN)
            tensors[p + name + ".bias"] = w(HIDDEN)
        tensors[p + "attention.output.dense.weight"] = w(HIDDEN, HIDDEN)
        tensors[p + "attention.output.dense.bias"] = w(HIDDEN)
        tensors[p + "attention.output.LayerNorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[p + "attention.output.LayerNorm.bias"] = np.zeros(HIDDEN, np.float32)
        tensors[p + "intermediate.dense.weight"] = w(FFN, HIDDEN)
        tensors[p + "intermediate.dense.bias"] = w(FFN)
        tensors[p + "output.dense.weight"] = w(HIDDEN, FFN)
        tensors[p + "output.dense.bias"] = w(HIDDEN)
        tensors[p + "output.LayerNorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[p + "output.LayerNorm.bias"] = np.zeros(HIDDEN, np.float32)
    save_file(tensors, str(directory / "model.safetensors"))
    return directory
