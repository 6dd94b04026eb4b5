"""Embeddings as clients send them (issue 21): one text a request, and batches of 16 and 64
texts a request as LangChain and LlamaIndex send them, Hearth against llama-server on the
same GGUF, rounds alternated.

    python -m bench.embeddings [--write docs/benchmarks.md] [--rounds 2] [--texts 192]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench.embed_load import EmbedResult, chunks, run_embed_load
from bench.peer_build import build_llama_server
from bench.report import write_section
from bench.servers import ServerProcess, start_hearth, start_llama_server_embeddings
from server.host_resources import threads
from server.model_files import prepare_default_embedding_model
from server.settings import load_settings

# (texts per request, requests in flight)
WORKLOADS = ((1, 1), (1, 8), (16, 1), (16, 4), (64, 1), (64, 4))


def measure(
    server: ServerProcess, model: str, texts: list[str]
) -> dict[tuple[int, int], EmbedResult]:
    asyncio.run(run_embed_load(server.url, model, texts[:16], 2, 8))  # warm-up
    return {
        (per, conc): asyncio.run(run_embed_load(server.url, model, texts, conc, per))
        for per, conc in WORKLOADS
    }


def render(
    best: dict[str, dict[tuple[int, int], EmbedResult]], rounds: int, n_texts: int, tokens: int
) -> str:
    lines = [
        "## Embeddings as clients batch them (`python -m bench.embeddings`)",
        "",
        f"{n_texts} distinct chunks of about {tokens // n_texts} tokens (ingestion's chunk size), "
        "sent one or several per request; the default all-MiniLM-L6-v2 GGUF on both servers; "
        f"best of {rounds} alternated rounds. llama-server: `--embedding --pooling mean -np 8 "
        "-c 4096 -b 512 -ub 512 --kv-unified` (the batch size fastest for both).",
        "",
        "| texts a request | concurrency | Hearth texts/s | llama-server texts/s "
        "| Hearth / llama-server |",
        "|---|---|---|---|---|",
    ]
    for per, conc in WORKLOADS:
        h, p = best["hearth"][(per, conc)], best.get("llama-server", {}).get((per, conc))
        peer = (
            f"{p.texts_per_second:.1f} | {h.texts_per_second / p.texts_per_second:.2f}x"
            if p
            else "- | -"
        )
        lines.append(f"| {per} | {conc} | {h.texts_per_second:.1f} | {peer} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.embeddings")
    p.add_argument("--write", type=Path)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--texts", type=int, default=192)
    p.add_argument("--no-peers", action="store_true")
    args = p.parse_args(argv)
    settings = load_settings()
    embed_path = prepare_default_embedding_model(settings.storage.resolved_data_dir())
    texts = chunks(args.texts)
    best: dict[str, dict[tuple[int, int], EmbedResult]] = {}
    tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        starts = {"hearth": lambda: start_hearth(logs)}
        if not args.no_peers and build_llama_server() is not None:
            es = settings.embedding
            starts["llama-server"] = lambda: start_llama_server_embeddings(
                logs, embed_path, 8, 4096, es.n_ctx, threads(settings)
            )
        for i in range(args.rounds):
            for label, start in starts.items():
                print(f"embeddings round {i + 1}: {label} ...", flush=True)
                server = start()
                try:
                    model = "all-MiniLM-L6-v2" if label == "hearth" else "default"
                    results = measure(server, model, texts)
                finally:
                    server.stop()
                mine = best.setdefault(label, {})
                for key, r in results.items():
                    tokens = r.tokens
                    if key not in mine or r.texts_per_second > mine[key].texts_per_second:
                        mine[key] = r
    text = render(best, args.rounds, len(texts), tokens)
    print(text)
    if args.write:
        write_section(args.write, "embeddings-batched", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
