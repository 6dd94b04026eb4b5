"""Hearth's configuration: config/default.toml, then a user file, then env, then CLI flags.

Every value llama.cpp would abort on is checked here, so a bad value is an error message
at start-up and never a crash inside the C library.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from config import DEFAULT_CONFIG_PATH

ENV_PREFIX = "HEARTH_"
# llama.cpp's LLAMA_MAX_SEQ: sequence ids are 0..255.
LLAMA_MAX_SEQ = 256


class ConfigError(ValueError):
    """Configuration that cannot run; the message says which value and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    path: str = ""
    alias: str = ""
    n_ctx: int = Field(8192, ge=16)
    context_length: int = Field(0, ge=0)
    n_gpu_layers: int = Field(-1, ge=-1)
    n_threads: int = Field(0, ge=0)
    n_batch: int = Field(512, ge=1)
    n_ubatch: int = Field(512, ge=1)
    chat_template: str = ""

    @model_validator(mode="after")
    def _batch_sizes(self) -> ModelSettings:
        if self.n_ubatch > self.n_batch:
            raise ValueError(f"n_ubatch ({self.n_ubatch}) must not exceed n_batch ({self.n_batch})")
        if self.context_length > self.n_ctx:
            raise ValueError(
                f"context_length ({self.context_length}) must not exceed n_ctx ({self.n_ctx}): "
                "one request cannot hold more positions than the KV cache has cells"
            )
        return self


class ModelEntry(_Section):
    """One `[[models.entries]]` table: a GGUF served beside the default model."""

    path: str
    alias: str = ""
    n_ctx: int = Field(0, ge=0)  # 0: model.n_ctx
    context_length: int = Field(0, ge=0)  # 0: min(n_ctx, the model's training context)
    max_running: int = Field(0, ge=0, le=LLAMA_MAX_SEQ)  # 0: engine.max_running
    n_gpu_layers: int | None = Field(None, ge=-1)  # None: model.n_gpu_layers
    chat_template: str = ""
    pinned: bool = False
    keep_alive: float | None = None  # seconds; None: models.keep_alive

    @model_validator(mode="after")
    def _context(self) -> ModelEntry:
        if self.n_ctx and self.context_length > self.n_ctx:
            raise ValueError(
                f"context_length ({self.context_length}) must not exceed n_ctx ({self.n_ctx})"
            )
        return self


class ModelsSettings(_Section):
    """More chat models than the default: loaded on demand, unloaded when idle."""

    dir: str = ""
    max_loaded: int = Field(3, ge=1)
    keep_alive: float = 300.0
    memory_budget_mb: int = Field(0, ge=0)
    entries: list[ModelEntry] = Field(default_factory=list)


class EngineSettings(_Section):
    max_running: int = Field(8, ge=1, le=LLAMA_MAX_SEQ)
    max_waiting: int = Field(1024, ge=0)
    step_token_budget: int = Field(512, ge=1)
    default_max_tokens: int = Field(0, ge=0)
    # A step that decodes and computes prompts as two llama_decode calls (engine.py's
    # EngineConfig.separate_prompts); auto: when the model runs on the CPU.
    separate_prompts: Literal["auto", "on", "off"] = "auto"


class SpeculativeSettings(_Section):
    """Prompt-lookup drafting: a sequence's next tokens guessed from its own earlier text
    and verified in the step's one llama_decode (server/engine/drafting.py)."""

    enabled: bool = True
    max_draft: int = Field(8, ge=1, le=64)  # draft tokens per sequence and step
    # ... for a sequence that decodes alone in its step and copies (its last draft accepted
    # whole; never fewer than max_draft): with others beside it, a long draft widens every
    # step for one sequence's sake.
    max_draft_alone: int = Field(16, ge=1, le=64)
    ngram_max: int = Field(3, ge=1, le=8)  # n-gram lengths looked up, longest first
    ngram_min: int = Field(2, ge=1, le=8)

    @model_validator(mode="after")
    def _ngrams(self) -> SpeculativeSettings:
        if self.ngram_min > self.ngram_max:
            raise ValueError("speculative.ngram_min must not exceed speculative.ngram_max")
        return self


