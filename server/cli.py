"""The `hearth` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from server.settings import ConfigError, Settings, load_settings

# CLI flag → (config section, key). Flags left unset do not override anything.
SERVE_FLAGS: dict[str, tuple[str, str]] = {
    "model": ("model", "path"),
    "alias": ("model", "alias"),
    "n_ctx": ("model", "n_ctx"),
    "context_length": ("model", "context_length"),
    "n_gpu_layers": ("model", "n_gpu_layers"),
    "threads": ("model", "n_threads"),
    "chat_template": ("model", "chat_template"),
    "parallel": ("engine", "max_running"),
    "max_waiting": ("engine", "max_waiting"),
    "speculative": ("speculative", "enabled"),
    "cache": ("cache", "enabled"),
    "cache_entries": ("cache", "max_entries"),
    "cache_cells": ("cache", "max_cells"),
    "cache_ram_mb": ("cache", "ram_mb"),
    "cache_dir": ("cache", "persist_dir"),
    "data_dir": ("storage", "data_dir"),
    "rerank_model": ("retrieval", "rerank_model"),
    "host": ("server", "host"),
    "port": ("server", "port"),
    "api_key": ("server", "api_key"),
    "api_key_file": ("server", "api_key_file"),
    "allow_insecure_remote": ("server", "allow_insecure_remote"),
    "cors_origins": ("server", "cors_origins"),
    "drain_seconds": ("server", "drain_seconds"),
    "log_level": ("server", "log_level"),
    "replicas": ("cluster", "replicas"),
    "router": ("cluster", "router"),
}


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible server")
    p.add_argument("--config", help="TOML file layered over config/default.toml")
    p.add_argument("--model", "-m", help="GGUF chat model (default: packaged SmolLM2-135M)")
    p.add_argument("--alias", help="model id clients use (default: file name)")
    p.add_argument("--n-ctx", type=int, help="KV cells shared by all sequences")
    p.add_argument("--context-length", type=int, help="max prompt + completion per request")
    p.add_argument("--n-gpu-layers", type=int, help="layers on the GPU (-1: all)")
    p.add_argument("--threads", type=int, help="CPU threads (0: all cores)")
    p.add_argument("--chat-template", help="Jinja chat template overriding the GGUF's")
    p.add_argument("--parallel", "-np", type=int, help="sequences decoded together")
    p.add_argument("--max-waiting", type=int, help="queued requests before 429")
    p.add_argument(
        "--speculative",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draft tokens from the prompt and verify them in one step (same output, faster)",
    )
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shared prompt-prefix KV cache (default: on)",
    )
    p.add_argument("--cache-entries", type=int, help="finished requests the cache may keep")
    p.add_argument(
        "--cache-cells",
        type=int,
        help="KV cells idle cache entries may hold (0: none with the RAM tier, else n_ctx / 2)",
    )
    p.add_argument(
        "--cache-ram-mb",
        type=int,
        help="host-RAM tier for idle prefixes, MiB (-1: auto, 0: off)",
    )
    p.add_argument("--cache-dir", help="save the cache here at shutdown, restore it at start")
    p.add_argument("--data-dir", help="converted models, uploaded files, documents")
    p.add_argument(
        "--rerank-model", help="cross-encoder GGUF: reorders search results, serves /v1/rerank"
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8080)")
    p.add_argument(
        "--api-key",
        help="require this bearer token on every route but /health (visible in the process "
        "list: prefer --api-key-file or HEARTH_SERVER__API_KEY)",
    )
    p.add_argument("--api-key-file", help="read the API key from this file's first line")
    p.add_argument(
        "--allow-insecure-remote",
        action="store_true",
        default=None,
        help="allow listening beyond loopback without an API key",
    )
    p.add_argument(
        "--cors-origins",
        help="comma-separated web origins allowed to call the API (besides loopback pages)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        help="on SIGTERM, let running requests finish this long (default 10)",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="serve replicas on Ray Serve behind one address: a Ray of this machine alone, "
        "or the cluster at ADDRESS ('auto', 'ray://head:10001'); see [cluster]",
    )
    p.add_argument("--replicas", type=int, help="replicas with --ray (default 2)")
    p.add_argument(
        "--router",
        choices=["prefix", "default"],
        help="with --ray: prefix affinity (default) or Ray Serve's own router",
    )


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for flag, (section, key) in SERVE_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, _overrides(args))
    except ConfigError as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 2

    if args.ray is not None:
        return _serve_on_ray(settings, args.ray)

    from retrieval.storage import StorageUnavailable
    from server.api.app import create_app
    from server.bert_gguf import ConversionError
    from server.engine.embedder import EmbedderError
    from server.llama.context import ContextError
    from server.llama.log import route_llama_logs_to_python
    from server.llama.model import ModelLoadError
    from server.model_files import ModelNotFound
    from server.runtime import Runtime
    from server.serving import serve as serve_app

    level = getattr(logging, settings.server.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    route_llama_logs_to_python()
    try:
        runtime = Runtime.load(settings)
    except (
        ModelNotFound,
        ModelLoadError,
        ContextError,
        EmbedderError,
        ConversionError,
        StorageUnavailable,
    ) as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 1
    serve_app(create_app(runtime), runtime)
    return 0


def _serve_on_ray(settings: Settings, address: str) -> int:
    try:
        from server.cluster.app import serve_on_ray
    except ModuleNotFoundError as e:
        print(f"hearth: --ray needs {e.name}: pip install 'hearth[ray]'", file=sys.stderr)
        return 1
    if address:
        settings.cluster.ray_address = address
    level = getattr(logging, settings.server.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_on_ray(settings)


def _models_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="prepare, list and convert model files")
    actions = p.add_subparsers(dest="action", required=True)
    prepare = actions.add_parser(
        "prepare",
        help="convert the packaged embedding model to GGUF, and measure whether the packaged "
        "chat model serves faster re-quantized to Q8_0 with the same perplexity (once)",
    )
    prepare.add_argument("--config", help="TOML file layered over config/default.toml")
    listing = actions.add_parser("list", help="model ids --model accepts, and their files")
    listing.add_argument("--config", help="TOML file layered over config/default.toml")
    convert = actions.add_parser(
        "convert",
        help="convert a BERT-family model directory to GGUF: a sentence-transformers "
        "embedding model, or a cross-encoder reranker (BertForSequenceClassification)",
    )
    convert.add_argument("source", help="directory with config.json, model.safetensors, vocab.txt")
    convert.add_argument("output", help="GGUF file to write")
    convert.add_argument("--name", help="model name recorded in the file")


def models(args: argparse.Namespace) -> int:
    from server.bert_gguf import ConversionError, convert
    from server.llama.quantize import QuantizeError
    from server.model_files import ModelNotFound

    try:
        if args.action == "prepare":
            return _prepare_models(load_settings(args.config))
        if args.action == "list":
            return _list_models(load_settings(args.config))
        print(convert(args.source, args.output, args.name))
    except (ConfigError, ConversionError, ModelNotFound, QuantizeError, OSError) as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 1
    return 0


def _prepare_models(settings: Settings) -> int:
    from server.default_chat_model import read_choice
    from server.llama.log import route_llama_logs_to_python
    from server.model_files import (
        models_dir,
        packaged_chat_model,
        prepare_default_chat_model,
        prepare_default_embedding_model,
    )

    route_llama_logs_to_python()  # llama.cpp's per-tensor lines go to the log, not stderr
    data_dir = settings.storage.resolved_data_dir()
    print(f"embedding model: {prepare_default_embedding_model(data_dir)}")
    if settings.model.path:
        print(f"chat model: {settings.model.path} (configured)")
        return 0
    chosen = prepare_default_chat_model(data_dir, settings.model.n_threads)
    choice = read_choice(models_dir(data_dir), packaged_chat_model())
    detail = ""
    if choice is not None and choice.original and choice.fast and choice.speedup:
        detail = (
            f" (Q8_0 {choice.speedup:.2f}x the original's speed, perplexity "
            f"{choice.fast.perplexity:.2f} vs {choice.original.perplexity:.2f})"
        )
    print(f"chat model: {chosen}{detail}")
    return 0


def _list_models(settings: Settings) -> int:
    """The packaged ids, then every chat model the server would serve (models.dir and
    models.entries) with its size and, when a server answers on the configured address,
    whether it is loaded."""
    from server.model_files import known_chat_models, resolve_chat_model
    from server.model_specs import discover

    data_dir = settings.storage.resolved_data_dir()
    default = resolve_chat_model(settings.model.path, data_dir)
    for model_id, path in known_chat_models(data_dir).items():
        mark = "  (default)" if path == default else ""
        print(f"{model_id}\t{path}{mark}")
    if default not in known_chat_models(data_dir).values():
        print(f"{default.name.removesuffix('.gguf')}\t{default}  (default, configured)")
    others = [s for s in discover(settings).values() if not s.default]
    if not others:
        return 0
    states = _served_states(settings)
    print(f"\n{'id':<32} {'kind':<9} {'MiB':>7} {'quant':<7} {'state':<9} path")
    for spec in others:
        state = "unusable" if spec.problem else states.get(spec.id, "-")
        print(
            f"{spec.id:<32} {spec.kind:<9} {spec.size_bytes / 2**20:>7.0f} "
            f"{spec.quantization or '?':<7} {state:<9} {spec.path}"
        )
        if spec.problem:
            print(f"{'':<32} {spec.problem}")
    if not states:
        print("\n(no server answers on the configured address: load states unknown)")
    return 0


def _served_states(settings: Settings) -> dict[str, str]:
    """Each chat model's status as the running server reports it (empty: none answers)."""
    import httpx

    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    headers = (
        {"Authorization": f"Bearer {settings.server.api_key}"} if settings.server.api_key else {}
    )
    try:
        r = httpx.get(f"http://{host}:{settings.server.port}/v1/models", headers=headers, timeout=2)
        cards = r.json()["data"] if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
    return {c["id"]: str(c.get("meta", {}).get("status", "")) for c in cards}


