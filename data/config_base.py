"""The one base of every typed config, and the mark of an "operational" key.

Every config model (stage configs and everything nested in them) derives from
:class:`StrictConfig`, so a misspelled key anywhere is refused when the config is validated,
before an engine starts or a file is written.

An operational key changes how a run goes but never what it produces (a budget, concurrency, a
batch size, a device). A stage output leaves operational keys out of its config hash, so a rerun
of the same folder may change them. The mark sits on the field itself::

    max_in_flight: int = operational(16, ge=1)

and :func:`operational_paths` finds every marked key of a config instance, however deep.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

OPERATIONAL = "operational"


class StrictConfig(BaseModel):
    """Unknown keys are errors; values are validated when the config is built."""

    model_config = ConfigDict(extra="forbid")


def operational(default: Any = ..., **field_kwargs: Any) -> Any:
    """A ``Field`` a rerun of the same output folder may change (see the module docstring)."""
    extra = dict(field_kwargs.pop("json_schema_extra", None) or {})
    extra[OPERATIONAL] = True
    if "default_factory" in field_kwargs:
        return Field(json_schema_extra=extra, **field_kwargs)
    return Field(default, json_schema_extra=extra, **field_kwargs)


def is_operational(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(OPERATIONAL))


def operational_paths(config: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of every operational key in ``config``, nested models and dicts of models
    included (in dicts and lists: ``sources.0.policy``). Walks the instance, not the class, so the member of a union that was chosen (an
    engine kind) contributes its own keys."""
    paths: list[str] = []
    for name in type(config).model_fields:
        path = f"{prefix}{name}"
        if is_operational(type(config), name):
            paths.append(path)
            continue
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            paths.extend(operational_paths(value, f"{path}."))
        elif isinstance(value, (dict, list)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(item, BaseModel):
                    paths.extend(operational_paths(item, f"{path}.{key}."))
    return paths
