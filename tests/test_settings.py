"""Configuration layering and validation: bad values are messages, never llama.cpp aborts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from server.settings import ConfigError, load_settings
from tests.conftest import hearth_cli


def test_defaults_load() -> None:
    s = load_settings(environ={})
    assert s.server.port == 8080
    assert s.engine.max_running == 8
    assert s.model.path == ""


def test_layers_file_env_cli(tmp_path: Path) -> None:
    f = tmp_path / "my.toml"
    f.write_text(
        "[server]\nport = 9000\nhost = '0.0.0.0'\napi_key = 'k'\n[engine]\nmax_running = 4\n"
    )
    env = {"HEARTH_SERVER__PORT": "9100", "HEARTH_MODEL__N_CTX": "4096"}
    s = load_settings(f, {"engine": {"max_running": 2}}, environ=env)
    assert s.server.host == "0.0.0.0"  # file
    assert s.server.port == 9100  # env beats file
    assert s.model.n_ctx == 4096  # env, coerced from text
    assert s.engine.max_running == 2  # CLI beats everything


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"model": {"n_ubatch": 1024, "n_batch": 512}}, "n_ubatch"),
        ({"engine": {"step_token_budget": 1024}}, "step_token_budget"),
        ({"engine": {"max_running": 300}}, "max_running"),
        ({"engine": {"separate_prompts": "sometimes"}}, "separate_prompts"),
        ({"model": {"context_length": 99999}}, "context_length"),
        ({"server": {"port": -1}}, "port"),
        ({"model": {"n_ctx": "lots"}}, "n_ctx"),
        ({"model": {"no_such_key": 1}}, "no_such_key"),
        ({"server": {"host": "0.0.0.0"}}, "no API key is set"),
        ({"server": {"host": "192.168.1.5", "api_key_file": "/nonexistent"}}, "api_key_file"),
    ],
)
def test_invalid_values_are_clear_errors(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, overrides, environ={})
    assert fragment in str(e.value)


def test_bad_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("[server\nport=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(f, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return hearth_cli("serve", *args, timeout=60)


def test_cli_rejects_bad_config_without_crashing() -> None:
    r = _serve("--parallel", "0")
    assert r.returncode == 2
    assert "max_running" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_model_file() -> None:
    r = _serve("--model", "/nonexistent/model.gguf")
    assert r.returncode == 1
    assert "model file not found" in r.stderr


def test_remote_listening_needs_a_key_or_an_explicit_flag(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    s = load_settings(None, {"server": {"api_key_file": str(key_file)}}, environ={})
    assert s.server.api_key == "from-a-file"
    s = load_settings(None, {"server": {"host": "0.0.0.0", "api_key": "k"}}, environ={})
    assert s.server.host == "0.0.0.0"
    s = load_settings(None, {"server": {"host": "::", "allow_insecure_remote": True}}, environ={})
    assert s.server.allow_insecure_remote
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert load_settings(None, {"server": {"host": loopback}}, environ={})
    env = {"HEARTH_SERVER__CORS_ORIGINS": "https://a.example, https://b.example"}
    assert load_settings(None, None, environ=env).server.cors_origins == [
        "https://a.example",
        "https://b.example",
    ]
