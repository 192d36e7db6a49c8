"""YAML configs with ``--set key=value`` overrides, validated at start.

Every problem is reported in one line naming the file and the dotted key, before any model is
loaded or any call is made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from data.errors import UserError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(UserError, ValueError):
    """A config that cannot run; the message is one line naming the file and key."""


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
    config: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', None) or _first_line(err)})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        config = loaded or {}
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def validate(model: type[ConfigT], raw: dict[str, Any], source: str = "config") -> ConfigT:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in _user_path(first["loc"])) or "(top level)"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
            message += f" (got {first['input']!r})"
        more = f" [and {len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
        raise ConfigError(f"{source}: {key}: {message}{more}") from None


def load_config(model: type[ConfigT], path: str | Path | None, overrides: list[str] = ()) -> ConfigT:
    return validate(model, load_raw(path, overrides), source=str(path) if path else "config")


def _user_path(loc: tuple) -> list:
    """Drop the tag pydantic inserts into the path for an engine union
    (``engine.vllm.dtype`` -> ``engine.dtype``): the user never wrote it."""
    from llm.config import HfEngineConfig, OpenAIEngineConfig, VllmEngineConfig

    tags = {m.model_fields["kind"].default for m in (VllmEngineConfig, HfEngineConfig, OpenAIEngineConfig)}
    return [part for i, part in enumerate(loc) if not (0 < i < len(loc) - 1 and part in tags)]


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