class CacheSettings(_Section):
    enabled: bool = True
    max_entries: int = Field(24, ge=0)
    max_cells: int = Field(0, ge=0)
    # Host-RAM tier for idle entries, in MiB: -1 a quarter of the memory available at
    # start-up (at most 4 GiB), 0 off.
    ram_mb: int = Field(-1, ge=-1)
    persist_dir: str = ""
    persist_max_mb: int = Field(1024, ge=1)


class EmbeddingSettings(_Section):
    enabled: bool = True
    path: str = ""
    alias: str = ""
    n_ctx: int = Field(512, ge=64)
    n_seq_max: int = Field(32, ge=1, le=LLAMA_MAX_SEQ)

    @model_validator(mode="after")
    def _pooling_abort(self) -> EmbeddingSettings:
        # llama.cpp aborts the process (MEAN pooling) unless n_seq_max divides the batch.
        if self.n_ctx % self.n_seq_max:
            raise ValueError(
                f"n_ctx ({self.n_ctx}) must be a multiple of n_seq_max ({self.n_seq_max})"
            )
        return self


class RetrievalSettings(_Section):
    max_upload_mb: int = Field(64, ge=1)
    lancedb_uri: str = ""
    database_url: str = ""
    chunk_store: Literal["lancedb", "pgvector"] = "lancedb"
    files_uri: str = ""
    ray_address: str = ""
    ray_workers: int = Field(1, ge=1, le=256)
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    chunk_tokens: int = Field(256, ge=16, le=500)
    chunk_overlap: int = Field(32, ge=0)
    watch_dir: str = ""
    watch_store: str = "watched"
    watch_interval: float = Field(5.0, gt=0)
    watch_symlinks: Literal["skip", "inside"] = "skip"
    # Parsing one file may take this long (it runs in a child process that is killed
    # past it); a job the server did not survive this many times is given up.
    parse_timeout: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    # A cross-encoder GGUF for the second stage of search and /v1/rerank ("": none).
    rerank_model: str = ""
    rerank_candidates: int = Field(20, ge=1, le=200)
    rerank_n_ctx: int = Field(4096, ge=64)
    rerank_n_seq_max: int = Field(8, ge=1, le=LLAMA_MAX_SEQ)

    @model_validator(mode="after")
    def _shared_storage(self) -> RetrievalSettings:
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// URL (or empty for SQLite)")
        if "://" in self.lancedb_uri and not self.lancedb_uri.startswith(("s3://", "file://")):
            raise ValueError(
                f"lancedb_uri {self.lancedb_uri!r}: object storage must be s3:// (any "
                "S3-compatible server, through s3_endpoint)"
            )
        if self.files_uri and not self.files_uri.startswith("s3://"):
            raise ValueError(f"files_uri {self.files_uri!r} must be s3:// (or empty)")
        if self.chunk_store == "pgvector" and not self.database_url:
            raise ValueError('chunk_store = "pgvector" needs database_url (its PostgreSQL)')
        return self

    @model_validator(mode="after")
    def _rerank_batch(self) -> RetrievalSettings:
        if self.rerank_n_ctx % self.rerank_n_seq_max:
            raise ValueError(
                f"rerank_n_ctx ({self.rerank_n_ctx}) must be a multiple of rerank_n_seq_max "
                f"({self.rerank_n_seq_max})"
            )
        return self


class StorageSettings(_Section):
    # Where Hearth keeps converted models, its cache and (later) documents.
    # Empty: $XDG_DATA_HOME/hearth, else ~/.local/share/hearth.
    data_dir: str = ""
    # Several Hearth processes of this machine use data_dir at once (hearth serve --ray
    # sets it for its replicas).
    several_processes: bool = False
    # Stored responses, stored chat completions and conversations outlive a restart.
    keep_across_restarts: bool = True

    def resolved_data_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "hearth"


class ClusterSettings(_Section):
    """`hearth serve --ray`: replicas of the whole server behind one address (server/cluster)."""

    ray_address: str = ""
    replicas: int = Field(2, ge=1, le=1024)
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0)
    router: Literal["prefix", "default"] = "prefix"
    imbalance_threshold: int = Field(8, ge=0)
    block_chars: int = Field(64, ge=8, le=4096)
    max_ongoing_requests: int = Field(256, ge=1)