def _client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="the running Hearth server (default http://127.0.0.1:8080)",
    )
    common.add_argument("--api-key", help="bearer token, if the server asks for one")
    common.add_argument("--store", required=True, help="vector store name or id")
    ingest = sub.add_parser(
        "ingest",
        parents=[common],
        help="upload files or folders into a vector store and index them",
    )
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="index through a Ray Data pipeline instead of a server: a Ray cluster's address, "
        "or none for one on this machine; writes the configured storage directly",
    )
    ingest.add_argument("--ray-workers", type=int, default=1, help="embedding actors (1)")
    ingest.add_argument("--config", help="TOML file layered over config/default.toml (--ray)")
    ingest.add_argument("--data-dir", help="Hearth's data directory (--ray)")
    search = sub.add_parser("search", parents=[common], help="search a vector store")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    search.add_argument("--mode", choices=["hybrid", "vector", "text"], default="hybrid")
    ask = sub.add_parser(
        "ask", parents=[common], help="ask a question answered from a vector store, with sources"
    )
    ask.add_argument("question")
    ask.add_argument("-k", type=int, default=4, help="how many sources (default 4)")
    ask.add_argument("--max-tokens", type=int, default=512, help="longest answer (512)")
    ask.add_argument("--mode", choices=["hybrid", "vector", "text"], default="hybrid")
    evaluate = sub.add_parser("eval", help="evaluate retrieval (recall@k, MRR)")
    kinds = evaluate.add_subparsers(dest="kind", required=True)
    retrieval = kinds.add_parser(
        "retrieval",
        parents=[common],
        help="recall@k, MRR and nDCG@10 of vector, text, hybrid and reranked search",
    )
    retrieval.add_argument("questions", type=Path, help="QA.json (see docs)")
    retrieval.add_argument(
        "--misses", action="store_true", help="list the questions not ranked first, per stage"
    )
    ppl = kinds.add_parser("perplexity", help="perplexity of a model over a text file")
    ppl.add_argument("model", type=Path, help="GGUF model")
    ppl.add_argument("--text", type=Path, required=True, help="UTF-8 text file")
    ppl.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    ppl.add_argument("--chunks", type=int, help="score at most this many chunks")
    quant = sub.add_parser("quantize", help="quantize a GGUF model with llama.cpp")
    quant.add_argument("source", type=Path)
    quant.add_argument("dest", type=Path)
    quant.add_argument("--type", required=True, help="q4_0, q4_k_m, q5_k_m, q8_0, ...")
    quant.add_argument("--threads", type=int, default=0)


