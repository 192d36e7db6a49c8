"""YAML configs with ``--set key=value`` overrides, validated at start.

Every problem is reported in one line naming the file and the dotted key, before any model is
loaded or any call is made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from data.config_files import read_yaml_mapping, validate_model
from data.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def apply_override(config: dict[str, Any], assignment: str) -> None:
    """``a.b.c=value``: the value is parsed as YAML, so numbers, lists and null work."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key}: value is not valid YAML ({_first_line(err)})") from None
    node = config
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def load_raw(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    config = read_yaml_mapping(path) if path is not None else {}
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def validate(model: type[ConfigT], raw: dict[str, Any], source: str = "config") -> ConfigT:
    return validate_model(model, raw, source, hidden_loc=_engine_tags())


def load_config(model: type[ConfigT], path: str | Path | None, overrides: list[str] = ()) -> ConfigT:
    return validate(model, load_raw(path, overrides), source=str(path) if path else "config")


def _engine_tags() -> set[str]:
    """The tags pydantic puts in the path of an engine union (``engine.vllm.dtype``): the user
    wrote ``engine.dtype``."""
    from llm.config import HfEngineConfig, OpenAIEngineConfig, VllmEngineConfig

    return {m.model_fields["kind"].default for m in (VllmEngineConfig, HfEngineConfig, OpenAIEngineConfig)}


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
