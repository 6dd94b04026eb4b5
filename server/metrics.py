"""The engines' counters as Prometheus metrics, read at scrape time (GET /metrics renders
them)."""

from __future__ import annotations

from collections.abc import Iterator
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


class EngineCollector(Collector):
    def __init__(self, stats: EngineStats, embedder: Embedder | None) -> None:
        self.stats = stats
        self.embedder = embedder

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        for field, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=getattr(stats, field))
        for field, (name, doc) in _GAUGES.items():
            yield GaugeMetricFamily(name, doc, value=getattr(stats, field))
        for field, doc in _CACHE_COUNTERS.items():
            yield CounterMetricFamily(
                f"hearth_prefix_cache_{field}", doc, value=getattr(stats.cache, field)
            )
        for field, value in asdict(stats.tier).items():
            yield CounterMetricFamily(
                f"hearth_prefix_cache_ram_{field}", f"host-RAM tier: {field}", value=value
            )
        for field, value in asdict(stats.disk).items():
            yield GaugeMetricFamily(
                f"hearth_prefix_cache_disk_{field}",
                f"disk tier (cache.persist_dir): {field.replace('_', ' ')}",
                value=value,
            )
        parts = CounterMetricFamily(
            "hearth_engine_step_seconds",
            "engine-thread time per part of a step (schedule, build, flush, decode, sample, apply)",
            labels=["part"],
        )
        for part, value in asdict(stats.profile).items():
            if part != "steps":
                parts.add_metric([part], value)
        yield parts
        if self.embedder is not None:
            for field, value in asdict(self.embedder.stats).items():
                yield CounterMetricFamily(
                    f"hearth_embedding_{field}", f"embedding engine: {field}", value=value
                )


def make_registry(stats: EngineStats, embedder: Embedder | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(EngineCollector(stats, embedder))
    return registry
