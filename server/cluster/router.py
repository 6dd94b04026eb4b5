"""Ray Serve's side of prefix affinity: a RequestRouter for the replica deployment that
ranks replicas by how much of a request's prompt each was sent before (affinity.py) and by
load, so the replica already holding a prefix's KV computes it no second time.

The router lives in the process that holds the deployment handle (the ingress), one per
handle, and knows what its own requests were and where they went; with several ingress
replicas each has its own table (an approximation: a prefix may be learnt once per
ingress). Load is Ray's queue length for the replica (requests it holds, from any router),
or this router's own count while Ray has none.
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from server.cluster import views
from server.cluster.affinity import AffinityTable, rank_replicas
from server.cluster.forwarding import ForwardedRequest

# How long a routing choice counts as load before Ray sends the request (see _choosing).
CHOICE_SECONDS = 5.0


class PrefixAffinityRouter(RequestRouter):
    def initialize_state(
        self, imbalance_threshold: int = 8, max_blocks: int = 200_000, **_: Any
    ) -> None:
        self.imbalance_threshold = imbalance_threshold
        self.table = AffinityTable(max_blocks)
        self.in_flight: dict[ReplicaID, int] = {}
        self.routed: dict[ReplicaID, int] = {}
        self.affinity_hits: dict[ReplicaID, int] = {}  # sent where their prefix was
        # When each replica (by unique id) was last sent a prompt it did not hold: new
        # prompts take turns among equally loaded replicas (rank_replicas).
        self.last_new: dict[str, float] = {}
        # Requests this router has pointed at a replica but Ray has not sent yet: request
        # id -> (replica, when, whether by affinity). Counted as load, so that a burst
        # routed in one go does not all go to the replica that looked least busy first.
        self._choosing: dict[str, tuple[str, float, bool]] = {}
        if self._deployment_id is not None:
            # Through the module: a name imported from it would be shipped as a copy.
            views.ROUTERS[self._deployment_id.name] = self

    @staticmethod
    def _forwarded(pending_request: PendingRequest | None) -> ForwardedRequest | None:
        if pending_request is None or not pending_request.args:
            return None
        arg = pending_request.args[0]
        return arg if isinstance(arg, ForwardedRequest) else None

    def load(self, replica: ReplicaID) -> int:
        queued = self._replica_queue_len_cache.get(replica)
        base = queued if queued is not None else self.open_on(replica)
        return base + sum(1 for u, _, _ in self._choosing.values() if u == replica.unique_id)

    def open_on(self, replica: ReplicaID) -> int:
        """Requests sent to `replica` and not answered yet: this router's count, mended by
        what the replica last reported. Ray Serve does not always tell a router that a
        request ended (a client that left mid-stream can go unreported), and a count that
        only grows would make the replica look busy for good. The replica reports how many
        requests it began and how many are still open; those sent since that report
        (sent in all, less begun there) are open too. Only ever lowers the count: with
        several routers, the replica's figures include requests the others sent."""
        count = self.in_flight.get(replica, 0)
        stats = self._stats_of(replica)
        started, still_open = stats.get("requests_started"), stats.get("requests_open")
        if isinstance(started, int) and isinstance(still_open, int):
            since = max(0, self.routed.get(replica, 0) - started)
            count = min(count, still_open + since)
            self.in_flight[replica] = count
        return count

    def _stats_of(self, replica: ReplicaID) -> dict[str, Any]:
        running = self._replicas.get(replica)
        return dict(running.routing_stats or {}) if running is not None else {}

    def _forget_stale_choices(self) -> None:
        """A request cancelled while being routed never reaches on_request_routed: its
        choice stops counting after a few seconds (routing takes milliseconds)."""
        cutoff = time.monotonic() - CHOICE_SECONDS
        for request_id in [k for k, (_, when, _) in self._choosing.items() if when < cutoff]:
            del self._choosing[request_id]

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        request = self._forwarded(pending_request)
        if request is not None and request.replica in by_id:
            # It names an object only that replica holds (a stored response).
            return [[by_id[request.replica]]]
        blocks = request.prefix_blocks if request is not None else []
        request_id = pending_request.metadata.internal_request_id if pending_request else ""
        self._choosing.pop(request_id, None)  # a retry: its earlier choice did not stick
        self._forget_stale_choices()
        depths = self.table.match(blocks, by_id)
        loads = {u: self.load(r.replica_id) for u, r in by_id.items()}
        ranks = rank_replicas(depths, loads, self.last_new, self.imbalance_threshold)
        if request_id and ranks:
            top = ranks[0][0]
            self._choosing[request_id] = (top, time.monotonic(), depths[top] > 0)
        return [[by_id[u] for u in rank] for rank in ranks]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        self.in_flight[replica_id] = self.in_flight.get(replica_id, 0) + 1
        self.routed[replica_id] = self.routed.get(replica_id, 0) + 1
        choice = self._choosing.pop(pending_request.metadata.internal_request_id, None)
        if choice is not None and choice[2] and choice[0] == replica_id.unique_id:
            self.affinity_hits[replica_id] = self.affinity_hits.get(replica_id, 0) + 1
        else:
            self.last_new[replica_id.unique_id] = time.monotonic()
        request = self._forwarded(pending_request)
        if request is not None and request.prefix_blocks:
            # Recorded at once, not when the answer ends: the replica's engine shares a
            # running request's prefix with the next one too.
            self.table.record(request.prefix_blocks, replica_id.unique_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.in_flight[replica_id] = max(0, self.in_flight.get(replica_id, 0) - 1)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.forget(replica_id.unique_id)
        self.last_new.pop(replica_id.unique_id, None)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        before = {r.unique_id for r in self._replica_id_set}
        super().update_replicas(replicas)
        after = {r.unique_id for r in self._replica_id_set}
        for gone in before - after:
            self.table.forget(gone)
            self.last_new.pop(gone, None)

    def view(self) -> list[dict[str, Any]]:
        """Each replica as this router sees it, with the stats the replica last reported
        (record_routing_stats, every few seconds)."""
        out = []
        for replica in self._replicas_list:
            rid = replica.replica_id
            out.append(
                {
                    "replica": rid.unique_id,
                    "routed": self.routed.get(rid, 0),
                    "affinity_routed": self.affinity_hits.get(rid, 0),
                    "in_flight": self.open_on(rid),
                    "load": self.load(rid),
                    "prefix_blocks": self.table.blocks_held(rid.unique_id),
                    "engine": dict(replica.routing_stats or {}),
                }
            )
        return sorted(out, key=lambda r: r["replica"])
