"""The one engine interface (the factory is ``llm.factory``, the errors ``llm.errors``).

An engine takes an iterable of requests and yields results as they finish (not necessarily in
order), so a stage can write each result to disk the moment it exists: a kill loses at most
the requests in flight.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator

from llm.types import GenerationRequest, GenerationResult, Usage


class Engine(ABC):
    #: the model name recorded in every output's provenance
    model_name: str = ""

    def __init__(self) -> None:
        self.usage = Usage()
        self.calls = 0  # model calls actually made (cached results excluded)

    @abstractmethod
    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        """Yield one result per request, as each finishes."""

    def run_usage(self) -> dict[str, float]:
        """What this engine did in this run, for a manifest: the calls it made and the numeric
        counters it keeps (cache hits, retries, ...), prefixed ``engine_``. Read before close()."""
        stats = getattr(self, "stats", None)
        counters = stats() if callable(stats) else {}
        return {"engine_calls_this_run": self.calls,
                **{f"engine_{k}": v for k, v in counters.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}

    def close(self) -> None:
        """Release the model or connections. Safe to call twice."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

