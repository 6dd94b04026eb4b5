"""`hearth serve --ray` end to end (issue 20): two replicas on a real local Ray cluster
behind one address, answering the official openai client, routing repeated prefixes to the
replica that holds them (seen in the x-hearth-replica header, the usage's cached tokens and
the replicas' own counters), finding stored responses on the replica that made them, and
sharing one data directory for files and vector stores. `-m "not ray"` skips it."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from retrieval.catalog import COMPLETED
from server import ids
from server.launch import free_port
from tests.conftest import RunningServer, hearth_cli, start_server, stop_server
from tests.test_responses_compliance import events_until_done

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")

REPLICA = "x-hearth-replica"
PIRATE = "You are a pirate who answers every question about ships and the sea. " * 12
BAKER = "You are a baker who explains bread, flour and ovens to beginners. " * 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("cluster")
    server = start_server(
        tmp, "--ray", "--replicas", "2", "--data-dir", str(tmp / "data"), "--log-level", "warning"
    )
    yield server
    stop_server(server)


def replicas(server: RunningServer) -> list[dict]:
    return httpx.get(f"{server.url}/cluster/replicas", timeout=10).json()["replicas"]


def settled(server: RunningServer) -> list[dict]:
    """The replicas once every one is idle as the router sees it: a request that left
    may count as load a few seconds more (Ray's cached queue length), and a new prompt
    goes to the least loaded replica before taking turns."""
    deadline = time.monotonic() + 30
    rows = replicas(server)
    while any(r["load"] or r["in_flight"] for r in rows) and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = replicas(server)
    return rows


def ask(client: openai.OpenAI, model: str, system: str, question: str) -> tuple[str, int]:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=4,
    )
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens_details is not None
    return raw.headers[REPLICA], usage.prompt_tokens_details.cached_tokens or 0


def test_the_openai_client_gets_answers_and_streams(cluster: RunningServer) -> None:
    client = cluster.client()
    model = cluster.model_id()
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
    )
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to five"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},  # sampled: "1, 2, 3, 4, 5" may end before 12
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    # Errors come back in the client's own shape, from the replica's own handlers.
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    bad = httpx.post(f"{cluster.url}/api/chat", json={"model": "nope", "messages": []})
    assert bad.status_code == 404 and isinstance(bad.json()["error"], str)  # Ollama's shape


def test_a_client_that_leaves_frees_the_replica(cluster: RunningServer) -> None:
    body = {
        "model": cluster.model_id(),
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 3000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{cluster.url}/v1/chat/completions", json=body) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 10:
                break
    # 3,000 tokens would take minutes here; the replicas report idle within seconds.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(1)
        rows = replicas(cluster)
        if all(r["in_flight"] == 0 and r["engine"].get("running", 1) == 0 for r in rows):
            return
    pytest.fail(f"a replica still runs the abandoned request: {rows}")


def test_repeated_prefixes_go_to_the_replica_that_holds_them(cluster: RunningServer) -> None:
    client = cluster.client()
    model = cluster.model_id()
    before = {r["replica"]: r for r in settled(cluster)}
    seen: dict[str, list[tuple[str, int]]] = {"pirate": [], "baker": []}
    for i in range(3):
        seen["pirate"].append(ask(client, model, PIRATE, f"Question {i}: what is a brig?"))
        seen["baker"].append(ask(client, model, BAKER, f"Question {i}: why does dough rise?"))
    pirate = {replica for replica, _ in seen["pirate"]}
    baker = {replica for replica, _ in seen["baker"]}
    # Each prompt stays on one replica, and the two prompts went to different ones.
    assert len(pirate) == 1 and len(baker) == 1 and pirate != baker, seen
    for answers in seen.values():
        assert all(cached > 100 for _, cached in answers[1:]), answers
    # The replicas' own counters agree: each computed its prompt once and served it from
    # its cache twice (routing stats arrive every second).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = {r["replica"]: r for r in replicas(cluster)}
        if all(
            r["engine"].get("requests_finished", 0)
            >= before.get(name, {}).get("engine", {}).get("requests_finished", 0) + 3
            for name, r in rows.items()
        ):
            break
        time.sleep(1)
    for name in (*pirate, *baker):
        row, old = rows[name], before.get(name, {"routed": 0, "affinity_routed": 0, "engine": {}})
        assert row["routed"] - old["routed"] >= 3
        assert row["affinity_routed"] - old["affinity_routed"] >= 2
        cached_before = old["engine"].get("prompt_tokens_cached", 0)
        assert row["engine"]["prompt_tokens_cached"] - cached_before > 200, row


def test_a_stored_response_is_found_on_the_replica_that_made_it(cluster: RunningServer) -> None:
    client = cluster.client()
    model = cluster.model_id()
    made = []
    rows = settled(cluster)
    for instructions in (PIRATE, BAKER):  # two new prompts: two replicas (see above)
        raw = client.responses.with_raw_response.create(
            model=model, instructions=instructions, input="Hello", max_output_tokens=4
        )
        made.append((raw.parse().id, raw.headers[REPLICA]))
    assert made[0][1] != made[1][1], (made, rows)
    for response_id, replica in made:
        got = httpx.get(f"{cluster.url}/v1/responses/{response_id}")
        assert got.status_code == 200 and got.headers[REPLICA] == replica
        follow = client.responses.with_raw_response.create(
            model=model, previous_response_id=response_id, input="And then?", max_output_tokens=4
        )
        assert follow.headers[REPLICA] == replica and follow.parse().output_text is not None
    # A stored chat completion, too, is read back from the replica that made it.
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": BAKER}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        store=True,
    )
    completion_id, replica = raw.parse().id, raw.headers[REPLICA]
    for _ in range(4):
        got = httpx.get(f"{cluster.url}/v1/chat/completions/{completion_id}/messages")
        assert got.status_code == 200 and got.headers[REPLICA] == replica
    # A conversation, and the responses that extend it, live on the replica that made it.
    made_conversation = client.conversations.with_raw_response.create(metadata={"k": "v"})
    conversation_id, replica = made_conversation.parse().id, made_conversation.headers[REPLICA]
    for instructions in (PIRATE, BAKER, PIRATE):  # prompts that would otherwise go apart
        turn = client.responses.with_raw_response.create(
            model=model,
            instructions=instructions,
            conversation=conversation_id,
            input="Hello",
            max_output_tokens=4,
        )
        assert turn.headers[REPLICA] == replica
    got = httpx.get(f"{cluster.url}/v1/conversations/{conversation_id}/items")
    assert got.status_code == 200 and got.headers[REPLICA] == replica
    assert len(got.json()["data"]) == 6


def test_the_websocket_mode_is_answered_by_the_replicas(cluster: RunningServer) -> None:
    """Each response.create on one connection is routed as a request of its own: a chain
    of previous_response_id stays on the replica that holds it (another replica would not
    find it), events arrive as messages, errors are events and the socket stays open."""
    client = cluster.client()
    model = cluster.model_id()

    with client.responses.connect() as connection:
        made: list[str] = []
        for text in ("Hello", "And then?", "Why?", "Go on."):
            extra = {"previous_response_id": made[-1]} if made else {}
            connection.response.create(
                model=model, instructions=PIRATE, input=text, max_output_tokens=4, **extra
            )
            events = events_until_done(connection)
            assert events[0]["type"] == "response.created", events[-1]
            final = events[-1]["response"]
            assert final["previous_response_id"] == (made[-1] if made else None)
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            made.append(final["id"])
        assert len({ids.replica_of(m, "resp_") for m in made}) == 1, made
        connection.send({"type": "response.create", "model": model, "input": []})
        (error,) = events_until_done(connection)
        assert error["error"]["param"] == "input" and error["code"]
        nobody = {"previous_response_id": "resp_nobody_0123"}  # the replicas' own 404
        connection.send({"type": "response.create", "model": model, "input": "x", **nobody})
        (error,) = events_until_done(connection)
        assert "resp_nobody_0123" in error["error"]["message"], error
        connection.response.create(model=model, input="Hi", max_output_tokens=4)
        assert events_until_done(connection)[-1]["type"] in (
            "response.completed",
            "response.incomplete",
        )
    got = httpx.get(f"{cluster.url}/v1/responses/{made[-1]}")
    assert got.status_code == 200 and got.json()["previous_response_id"] == made[-2]
    # A client that leaves mid-answer frees the replica making it.
    with client.responses.connect() as connection:
        long = {"input": "Write a very long story.", "max_output_tokens": 3000}
        connection.send({"type": "response.create", "model": model, **long, "ignore_eos": True})
        for _ in range(10):
            connection.recv_bytes()
        leaving = time.monotonic()
    # At once, not when a send to the closed socket fails: Ray's proxy drops those.
    assert time.monotonic() - leaving < 5  # the server answered the close at once
    deadline = time.monotonic() + 8
    rows = replicas(cluster)
    while any(r["engine"].get("running", 1) for r in rows) and time.monotonic() < deadline:
        time.sleep(1)
        rows = replicas(cluster)
    assert all(r["engine"].get("running", 1) == 0 for r in rows), rows


def test_replicas_share_files_and_vector_stores(cluster: RunningServer, tmp_path: Path) -> None:
    client = cluster.client()
    store = client.vector_stores.create(name="shared")
    text = "The spare key of the boathouse hangs behind the tide table. " * 20
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("boathouse.txt", io.BytesIO(text.encode()))
    )
    assert done.status == COMPLETED

    def search(_: int) -> tuple[str, list[str]]:
        r = httpx.post(
            f"{cluster.url}/v1/vector_stores/{store.id}/search",
            json={"query": "where is the spare key?", "max_num_results": 20},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        hits = r.json()["data"]
        texts = [part["text"] for hit in hits for part in hit["content"]]
        # One ingestion, not one per replica: no chunk is there twice.
        assert len(texts) == len(set(texts)), texts
        return r.headers[REPLICA], [hit["file_id"] for hit in hits]

    answered_by: set[str] = set()
    for _ in range(5):  # concurrent searches spread over both replicas
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(search, range(8)))
        assert all(hits and set(hits) == {done.id} for _, hits in results), results
        answered_by |= {replica for replica, _ in results}
        if len(answered_by) == 2:
            break
    assert len(answered_by) == 2
    client.files.delete(done.id)
    with ThreadPoolExecutor(8) as pool:
        after = list(pool.map(search, range(8)))
    assert all(hits == [] for _, hits in after), after


def test_a_batch_runs_on_a_replica_and_background_responses_too(cluster: RunningServer) -> None:
    from tests.test_batches import chat_line, results, upload, wait

    client = cluster.client()
    model = cluster.model_id()
    lines = [chat_line(f"c{i}", model, f"Say {i}.") for i in range(3)]
    batch = client.batches.create(
        input_file_id=upload(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    assert sorted(results(client, done.output_file_id)) == ["c0", "c1", "c2"]
    queued = client.responses.create(model=model, input="Hi", background=True, max_output_tokens=4)
    deadline = time.monotonic() + 60
    while client.responses.retrieve(queued.id).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.responses.retrieve(queued.id).output_text


def test_replicas_that_cannot_start_are_one_line_and_an_exit_code(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    args = ["--replicas", "1", "--port", str(free_port()), "--data-dir", str(tmp_path / "d")]
    out = hearth_cli("serve", "--ray", *args, "--model", str(missing), timeout=300)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any(line.startswith("hearth: the replicas did not start") for line in lines)
    # No traceback of the command's own (the replicas' logs, which Ray prefixes with the
    # replica's name, say why).
    assert not any(line.startswith("Traceback") for line in lines), out.stderr
    assert str(missing) in out.stderr


def bare_router(name: str) -> tuple[Any, Any]:
    """A PrefixAffinityRouter made outside any cluster, and its deployment's id."""
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from server.cluster import views
    from server.cluster.router import PrefixAffinityRouter

    deployment = DeploymentID(name=name, app_name="hearth")
    router = PrefixAffinityRouter(deployment, DeploymentHandleSource.UNKNOWN)
    router.initialize_state()
    views.ROUTERS.pop(deployment.name, None)
    return router, deployment


def test_new_prompts_take_turns_over_idle_replicas() -> None:
    """The router itself, driven without a cluster: on idle replicas a prompt nobody holds
    goes to the replica sent a new prompt longest ago, whatever the replicas hold (a
    replica holding more blocks than the other used to get every new prompt in turn)."""
    from types import SimpleNamespace

    from ray.serve._private.common import ReplicaID, RequestMetadata
    from ray.serve._private.request_router.common import PendingRequest

    from server.cluster.affinity import block_hashes
    from server.cluster.forwarding import ForwardedRequest

    router, deployment = bare_router("turns-test")
    ids = [ReplicaID(unique_id, deployment) for unique_id in ("aaaa", "bbbb")]
    candidates = [SimpleNamespace(replica_id=rid) for rid in ids]

    async def route(n: int, text: str) -> str:
        request = ForwardedRequest("POST", "/v1/chat/completions", b"", [], b"", ("x", 1))
        request.prefix_blocks = block_hashes(text, 64)
        pending = PendingRequest([request], {}, RequestMetadata(f"r{n}", f"r{n}"))
        ranks = await router.choose_replicas(candidates, pending)  # type: ignore[arg-type]
        chosen = ranks[0][0].replica_id
        router.on_request_routed(pending, chosen, None)  # type: ignore[arg-type]
        router.on_request_completed(chosen, f"r{n}")
        return chosen.unique_id

    async def scenario() -> None:
        # One long prompt and its repeats: a replica holding many blocks.
        first = [await route(i, PIRATE + f" question {i}") for i in range(3)]
        assert len(set(first)) == 1
        # Two distinct new prompts in a row: one each, the other replica first.
        baker, third = await route(10, BAKER), await route(11, "You are a gardener. " * 40)
        assert baker != first[0] and third == first[0]
        assert await route(12, BAKER + " more") == baker  # and affinity still holds

    asyncio.run(scenario())


def test_a_request_ray_never_reports_ended_stops_counting() -> None:
    """Ray Serve does not always tell the router that a request ended (seen with a client
    leaving mid-stream under load): the replica's own report mends the router's count, so
    the replica does not look busy for good."""
    from types import SimpleNamespace

    from ray.serve._private.common import ReplicaID, RequestMetadata
    from ray.serve._private.request_router.common import PendingRequest

    router, deployment = bare_router("heal-test")
    rid = ReplicaID("aaaa", deployment)
    replica = SimpleNamespace(replica_id=rid, routing_stats={})
    router._replicas = {rid: replica}  # type: ignore[dict-item]

    def send(n: int) -> None:
        pending = PendingRequest([], {}, RequestMetadata(f"r{n}", f"r{n}"))
        router.on_request_routed(pending, rid, None)  # type: ignore[arg-type]

    async def scenario() -> None:  # (pending requests carry a future: a loop runs)
        for n in range(3):
            send(n)
        router.on_request_completed(rid, "r0")  # r1 never reported ended; r2 still runs
        assert router.open_on(rid) == 2  # no report from the replica yet: its own count
        replica.routing_stats = {"requests_started": 3, "requests_open": 1}
        assert router.open_on(rid) == 1 and router.load(rid) == 1
        # Sent after the replica's report: still counted until the next one.
        send(3)
        assert router.open_on(rid) == 2
        replica.routing_stats = {"requests_started": 4, "requests_open": 0}
        assert router.open_on(rid) == 0

    asyncio.run(scenario())
