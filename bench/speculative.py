"""Prompt-lookup drafting against Hearth without it and against llama-server with and
without its own n-gram drafting (issue 19): four servers on the same GGUF, rounds
alternated.

Workloads: (a) quote: a ~60-word passage and "repeat it" / "quote its first sentences",
natural lengths up to 160 tokens (what retrieval-augmented answers do when they cite),
greedy and sampled; (b) edit: a short function returned with one change; (c) unique: the
decode workload's distinct prompts with 128 tokens, EOS ignored. Concurrency 1, 4 and 8.

    python -m bench.speculative [--write docs/benchmarks.md] [--no-peers] [--predicted]

--predicted: OpenAI's Predicted Outputs instead: the quote and edit workloads with the
expected output sent as the request's `prediction` (the passage, the function as it was),
against the same servers without it (llama-server ignores the field).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import tempfile
from pathlib import Path

import httpx

from bench.cli import conversations
from bench.load import LoadResult, run_load
from bench.peer_build import build_llama_server
from bench.report import cpu_name, write_section
from bench.servers import ServerProcess, hearth_model_file, start_hearth, start_llama_server
from server.host_resources import threads
from server.settings import SpeculativeSettings, load_settings

PARALLEL = 8

PASSAGES = [
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He lit the great "
    "lamp, wound the clockwork that turned the lens, and wrote the weather in a leather "
    "logbook. Ships passing the rocky point saw the beam sweep across the water every ten "
    "seconds, and the fishermen of the village set their clocks by it.",
    "To reset the router, hold the recessed button on the back panel for ten seconds until "
    "the power light blinks amber. Release it and wait two minutes while the device "
    "restarts. The default network name and password are printed on the label underneath; "
    "change them in the settings page at 192.168.0.1 before connecting other devices.",
    "The committee met on Tuesday to review the budget for the new library wing. Members "
    "agreed to postpone the purchase of new shelving until the spring, approved the hiring "
    "of two part-time archivists, and asked the treasurer to prepare a revised estimate for "
    "the heating system before the next meeting in March.",
]
CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
"""


def workload(name: str) -> list[list[dict[str, str]]]:
    if name == "quote":
        asks = ["Repeat the text above exactly.", "Quote the first two sentences above."]
        return [[{"role": "user", "content": f"{p}\n\n{a}"}] for p in PASSAGES for a in asks]
    if name == "edit":
        changes = ["rename subtotal to total_before_tax", "add a docstring", "round the result"]
        return [
            [{"role": "user", "content": f"{CODE}\nReturn this function with one change: {c}."}]
            for c in changes
        ] * 2
    return conversations("unique", 8, 100)


WORKLOADS = ("quote", "quote-sampled", "edit", "unique")
CONCURRENCY = (1, 4, 8)
# llama-server's n-gram drafting from the request's own text (`--spec-type ngram-simple`:
# look up the last n tokens, draft the m that followed), sized like Hearth's (chosen over
# its defaults n=12/m=48, ngram-map-k and ngram-mod on the quote workload here).
LLAMA_NGRAM = (
    "--spec-type",
    "ngram-simple",
    "--spec-ngram-simple-size-n",
    "3",
    "--spec-ngram-simple-size-m",
    "8",
)


def request_body(name: str, server: ServerProcess) -> dict[str, object]:
    body: dict[str, object] = {} if name == "unique" else {"ignore_eos": False}
    if name == "quote-sampled":
        body |= {"temperature": 0.7, "top_p": 0.95, "seed": 5}
    if name == "unique":
        body |= server.extra_body or {}
    return body


async def _run(server: ServerProcess, model: str, name: str, concurrency: int) -> LoadResult:
    convs = workload(name.removesuffix("-sampled"))
    if concurrency > 1:
        convs = (convs * 3)[: max(len(convs), 2 * concurrency)]
    tokens = 128 if name == "unique" else 160
    body = request_body(name, server)
    return await run_load(server.url, model, convs, tokens, concurrency, extra_body=body)


def _draft_counts(server: ServerProcess) -> tuple[int, int, int]:
    stats = httpx.get(f"{server.url}/stats").json()
    return stats["draft_tokens"], stats["draft_accepted"], stats["draft_steps"]


