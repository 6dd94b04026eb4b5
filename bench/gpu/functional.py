"""Does everything still work with the models on the GPU? Issue 16 asks that the prefix
cache, chunked prefill, grammars, embeddings and retrieval work with `n_gpu_layers=-1`; the
throughput run (measure.py) exercises only plain decoding. This starts one Hearth with the
chat model and the embedding model both offloaded and checks each feature through the HTTP
API, the way a client sees it:

- /health: both models' layers on the GPU;
- prefix cache: requests sharing a ~1,000-token system prompt, one after another and eight
  at once, read it from the cache (usage.prompt_tokens_details.cached_tokens);
- chunked prefill: a prompt several step budgets long completes while a short request
  decodes beside it;
- grammars: JSON-schema output and a required tool call, sampled at temperature 1 (a
  zero-weight stand-in's tokens are then uniform over what the grammar allows, the hardest
  case for it), all valid;
- embeddings: the vectors match the CPU's for the same GGUF (reference written on the CPU
  with --write-reference), and a batched throughput figure;
- retrieval: files uploaded to a vector store are ingested (embedded on the GPU), searched
  (each question finds its document first, as on the CPU) and cited by a chat request.

    python -m bench.gpu.functional --chat standin.gguf --embedding minilm.gguf \\
        --out results/ [--reference reference.json | --write-reference reference.json]

The chat model may be the zero-weight stand-in: nothing here depends on what it says.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.gpu.measure import start_hearth_gpu
from server.launch import ServerProcess

DOCUMENTS = {
    "sourdough.txt": (
        "Feeding a sourdough starter. Mix equal weights of flour and water into the starter "
        "every twelve hours at room temperature. A healthy starter doubles within six hours "
        "and smells pleasantly sour. Bake when it is at its peak, just before it collapses. "
        "Rye flour makes a starter more active than white wheat flour."
    ),
    "bicycle.txt": (
        "Adjusting rim brakes on a bicycle. Loosen the cable anchor bolt, squeeze the pads "
        "against the rim, pull the cable tight and tighten the bolt again. The pads should "
        "touch the rim squarely and about one millimetre below its top edge. Worn pads with "
        "no visible grooves must be replaced before a long ride."
    ),
    "networking.txt": (
        "Static addresses with systemd-networkd. Create /etc/systemd/network/10-wired.network "
        "with a [Match] section naming the interface and a [Network] section holding "
        "Address=192.168.1.20/24 and Gateway=192.168.1.1, then run systemctl restart "
        "systemd-networkd. The option DHCP=no keeps the interface from asking for a lease."
    ),
    "tides.txt": (
        "Why the sea has two tides a day. The Moon's gravity pulls the ocean on the near "
        "side of the Earth towards it, and the Earth itself away from the water on the far "
        "side, so two bulges form. As the Earth turns, a coast passes through both bulges "
        "every twenty-four hours and fifty minutes."
    ),
}
QUESTIONS = {
    "How often should I feed my bread starter?": "sourdough.txt",
    "My brake pads are worn, what should I do?": "bicycle.txt",
    "How do I give a network interface a fixed IP address?": "networking.txt",
    "What causes high tide twice each day?": "tides.txt",
}
EMBED_TEXTS = [*DOCUMENTS.values(), *QUESTIONS, "a", "Hearth runs on the GPU. " * 40]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
        "confident": {"type": "boolean"},
    },
    "required": ["answer", "confident"],
    "additionalProperties": False,
}
LIGHT_TOOL = {
    "type": "function",
    "function": {
        "name": "set_light",
        "description": "Switch a light on or off.",
        "parameters": {
            "type": "object",
            "properties": {
                "room": {"type": "string", "enum": ["kitchen", "hall", "garden"]},
                "on": {"type": "boolean"},
            },
            "required": ["room", "on"],
            "additionalProperties": False,
        },
    },
}


class Checks:
    """Named checks, each passing or failing with what was seen; all of them run."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def run(self, name: str, check: Callable[[], dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        try:
            seen = check()
            ok = bool(seen.pop("ok"))
        except Exception as e:  # a failed check is a result, and the others still run
            seen, ok = {"error": f"{type(e).__name__}: {e}"}, False
        seen = {"check": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 2), **seen}
        self.results.append(seen)
        print(json.dumps(seen), flush=True)


def start(out: Path, chat: Path, embedding: Path, data: Path) -> ServerProcess:
    config = f'[embedding]\npath = "{embedding}"\n'
    return start_hearth_gpu(out, chat, 8, 16384, config_text=config, data_dir=data)


