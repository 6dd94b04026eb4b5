"""What clients keep on the server (stored responses, stored chat completions,
conversations) written through to SQLite in the data directory, so a restart finds them
as OpenAI would: a `previous_response_id` or a conversation a client holds goes on
working after the server was upgraded or rebooted.

The in-memory stores stay what requests read (response_store.py, conversation_store.py);
this file mirrors them: a row is written when an object changes, removed when it is
deleted or pushed out by the stores' bounds, and the newest rows are read back at start.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS kept (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    written REAL NOT NULL,
    PRIMARY KEY (kind, id)
);
"""


class KeptOnDisk:
    """Rows of JSON by kind ("response", "chat_completion", "conversation") and id."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def write(self, kind: str, object_id: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, ensure_ascii=False)
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO kept (kind, id, data, written) VALUES (?, ?, ?, ?)",
                (kind, object_id, text, time.time()),
            )

    def remove(self, kind: str, object_id: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM kept WHERE kind = ? AND id = ?", (kind, object_id))

    def read(self, kind: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` objects of a kind, oldest first (the order to re-add them)."""
        with self._lock, self._conn:
            rows = self._conn.execute(
                "SELECT data FROM kept WHERE kind = ? ORDER BY written DESC LIMIT ?",
                (kind, limit),
            ).fetchall()
        out = []
        for (text,) in reversed(rows):
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()
