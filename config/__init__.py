"""Hearth's default configuration ships as data beside this module."""

from pathlib import Path

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.toml")
