"""The generic generation loop every stage reuses: work items in, records out, resumable.

A stage turns its inputs into ``WorkItem``s (a request plus the provenance to copy into each
output); this loop skips items whose records already exist, streams the rest through the
engine, and appends one record per completion the moment it arrives.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from data.records import content_id
from data.storage import ShardWriter
from llm.engine import Engine
from llm.types import GenerationRequest, GenerationResult

log = logging.getLogger(__name__)


@dataclass
class WorkItem:
    """One request. ``request.id`` is the item's key: unique within a run, stable across reruns."""

    request: GenerationRequest
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.request.id


def record_id(item_key: str, sample_index: int) -> str:
    return content_id(item_key, sample_index)


def derive_seed(base_seed: int | None, key: str) -> int | None:
    """A per-request seed from the run's seed and the item key, so an item samples the same
    text whichever shard or batch it lands in."""
    if base_seed is None:
        return None
    return int(content_id(base_seed, key, length=8), 16) & 0x7FFFFFFF


def result_records(item: WorkItem, result: GenerationResult, model_name: str) -> Iterator[dict[str, Any]]:
    """One record per completion; the prompt's tokens are counted on the first sample only,
    so summing usage over records gives the run's usage exactly."""
    for index, completion in enumerate(result.completions):
        yield {
            "id": record_id(item.key, index),
            "item_key": item.key,
            **item.provenance,
            "sample_index": index,
            "completion": completion.text,
            "finish_reason": completion.finish_reason,
            "model": model_name,
            "seed": item.request.sampling.seed,
            "cached": result.cached,
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens if index == 0 else 0,
                "completion_tokens": completion.num_tokens or 0,
            },
        }


@dataclass
class RunStats:
    items_total: int = 0
    items_skipped_done: int = 0
    items_generated: int = 0
    records_written: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_generation(
    items: Iterable[WorkItem],
    engine: Engine,
    writer: ShardWriter,
    *,
    to_records: Callable[[WorkItem, GenerationResult, str], Iterable[dict[str, Any]]] = result_records,
    progress: Callable[[int], None] | None = None,
) -> RunStats:
    """Generate every item not already in ``writer`` and append its records."""
    stats = RunStats()
    started = time.monotonic()
    waiting: dict[str, WorkItem] = {}

    def todo() -> Iterator[GenerationRequest]:
        for item in items:
            stats.items_total += 1
            if all(record_id(item.key, i) in writer for i in range(item.request.sampling.n)):
                stats.items_skipped_done += 1
                if progress:
                    progress(1)
                continue
            if item.key in waiting:
                continue  # the same input twice (e.g. a duplicated corpus row): generate once
            waiting[item.key] = item
            yield item.request

    for result in engine.generate(todo()):
        item = waiting.pop(result.request_id)
        stats.items_generated += 1
        stats.prompt_tokens += result.usage.prompt_tokens
        stats.completion_tokens += result.usage.completion_tokens
        for record in to_records(item, result, engine.model_name):
            stats.records_written += writer.write(record)
        if progress:
            progress(1)
    stats.seconds = time.monotonic() - started
    return stats