def ray_ingest(args: argparse.Namespace) -> int:
    """`hearth ingest --ray`: the files indexed by a Ray Data pipeline into the storage the
    settings name (retrieval/ray_ingestion.py)."""
    from retrieval.client import ClientError, expand_paths
    from retrieval.ingestion import ChunkingOptions
    from retrieval.ray_ingestion import ingest
    from retrieval.storage import StorageUnavailable
    from server.runtime import embedder_spec, storage_of

    overrides = {"storage": {"data_dir": args.data_dir}} if args.data_dir else {}
    settings = load_settings(args.config, overrides)
    try:
        paths = expand_paths(args.paths)
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rs = settings.retrieval
    workers = max(1, args.ray_workers)
    spec = embedder_spec(settings, workers)
    try:
        results = ingest(
            storage_of(settings),
            paths,
            args.store,
            spec,
            ChunkingOptions(rs.chunk_tokens, rs.chunk_overlap),
            args.ray,
            workers,
            rs.parse_timeout,
            rs.max_upload_mb << 20,
            args.quiet,
        )
    except StorageUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        detail = f"  {r['error']}" if r["error"] else f"  ({r['chunks']} chunks)"
        print(f"{r['status']:>10}  {r['filename']}{detail}")
    return 1 if any(r["error"] for r in results) else 0


