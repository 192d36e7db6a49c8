"""Reading YAML configs and reporting validation errors in one line naming the file and key.

Shared by the CLI's stage configs and the benchmark descriptions, so every config a user writes
fails the same way: ``run.yaml: sampling.temperature: Input should be ... (got -1)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from data.errors import ConfigError, not_utf8

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: {not_utf8(err)}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', None) or _first_line(err)})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return loaded or {}


def validation_message(err: ValidationError, *, hidden_loc: Collection[str] = ()) -> str:
    """``key: what is wrong (got value) [and N more]`` for the most telling error: an unknown
    key first (a typo usually explains the other errors). ``hidden_loc``: path parts pydantic
    adds that the user never wrote (the tags of a discriminated union)."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = first["loc"]
    parts = [p for i, p in enumerate(loc) if not (0 < i < len(loc) - 1 and p in hidden_loc)]
    key = ".".join(str(p) for p in parts) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and first["type"] != "missing" and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    more = f" [and {len(errors) - 1} more]" if len(errors) > 1 else ""
    return f"{key}: {message}{more}"


def validate_model(model: type[ModelT], raw: dict[str, Any], source: str, *,
                   hidden_loc: Collection[str] = ()) -> ModelT:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {validation_message(err, hidden_loc=hidden_loc)}") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
