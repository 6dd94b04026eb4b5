"""The engines' counters as Prometheus metrics, read at scrape time (GET /metrics renders
them): one series per loaded chat model (label `model`), and the embedding engine's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.engine.embedder import Embedder
from server.engine.stats import EngineStats

# stats field → (metric name, help); counters only ever grow, gauges are current values.
_COUNTERS = {
    "steps": ("hearth_engine_steps", "llama_decode calls made by the engine"),
    "multi_sequence_steps": (
        "hearth_engine_batched_steps",
        "steps whose batch held more than one sequence",
    ),
    "tokens_decoded": ("hearth_engine_tokens", "tokens through llama_decode"),
    "prompt_tokens_processed": ("hearth_engine_prompt_tokens", "prompt tokens computed"),
    "decode_seconds": ("hearth_engine_decode_seconds", "time spent in llama_decode"),
    "preemptions": ("hearth_engine_preemptions", "sequences preempted for KV cells"),
    "draft_tokens": ("hearth_draft_tokens", "prompt-lookup draft tokens verified"),
    "draft_accepted": ("hearth_draft_accepted_tokens", "draft tokens the model accepted"),
    "draft_steps": ("hearth_draft_verifications", "drafts verified (one per sequence and step)"),
    "requests_finished": ("hearth_requests_finished", "generation requests finished"),
}
_GAUGES = {
    "running": ("hearth_requests_running", "requests being decoded"),
    "waiting": ("hearth_requests_waiting", "requests waiting for a sequence"),
    "cells_used": ("hearth_kv_cells_used", "KV cells in use"),
    "n_cells": ("hearth_kv_cells", "KV cells in the context"),
    "cache_cells": ("hearth_prefix_cache_cells", "KV cells held by the prefix cache tree"),
    "cache_entries": ("hearth_prefix_cache_entries", "finished requests kept in the cache"),
    "free_sequence_ids": ("hearth_free_sequence_ids", "llama.cpp sequence ids not in use"),
    "active": ("hearth_requests_active", "requests submitted and not yet answered"),
    "ram_bytes": ("hearth_prefix_cache_ram_bytes", "bytes of KV the host-RAM tier holds"),
    "ram_entries": ("hearth_prefix_cache_ram_entries", "entries the host-RAM tier holds"),
    "ram_budget": ("hearth_prefix_cache_ram_budget_bytes", "the host-RAM tier's byte budget"),
    "draft_acceptance": ("hearth_draft_acceptance_ratio", "share of draft tokens accepted"),
    "tokens_per_draft_step": (
        "hearth_draft_tokens_per_verification",
        "output tokens a draft verification produced on average",
    ),
}
_CACHE_COUNTERS = {
    "lookups": "prefix cache lookups",
    "hits": "lookups that reused at least one token",
    "hit_tokens": "prompt tokens served from the cache",
    "ram_hits": "lookups served by restoring KV from host RAM",
    "ram_hit_tokens": "prompt tokens restored from host RAM",
    "evictions": "cache entries taken out of the KV cells (spilled or dropped)",
    "deduplicated_tokens": "tokens computed twice at once whose copy was dropped",
}


# What the collector reads at each scrape: (model id, its engine's stats) for every
# loaded chat model.
EngineStatsSource = Callable[[], list[tuple[str, EngineStats]]]


class EngineCollector(Collector):
    """Every loaded chat model's engine counters, labelled with its id (`model`)."""

    def __init__(self, engines: EngineStatsSource, embedder: Embedder | None) -> None:
        self.engines = engines
        self.embedder = embedder

    def collect(self) -> Iterator[Metric]:
        engines = self.engines()

        def family(
            kind: type[Metric], name: str, doc: str, value: Callable[[EngineStats], float]
        ) -> Metric:
            metric = kind(name, doc, labels=["model"])
            for model_id, stats in engines:
                metric.add_metric([model_id], value(stats))  # type: ignore[attr-defined]
            return metric

        for field, (name, doc) in _COUNTERS.items():
            yield family(CounterMetricFamily, name, doc, lambda s, f=field: getattr(s, f))
        for field, (name, doc) in _GAUGES.items():
            yield family(GaugeMetricFamily, name, doc, lambda s, f=field: getattr(s, f))
        for field, doc in _CACHE_COUNTERS.items():
            yield family(
                CounterMetricFamily,
                f"hearth_prefix_cache_{field}",
                doc,
                lambda s, f=field: getattr(s.cache, f),
            )
        if engines:
            for field in asdict(engines[0][1].tier):
                yield family(
                    CounterMetricFamily,
                    f"hearth_prefix_cache_ram_{field}",
                    f"host-RAM tier: {field}",
                    lambda s, f=field: getattr(s.tier, f),
                )
            for field in asdict(engines[0][1].disk):
                yield family(
                    GaugeMetricFamily,
                    f"hearth_prefix_cache_disk_{field}",
                    f"disk tier (cache.persist_dir): {field.replace('_', ' ')}",
                    lambda s, f=field: getattr(s.disk, f),
                )
        parts = CounterMetricFamily(
            "hearth_engine_step_seconds",
            "engine-thread time per part of a step (schedule, build, flush, decode, sample, apply)",
            labels=["model", "part"],
        )
        for model_id, stats in engines:
            for part, value in asdict(stats.profile).items():
                if part != "steps":
                    parts.add_metric([model_id, part], value)
        yield parts
        yield GaugeMetricFamily("hearth_models_loaded", "chat models in memory", value=len(engines))
        if self.embedder is not None:
            for field, value in asdict(self.embedder.stats).items():
                yield CounterMetricFamily(
                    f"hearth_embedding_{field}", f"embedding engine: {field}", value=value
                )


def make_registry(engines: EngineStatsSource, embedder: Embedder | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(EngineCollector(engines, embedder))
    return registry