# The served models' ids (from /health and /v1/models once the server is up).
MODEL_IDS = {"chat": "", "embedding": ""}


def chat(client: httpx.Client, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body = {"model": MODEL_IDS["chat"], "messages": messages, "max_tokens": 8, "temperature": 0}
    body.update(fields)
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return r.json()


def health(client: httpx.Client) -> dict[str, Any]:
    backend = client.get("/health").json()["backend"]
    chat_ok = backend["layers_on_gpu"] == backend["layers"]
    embedding = backend.get("embedding", {})
    embed_ok = embedding and embedding["layers_on_gpu"] == embedding["layers"]
    return {"ok": backend["backend"] != "cpu" and chat_ok and embed_ok, "backend": backend}


def prefix_cache(client: httpx.Client) -> dict[str, Any]:
    system = "You answer questions about the household manual. " + " ".join(
        f"Rule {i}: keep the {w} tidy." for i, w in enumerate(["hall", "shed", "loft"] * 40)
    )

    def ask(question: str) -> dict[str, Any]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return chat(client, messages)["usage"]

    first = ask("Where are the keys?")
    second = ask("Where is the ladder?")
    with ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(ask, [f"Question number {i}?" for i in range(8)]))
    shared = first["prompt_tokens"] - 20  # the system prompt, less the question's tokens
    cached = [u["prompt_tokens_details"]["cached_tokens"] for u in [second, *burst]]
    return {
        "ok": first["prompt_tokens"] > 900 and all(c >= shared for c in cached),
        "prompt_tokens": first["prompt_tokens"],
        "cached_tokens": cached,
    }


def chunked_prefill(client: httpx.Client) -> dict[str, Any]:
    long_prompt = " ".join(f"item{i}" for i in range(1200))  # ~4,000 tokens: 8 step budgets

    def long_request() -> dict[str, Any]:
        return chat(client, [{"role": "user", "content": long_prompt}], max_tokens=4)

    # A zero-weight model's greedy token ends the answer at once; a bias towards " the"
    # keeps it decoding for all 64 tokens while the long prompt is computed in chunks.
    the = client.post("/tokenize", json={"content": " the"}).json()["tokens"][0]
    bias = {str(the["id"] if isinstance(the, dict) else the): 10.0}

    def short_request() -> dict[str, Any]:
        messages = [{"role": "user", "content": "Hi"}]
        return chat(client, messages, max_tokens=64, logit_bias=bias)

    with ThreadPoolExecutor(2) as pool:
        long_f = pool.submit(long_request)
        short_f = pool.submit(short_request)
        long_r, short_r = long_f.result(), short_f.result()
    return {
        "ok": long_r["usage"]["prompt_tokens"] > 2048
        and short_r["usage"]["completion_tokens"] == 64,
        "long_prompt_tokens": long_r["usage"]["prompt_tokens"],
        "short_completion_tokens": short_r["usage"]["completion_tokens"],
    }