def is_loopback(host: str) -> bool:
    """Whether a listen address (or Host header name) is reachable only from this machine."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Every route but a minimal /health needs "Authorization: Bearer <key>" when a key is
    # set: here, in HEARTH_SERVER__API_KEY, or (kept out of the process list and shell
    # history) as the first line of api_key_file.
    api_key: str = ""
    api_key_file: str = ""
    # Listening beyond loopback without a key is refused unless this says it is meant.
    allow_insecure_remote: bool = False
    # Web pages whose origin is listed (besides http(s)://localhost, 127.0.0.1 and [::1]
    # on any port) may call the API from a browser; "*" allows every page.
    cors_origins: list[str] = Field(default_factory=list)
    # Host headers accepted while listening on loopback, besides loopback names: a page
    # that rebinds its own DNS name to 127.0.0.1 is refused. "*" accepts any.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Largest JSON request body (uploads have retrieval.max_upload_mb).
    max_body_mb: int = Field(8, ge=1)
    # Completions one request may start (prompts x n): the rest of the queue stays free.
    max_choices_per_request: int = Field(64, ge=1)
    # On SIGTERM: stop accepting, let running requests finish this long, then end the rest
    # (streams with an error event and [DONE]).
    drain_seconds: float = Field(10.0, ge=0)
    log_level: str = Field("info", pattern="^(debug|info|warning|error|critical)$")

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        # From the environment or a flag a list arrives as "a,b".
        if isinstance(v, str):
            return [item.strip() for item in v.split(",") if item.strip()]
        return v

    def read_api_key_file(self) -> None:
        """Take the key from api_key_file, when it is set and api_key is not."""
        if self.api_key or not self.api_key_file:
            return
        path = Path(self.api_key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"server.api_key_file: cannot read {path}: {e}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ConfigError(f"server.api_key_file: {path} is empty")
        self.api_key = key

    @model_validator(mode="after")
    def _remote_needs_key(self) -> ServerSettings:
        if is_loopback(self.host) or self.api_key or self.api_key_file:
            return self
        if not self.allow_insecure_remote:
            raise ValueError(
                f"listening on {self.host} lets other machines use this server, and no API "
                "key is set: set server.api_key (or api_key_file), or pass "
                "--allow-insecure-remote if everyone who can reach it may use it"
            )
        return self


class Settings(_Section):
    model: ModelSettings = ModelSettings()
    models: ModelsSettings = ModelsSettings()
    engine: EngineSettings = EngineSettings()
    speculative: SpeculativeSettings = SpeculativeSettings()
    cache: CacheSettings = CacheSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    storage: StorageSettings = StorageSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    server: ServerSettings = ServerSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="after")
    def _cross_section(self) -> Settings:
        if self.engine.step_token_budget > self.model.n_batch:
            raise ValueError(
                f"engine.step_token_budget ({self.engine.step_token_budget}) must not exceed "
                f"model.n_batch ({self.model.n_batch}): one step is one llama_decode call"
            )
        if self.engine.max_running > self.model.n_ctx:
            raise ValueError(
                f"engine.max_running ({self.engine.max_running}) exceeds model.n_ctx "
                f"({self.model.n_ctx}): every running sequence needs at least one KV cell"
            )
        # One more id goes to the host-RAM tier, which loads entries there.
        if self.cache.enabled and self.engine.max_running + self.cache.max_entries >= LLAMA_MAX_SEQ:
            raise ValueError(
                f"engine.max_running + cache.max_entries ({self.engine.max_running} + "
                f"{self.cache.max_entries}) must stay under llama.cpp's {LLAMA_MAX_SEQ} "
                "sequence ids (the prefix cache's host-RAM tier takes one more)"
            )
        if self.cache.max_cells > self.model.n_ctx:
            raise ValueError(
                f"cache.max_cells ({self.cache.max_cells}) exceeds model.n_ctx ({self.model.n_ctx})"
            )
        return self


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """HEARTH_SECTION__KEY=value → {"section": {"key": "value"}}; pydantic coerces the type."""
    overrides: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        overrides.setdefault(section, {})[key] = value
    return overrides


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        lines.append(f"  {where}: {item['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Layer default.toml < config_file < HEARTH_* env < overrides (CLI) and validate."""
    data = _read_toml(DEFAULT_CONFIG_PATH)
    if config_file:
        data = _deep_merge(data, _read_toml(Path(config_file)))
    data = _deep_merge(data, _env_overrides(os.environ if environ is None else environ))
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
    settings.server.read_api_key_file()
    return settings
