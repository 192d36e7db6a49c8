"""The ``openai`` engine: any OpenAI-compatible endpoint (the OpenAI API, a vLLM server, ...).

What it guarantees, and where:

* At most ``max_in_flight`` HTTP calls (attempts, retries included) are open at once: a
  semaphore is held only around the HTTP call itself, never during a backoff sleep.
* Requests are pulled from the caller's iterable only when there is room, so millions of
  requests never sit in memory; results stream out as they finish (``llm.openai_run``).
* A rerun never pays twice: every response is stored in the sqlite cache *before* it is
  handed to the caller, keyed on everything that determines the answer (``llm.openai_protocol``).
* The budget is never exceeded, even across kill -9 and reruns: before each attempt one call
  and a worst-case token amount are reserved in the ledger and committed to disk; the attempt
  is only sent once that commit returned. Actual usage replaces the reservation afterwards,
  never outside [0, the worst case]: usage that cannot be true counts as the worst case
  (``llm.openai_ledger``). A kill therefore leaves in-flight attempts charged at their worst
  case (safe, never under). A failed attempt keeps its call charged; its tokens are released
  only when the server provably did no work (an error status, or no connection made); after
  a timeout, a dropped connection, a broken or oversized body the worst case stays charged,
  as the provider may have billed it (``llm.openai_retry``). The ledger is per model in the
  cache file, i.e. cumulative over reruns ("rerun with a larger budget resumes"); without a
  cache file it lives in memory, per process.
* An answer is bounded: ``timeout_s`` covers the whole attempt, body included, and a body past
  ``max_response_bytes`` is an error, not retried (``llm.openai_http``).
* Identical requests (same cache key) in one run share one call, as a rerun would share
  the cached answer: asking twice for the same key never pays twice.

The cache file belongs on a local disk (sqlite's WAL needs shared memory: not NFS/Lustre);
several processes on one machine may share it.

Everything that touches sqlite runs on the event loop thread in small batches (one
transaction for all reservations, and one for all responses, that became ready in the same
loop iteration) so the per-call cost stays far below the HTTP cost.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from llm.config import OpenAIEngineConfig
from llm.engine import Engine
from llm.errors import EngineError
from llm.openai_http import HttpTransport
from llm.openai_ledger import process_ledger
from llm.openai_run import Emit, GenerateRun
from llm.request_cache import RequestStore
from llm.types import GenerationRequest, GenerationResult


class OpenAIEngine(Engine):
    def __init__(self, cfg: OpenAIEngineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model_name = cfg.model
        self.cache_hits = 0
        self.retries = 0
        self.peak_in_flight = 0
        # The ledger scope is the model: runs (and processes) sharing a cache file and a
        # model share one budget, which is what makes "rerun resumes" hold. Without a
        # cache file the budget holds for this process (all its engines for the model).
        self.store = RequestStore(cfg.cache_path, scope=cfg.model) if cfg.cache_path else process_ledger(cfg.model)
        self._busy = threading.Lock()
        self._closed = False

    # -- public API ----------------------------------------------------------------------
    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        """Yield one result per request as each finishes. The HTTP calls run on an event loop
        in a background thread; results cross over through a queue in small batches."""
        if not self._busy.acquire(blocking=False):
            raise EngineError("OpenAIEngine.generate: already running (one run at a time per engine)")
        out: queue.SimpleQueue[list[GenerationResult] | BaseException | None] = queue.SimpleQueue()
        consumed = [0]  # written by the consumer thread only
        produced = [0]  # written by the loop thread only
        loop_box: list[asyncio.AbstractEventLoop] = []
        task_box: list[asyncio.Task[None]] = []
        started = threading.Event()

        def emit(batch: list[GenerationResult]) -> None:
            produced[0] += len(batch)
            out.put(batch)

        async def main() -> None:
            task_box.append(asyncio.current_task())  # type: ignore[arg-type]
            loop_box.append(asyncio.get_running_loop())
            started.set()
            await self._run(requests, emit, backlog=lambda: produced[0] - consumed[0])

        def thread_main() -> None:
            try:
                asyncio.run(main())
                out.put(None)
            except BaseException as exc:  # handed to the consumer, re-raised there
                out.put(exc)
            finally:
                started.set()

        thread = threading.Thread(target=thread_main, name="openai-engine", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        return
                    raise item
                consumed[0] += len(item)
                yield from item
        finally:
            # The consumer stopped early (break, exception, close): cancel what is in flight.
            if thread.is_alive():
                started.wait()
                if loop_box and task_box:
                    try:
                        loop_box[0].call_soon_threadsafe(task_box[0].cancel)
                    except RuntimeError:  # loop already closed
                        pass
                thread.join()
            self._busy.release()

    async def agenerate(
        self, requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest]
    ) -> AsyncIterator[GenerationResult]:
        """The same as ``generate`` on the caller's event loop."""
        if not self._busy.acquire(blocking=False):
            raise EngineError("OpenAIEngine.agenerate: already running (one run at a time per engine)")
        out: asyncio.Queue[list[GenerationResult] | None] = asyncio.Queue()
        pending = [0]

        def emit(batch: list[GenerationResult]) -> None:
            pending[0] += len(batch)
            out.put_nowait(batch)

        async def runner() -> None:
            try:
                await self._run(requests, emit, backlog=lambda: pending[0])
            finally:
                out.put_nowait(None)

        task = asyncio.ensure_future(runner())
        try:
            while True:
                batch = await out.get()
                if batch is None:
                    break
                pending[0] -= len(batch)
                for r in batch:
                    yield r
            await task  # re-raises the run's error, if any
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
            self._busy.release()

    def stats(self) -> dict[str, Any]:
        """Counters for run manifests."""
        spent_calls, spent_tokens = self.store.spent()
        return {
            "model": self.cfg.model,
            "base_url": self.cfg.base_url,
            "api": self.cfg.api,
            "calls": self.calls,
            "retries": self.retries,
            "cache_hits": self.cache_hits,
            "peak_in_flight": self.peak_in_flight,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "budget": {
                "max_calls": self.cfg.budget.max_calls,
                "max_tokens": self.cfg.budget.max_tokens,
                "spent_calls": spent_calls,
                "spent_tokens": spent_tokens,
            },
        }

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.store.persistent:  # the in-memory ledger outlives engines: it is the process's
                self.store.close()

    async def _run(
        self,
        requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
        emit: Emit,
        backlog: Callable[[], int],
    ) -> None:
        if self._closed:
            raise EngineError("OpenAIEngine: used after close()")
        transport = HttpTransport(self.cfg)
        try:
            await GenerateRun(self, transport, emit, backlog).run(requests)
        finally:
            await transport.close()