def measure(servers: dict[str, ServerProcess], rounds: int) -> str:
    model = httpx.get(f"{servers['off'].url}/health").json()["model"]
    best: dict[tuple[str, str, int], LoadResult] = {}
    # Per workload: draft tokens, accepted ones and verifications on the drafting server.
    drafts: dict[str, list[int]] = {name: [0, 0, 0] for name in WORKLOADS}
    for _ in range(rounds):
        for name in WORKLOADS:
            for concurrency in CONCURRENCY:
                for label, server in servers.items():  # alternated within each round
                    before = _draft_counts(server) if label == "on" else None
                    r = asyncio.run(_run(server, model, name, concurrency))
                    if r.failures:
                        raise RuntimeError(f"{r.failures} requests failed on {label}")
                    if before is not None:
                        after = _draft_counts(server)
                        for i in range(3):
                            drafts[name][i] += after[i] - before[i]
                    key = (label, name, concurrency)
                    if key not in best or r.tokens_per_second > best[key].tokens_per_second:
                        best[key] = r
    peers = [label for label in servers if label.startswith("llama-server")]
    sp = SpeculativeSettings()
    lines = [
        "## Prompt-lookup drafting (`python -m bench.speculative`)",
        "",
        f"Hearth with `[speculative] enabled = true` (up to {sp.max_draft} draft tokens a "
        f"sequence, {sp.max_draft_alone} for one decoding alone while its drafts are accepted "
        f"whole; {sp.ngram_max}- and {sp.ngram_min}-gram lookup) and with it off, "
        "llama-server without drafting and with its own n-gram "
        f"drafting (`{' '.join(LLAMA_NGRAM)}`), all on the default GGUF with 8 parallel "
        f"sequences; best of {rounds} alternated rounds. Output tokens per second over all "
        "requests, prefill included, on real output lengths. quote: a ~60-word passage and "
        '"repeat it / quote its first sentences" (natural lengths, at most 160 tokens), '
        "greedy; quote-sampled: the same at temperature 0.7, top_p 0.95; edit: a function "
        'and "return it with one change", greedy; unique: distinct prompts, 128 tokens, '
        f"EOS ignored, greedy. {cpu_name()}, {os.cpu_count()} cores, "
        f"{datetime.date.today().isoformat()}.",
        "",
        "| workload | concurrency | drafting tok/s | off tok/s | drafting / off |"
        + "".join(f" {p} tok/s | drafting / {p} |" for p in peers),
        "|---|---|---|---|---|" + "---|---|" * len(peers),
    ]
    for name in WORKLOADS:
        for concurrency in CONCURRENCY:
            on, off = best[("on", name, concurrency)], best[("off", name, concurrency)]
            row = (
                f"| {name} | {concurrency} | {on.tokens_per_second:.1f} | "
                f"{off.tokens_per_second:.1f} | "
                f"{on.tokens_per_second / off.tokens_per_second:.2f}x |"
            )
            for p in peers:
                peer = best[(p, name, concurrency)]
                row += (
                    f" {peer.tokens_per_second:.1f} | "
                    f"{on.tokens_per_second / peer.tokens_per_second:.2f}x |"
                )
            lines.append(row)
    lines += [
        "",
        "Drafts on the drafting server, per workload over all its runs (every concurrency):",
        "",
        "| workload | draft tokens | accepted | acceptance | tokens per verification |",
        "|---|---|---|---|---|",
    ]
    for name in WORKLOADS:
        drafted, accepted, steps = drafts[name]
        rate = accepted / drafted if drafted else 0.0
        per_step = (accepted + steps) / steps if steps else 0.0
        lines.append(f"| {name} | {drafted} | {accepted} | {rate:.0%} | {per_step:.2f} |")
    lines.append("")
    return "\n".join(lines)


def predictions(name: str) -> list[dict[str, object]]:
    """Each conversation's prediction: the passage it quotes, the function it edits."""
    if name == "quote":
        texts = [p for p in PASSAGES for _ in range(2)]  # the order workload("quote") has
    else:
        texts = [CODE] * len(workload(name))
    return [{"prediction": {"type": "content", "content": t}} for t in texts]


PREDICTED = ("quote", "edit")
PREDICTED_CONCURRENCY = (1, 4)