def structured_output(client: httpx.Client) -> dict[str, Any]:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA}}

    def one(seed: int) -> str:
        r = chat(
            client,
            [{"role": "user", "content": "Is it raining?"}],
            response_format=fmt,
            temperature=1.0,
            seed=seed,
            max_tokens=128,
        )
        return r["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(one, range(8)))
    valid = 0
    for text in outputs:
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if (
            set(value) == {"answer", "confident"}
            and value["answer"] in ("yes", "no", "maybe")
            and isinstance(value["confident"], bool)
        ):
            valid += 1
    return {"ok": valid == len(outputs), "valid": valid, "outputs": outputs}


def tool_call(client: httpx.Client) -> dict[str, Any]:
    def one(seed: int) -> dict[str, Any]:
        r = chat(
            client,
            [{"role": "user", "content": "Turn on the kitchen light."}],
            tools=[LIGHT_TOOL],
            tool_choice="required",
            temperature=1.0,
            seed=seed,
            max_tokens=128,
        )
        return r["choices"][0]

    with ThreadPoolExecutor(4) as pool:
        choices = list(pool.map(one, range(4)))
    calls = []
    for c in choices:
        for call in c["message"].get("tool_calls") or []:
            args = json.loads(call["function"]["arguments"])
            calls.append((call["function"]["name"], args))
    valid = [
        name == "set_light" and args.get("room") in ("kitchen", "hall", "garden")
        for name, args in calls
    ]
    return {
        "ok": len(calls) >= len(choices) and all(valid),
        "finish_reasons": [c["finish_reason"] for c in choices],
        "calls": calls,
    }


def embed(client: httpx.Client, texts: list[str]) -> list[list[float]]:
    r = client.post("/v1/embeddings", json={"model": MODEL_IDS["embedding"], "input": texts})
    r.raise_for_status()
    return [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def embeddings(client: httpx.Client, reference: dict[str, Any] | None) -> dict[str, Any]:
    vectors = embed(client, EMBED_TEXTS)
    seen: dict[str, Any] = {"dim": len(vectors[0]), "vectors": vectors}
    ok = all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    if reference is not None:
        sims = [cosine(a, b) for a, b in zip(vectors, reference["vectors"], strict=True)]
        seen["min_cosine_to_cpu"] = round(min(sims), 6)
        ok = ok and min(sims) > 0.999
    # Throughput: 16 requests of 64 ~60-word texts, four at a time (as an ingestion client).
    batch = [f"{i} " + DOCUMENTS["tides.txt"] for i in range(64)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: embed(client, batch), range(16)))
    seen["texts_per_s"] = round(16 * 64 / (time.perf_counter() - t0), 1)
    return {"ok": ok, **seen}


def retrieval(client: httpx.Client, reference: dict[str, Any] | None) -> dict[str, Any]:
    store = client.post("/v1/vector_stores", json={"name": "gpu-check"}).json()["id"]
    ids: dict[str, str] = {}
    for name, text in DOCUMENTS.items():
        f = client.post(
            "/v1/files",
            files={"file": (name, text.encode(), "text/plain")},
            data={"purpose": "assistants"},
        ).json()
        ids[f["id"]] = name
        attached = client.post(f"/v1/vector_stores/{store}/files", json={"file_id": f["id"]})
        attached.raise_for_status()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = client.get(f"/v1/vector_stores/{store}/files").json()["data"]
        if all(f["status"] != "in_progress" for f in files):
            break
        time.sleep(0.2)
    statuses = sorted(f["status"] for f in files)
    firsts: dict[str, str | None] = {}
    for question in QUESTIONS:
        hits = client.post(
            f"/v1/vector_stores/{store}/search", json={"query": question, "max_num_results": 3}
        ).json()["data"]
        firsts[question] = hits[0]["filename"] if hits else None
    answer = chat(
        client,
        [{"role": "user", "content": "How do I set a static IP address?"}],
        retrieval={"vector_store_ids": [store], "max_num_results": 2},
    )
    cited = [c["filename"] for c in answer.get("citations", [])]
    ok = (
        statuses == ["completed"] * len(DOCUMENTS)
        and all(firsts[q] == doc for q, doc in QUESTIONS.items())
        and bool(cited)
        and cited[0] == "networking.txt"
    )
    if reference is not None:
        ok = ok and firsts == reference["first_hits"]
    return {"ok": ok, "statuses": statuses, "first_hits": firsts, "cited": cited}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.functional")
    p.add_argument("--chat", type=Path, required=True)
    p.add_argument("--embedding", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reference", type=Path, help="the CPU's results, to compare with")
    p.add_argument("--write-reference", type=Path, help="write this run's results (on the CPU)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    reference = json.loads(args.reference.read_text()) if args.reference else None
    checks = Checks()
    with tempfile.TemporaryDirectory() as data:
        server = start(args.out, args.chat.resolve(), args.embedding.resolve(), Path(data))
        try:
            with httpx.Client(base_url=server.url, timeout=300) as client:
                MODEL_IDS["chat"] = client.get("/health").json()["model"]
                MODEL_IDS["embedding"] = args.embedding.name.removesuffix(".gguf")
                checks.run("health", lambda: health(client))  # fails on the CPU, rightly
                checks.run("prefix cache", lambda: prefix_cache(client))
                checks.run("chunked prefill", lambda: chunked_prefill(client))
                checks.run("structured output", lambda: structured_output(client))
                checks.run("tool call", lambda: tool_call(client))
                checks.run("embeddings", lambda: embeddings(client, reference))
                checks.run("retrieval", lambda: retrieval(client, reference))
                stats = client.get("/stats").json()
        finally:
            server.stop()
    by_name = {c["check"]: c for c in checks.results}
    if args.write_reference is not None:
        args.write_reference.write_text(
            json.dumps(
                {
                    "vectors": by_name["embeddings"].get("vectors"),
                    "first_hits": by_name["retrieval"].get("first_hits"),
                }
            )
        )
    for c in checks.results:
        c.pop("vectors", None)
    (args.out / "functional.json").write_text(
        json.dumps({"checks": checks.results, "stats": stats}, indent=1)
    )
    failed = [c["check"] for c in checks.results if not c["ok"]]
    print("all checks passed" if not failed else f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
