"""`hearth ingest` and `hearth search`: talk to a running Hearth over its OpenAI API.

Going through the server means one process owns the models and the LanceDB directory,
and the CLI works the same against a server on another machine.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm


class ClientError(RuntimeError):
    pass


class HearthClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/") + "/v1", headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach Hearth at {self.http.base_url}: {e}") from e
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            raise ClientError(f"{method} {path}: {r.status_code} {message}")
        return r.json()

    def store_id(self, name: str, create: bool) -> str:
        """The id of the vector store with this name (or id); created when asked."""
        after = None
        while True:
            params = {"limit": 100, **({"after": after} if after else {})}
            listing = self._call("GET", "/vector_stores", params=params)
            for store in listing["data"]:
                if name in (store["id"], store["name"]):
                    return store["id"]
            if not listing["has_more"]:
                break
            after = listing["last_id"]
        if not create:
            raise ClientError(f"no vector store named {name!r}")
        return self._call("POST", "/vector_stores", json={"name": name})["id"]

    def ingest(self, paths: list[Path], store: str, quiet: bool = False) -> list[dict]:
        files = expand_paths(paths)
        if not files:
            raise ClientError("no files to ingest")
        store_id = self.store_id(store, create=True)
        attached = []
        with tqdm(
            total=len(files) * 2, desc="upload + index", unit="step", disable=quiet, file=sys.stderr
        ) as bar:
            for path in files:
                with path.open("rb") as f:
                    uploaded = self._call(
                        "POST",
                        "/files",
                        data={"purpose": "assistants"},
                        files={"file": (path.name, f)},
                    )
                attached.append(
                    self._call(
                        "POST", f"/vector_stores/{store_id}/files", json={"file_id": uploaded["id"]}
                    )
                )
                bar.update(1)
            pending = {a["id"] for a in attached}
            results: dict[str, dict] = {}
            while pending:
                for file_id in list(pending):
                    state = self._call("GET", f"/vector_stores/{store_id}/files/{file_id}")
                    if state["status"] != "in_progress":
                        results[file_id] = state
                        pending.discard(file_id)
                        bar.update(1)
                if pending:
                    time.sleep(0.2)
        return [
            results[a["id"]] | {"filename": p.name} for a, p in zip(attached, files, strict=True)
        ]

    def search(
        self, query: str, store: str, k: int, mode: str, rerank: bool | None = None
    ) -> list[dict]:
        store_id = self.store_id(store, create=False)
        body: dict[str, object] = {"query": query, "max_num_results": k, "mode": mode}
        if rerank is not None:
            body["rerank"] = rerank
        return self._call("POST", f"/vector_stores/{store_id}/search", json=body)["data"]

    def has_reranker(self) -> bool:
        models = self._call("GET", "/models")["data"]
        return any((m.get("meta") or {}).get("kind") == "rerank" for m in models)

    def ask(
        self, question: str, store: str, k: int, mode: str, max_tokens: int
    ) -> tuple[str, list[dict]]:
        """Stream an answer drawn from the store to stdout; returns (answer, citations)."""
        store_id = self.store_id(store, create=False)
        model = self._call("GET", "/models")["data"][0]["id"]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "stream": True,
            "max_tokens": max_tokens,
            "retrieval": {"vector_store_ids": [store_id], "max_num_results": k, "mode": mode},
        }
        answer: list[str] = []
        cited: list[dict] = []
        try:
            with self.http.stream("POST", "/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ClientError(f"chat: {r.status_code} {r.text}")
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise ClientError(chunk["error"].get("message", "server error"))
                    cited = chunk.get("citations", cited)
                    for choice in chunk.get("choices", []):
                        piece = choice.get("delta", {}).get("content") or ""
                        answer.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
        except httpx.HTTPError as e:
            raise ClientError(f"cannot reach Hearth at {self.http.base_url}: {e}") from e
        sys.stdout.write("\n")
        return "".join(answer), cited


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files, and the files under folders (hidden ones left out), in order."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(
                p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")
            )
        elif path.is_file():
            out.append(path)
        else:
            raise ClientError(f"not found: {path}")
    return out