def client_command(args: argparse.Namespace) -> int:
    from retrieval.client import ClientError, HearthClient

    if args.command == "ingest" and args.ray is not None:
        return ray_ingest(args)
    client = HearthClient(args.url, args.api_key)
    try:
        if args.command == "ingest":
            failed = 0
            for result in client.ingest(args.paths, args.store, args.quiet):
                error = (result.get("last_error") or {}).get("message")
                failed += result["status"] != "completed"
                print(
                    f"{result['status']:>10}  {result['filename']}"
                    + (f"  ({result.get('chunk_count', 0)} chunks)" if not error else f"  {error}")
                )
            return 1 if failed else 0
        if args.command == "eval":
            from retrieval.evaluation import evaluate, load_questions, render, render_misses

            questions = load_questions(args.questions)
            scores = evaluate(client, questions, args.store)
            print(render(scores))
            if args.misses:
                print("\nnot first in the last stage:\n" + render_misses(scores, questions))
            return 0
        if args.command == "ask":
            _, cited = client.ask(args.question, args.store, args.k, args.mode, args.max_tokens)
            if cited:
                print("\nSources:")
            for c in cited:
                page = f", page {c['page']}" if c.get("page") else ""
                print(f"  [{c['index']}] {c['filename']}{page}")
            return 0
        for i, hit in enumerate(client.search(args.query, args.store, args.k, args.mode), 1):
            where = f"{hit['filename']}" + (f" p.{hit['page']}" if hit.get("page") else "")
            text = " ".join(hit["content"][0]["text"].split())
            print(f"{i}. [{hit['score']:.4f}] {where}\n   {text[:300]}")
        return 0
    except ClientError as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 1


def quantize_command(args: argparse.Namespace) -> int:
    from server.llama.log import route_llama_logs_to_python
    from server.llama.quantize import QuantizeError, quantize

    route_llama_logs_to_python()
    try:
        out = quantize(args.source, args.dest, args.type, args.threads)
    except QuantizeError as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 1
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def perplexity_command(args: argparse.Namespace) -> int:
    from server.llama.log import route_llama_logs_to_python
    from server.llama.model import ModelLoadError
    from server.perplexity import PerplexityError, perplexity

    route_llama_logs_to_python()
    try:
        text = args.text.read_text(encoding="utf-8")
        ppl, scored = perplexity(args.model, text, args.ctx, max_chunks=args.chunks)
    except (OSError, ModelLoadError, PerplexityError) as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 1
    print(f"perplexity {ppl:.4f} over {scored} tokens ({args.model.name})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hearth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _models_parser(sub)
    _client_parsers(sub)
    sub.add_parser("bench", help="measure a server (hearth bench --help)", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "models":
        return models(args)
    if args.command == "quantize":
        return quantize_command(args)
    if args.command == "eval" and args.kind == "perplexity":
        return perplexity_command(args)
    return client_command(args)


if __name__ == "__main__":
    sys.exit(main())