def measure_predicted(servers: dict[str, ServerProcess], rounds: int) -> str:
    model = httpx.get(f"{servers['off'].url}/health").json()["model"]
    # (label, workload, concurrency) -> best result; "predicted" is the drafting server
    # sent the predictions, "on" the same server without them.
    runs = [("predicted", "on"), *((label, label) for label in servers)]
    best: dict[tuple[str, str, int], LoadResult] = {}
    accepted: dict[str, list[int]] = {name: [0, 0] for name in PREDICTED}
    for _ in range(rounds):
        for name in PREDICTED:
            convs, bodies = workload(name), predictions(name)
            for concurrency in PREDICTED_CONCURRENCY:
                for label, server_label in runs:
                    server = servers[server_label]
                    r = asyncio.run(
                        run_load(
                            server.url,
                            model,
                            convs,
                            160,
                            concurrency,
                            extra_body={"ignore_eos": False},
                            bodies=bodies if label == "predicted" else None,
                        )
                    )
                    if r.failures:
                        raise RuntimeError(f"{r.failures} requests failed on {label}")
                    key = (label, name, concurrency)
                    if key not in best or r.tokens_per_second > best[key].tokens_per_second:
                        best[key] = r
    for name in PREDICTED:
        # What followed the prediction, from the usage of one non-streamed pass.
        for conv, body in zip(workload(name), predictions(name), strict=True):
            usage = httpx.post(
                f"{servers['on'].url}/v1/chat/completions",
                json={"model": model, "messages": conv, "max_tokens": 160, "temperature": 0} | body,
                timeout=300,
            ).json()["usage"]["completion_tokens_details"]
            accepted[name][0] += usage["accepted_prediction_tokens"]
            accepted[name][1] += usage["rejected_prediction_tokens"]
    others = [label for label, _ in runs if label != "predicted"]
    lines = [
        "## Predicted Outputs (`python -m bench.speculative --predicted`)",
        "",
        "OpenAI's `prediction` field: the quote workload with the passage as the prediction "
        "and the edit workload with the function as it was (natural lengths, at most 160 "
        "tokens, greedy), sent to Hearth with drafting on; against the same server without "
        "the prediction (prompt lookup only), Hearth with drafting off, and llama-server "
        f"(which ignores the field). Best of {rounds} alternated rounds, output tokens per "
        "second over all requests.",
        "",
        "| workload | concurrency | predicted tok/s | "
        + " | ".join(f"{o} tok/s | vs {o}" for o in others)
        + " |",
        "|---|---|---|" + "---|---|" * len(others),
    ]
    for name in PREDICTED:
        for concurrency in PREDICTED_CONCURRENCY:
            ours = best[("predicted", name, concurrency)].tokens_per_second
            row = f"| {name} | {concurrency} | {ours:.1f} |"
            for o in others:
                theirs = best[(o, name, concurrency)].tokens_per_second
                row += f" {theirs:.1f} | {ours / theirs:.2f}x |"
            lines.append(row)
    lines += [
        "",
        "Labels: on = Hearth drafting from the prompt only, off = Hearth without drafting.",
        "Prediction tokens per workload (one pass, usage.completion_tokens_details): "
        + "; ".join(f"{n}: {a} accepted, {r} rejected" for n, (a, r) in accepted.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def start_servers(tmp: Path, peers: bool) -> dict[str, ServerProcess]:
    """Hearth with drafting ("on") and without ("off"), and llama-server without and with
    its n-gram drafting, on the same GGUF with 8 parallel sequences."""
    servers: dict[str, ServerProcess] = {}
    try:
        for label, enabled in (("on", "true"), ("off", "false")):
            config = tmp / f"{label}.toml"
            config.write_text(f"[speculative]\nenabled = {enabled}\n")
            servers[label] = start_hearth(
                tmp, "--config", str(config), "--parallel", str(PARALLEL), "--n-ctx", "8192"
            )
        if peers:
            build_llama_server()
            model, n_threads = hearth_model_file(), threads(load_settings())
            for label, extra in (("llama-server", ()), ("llama-server ngram", LLAMA_NGRAM)):
                servers[label] = start_llama_server(tmp, model, PARALLEL, 8192, n_threads, *extra)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speculative")
    p.add_argument("--write", type=Path)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-peers", action="store_true", help="Hearth with and without only")
    p.add_argument("--predicted", action="store_true", help="OpenAI's Predicted Outputs")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(Path(tmp), not args.no_peers)
        try:
            run = measure_predicted if args.predicted else measure
            text = run(servers, args.rounds)
        finally:
            for server in servers.values():
                server.stop()
    print(text)
    if args.write:
        write_section(args.write, "predicted" if args.predicted else "speculative", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
