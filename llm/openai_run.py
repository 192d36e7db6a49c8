"""One ``generate()`` call of the ``openai`` engine, on its event loop: pull requests, send
attempts under the in-flight bound, reserve and settle the budget, retry, and hand each result
over once it is in the cache.

Apart from ``llm.openai_engine`` (the public engine, its threads and stats) because this is the
part whose ordering carries every guarantee: reserve before send, cache before hand-over.
"""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

from llm.errors import BudgetExceeded, EngineError
from llm.openai_http import HttpTransport
from llm.openai_ledger import Batcher, budget_message, charged_tokens, worst_case_tokens
from llm.openai_protocol import cache_key, cache_value, parse_response, request_body, result_from_cache_value
from llm.openai_retry import backoff_delay, classify_error, is_connection_failure, never_reached_server, never_sent, one_line
from llm.request_cache import Settlement
from llm.types import GenerationRequest, GenerationResult

if TYPE_CHECKING:  # the engine imports this module
    from llm.openai_engine import OpenAIEngine

Emit = Callable[[list[GenerationResult]], None]


class _Stop(Exception):
    """This request gives up quietly: the run is stopping for another request's error."""


class GenerateRun:
    """Dispatch, retries, budget and cache for one stream of requests."""

    def __init__(self, engine: OpenAIEngine, transport: HttpTransport, emit: Emit, backlog: Callable[[], int]) -> None:
        self.e = engine
        self.cfg = engine.cfg
        self.transport = transport
        self.emit = emit
        self.backlog = backlog
        n = self.cfg.max_in_flight
        self.slots = asyncio.Semaphore(n)  # HTTP calls in flight
        # Request tasks alive at once (calling, waiting for a slot, or sleeping in backoff):
        # more than n so slots stay busy while some requests back off, yet bounded.
        self.live = asyncio.Semaphore(2 * n + 16)
        self.max_backlog = max(1024, 8 * n)  # results the consumer has not taken yet
        self.in_flight = 0
        self.error: EngineError | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.sleeping: set[asyncio.Task[Any]] = set()
        self.reserver: Batcher[int, bool] = Batcher(self._reserve_batch)
        self.settler: Batcher[Settlement, None] = Batcher(self._settle_batch)
        self.ready: list[GenerationResult] = []
        self.waiting: dict[str, list[str]] = {}  # key in flight -> ids of identical requests
        self.rng = random.Random()

    # sqlite batches (run on the loop thread, one transaction each)
    def _reserve_batch(self, amounts: list[int]) -> list[bool]:
        b = self.cfg.budget
        return self.e.store.reserve(amounts, b.max_calls, b.max_tokens)

    def _settle_batch(self, items: list[Settlement]) -> list[None]:
        self.e.store.settle(items)
        # Everything settled in this batch is now on disk: hand the results over together.
        if self.ready:
            batch, self.ready = self.ready, []
            self.emit(batch)
        return [None] * len(items)

    def fail(self, err: EngineError) -> None:
        """Stop the run: nothing new is sent, calls in flight finish, then ``err`` is raised."""
        if self.error is None:
            self.error = err
        for t in list(self.sleeping):  # a backoff sleep could last a minute: cut it short
            t.cancel()

    async def run(self, requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest]) -> None:
        hits: list[GenerationResult] = []
        try:
            async for req in _aiter(requests):
                while self.backlog() > self.max_backlog and self.error is None:
                    await asyncio.sleep(0.005)  # the consumer is slower than we produce
                if self.error is not None:
                    break
                try:
                    body = request_body(self.cfg.model, self.cfg.api, req)
                    key = cache_key(self.cfg.model, self.cfg.api, req, body)
                except EngineError as err:
                    self.fail(err)
                    break
                if key in self.waiting:
                    # The same request is already in flight: it gets that answer, as it would
                    # from the cache on a rerun, instead of paying for a second one.
                    self.waiting[key].append(req.id)
                    continue
                cached = self.e.store.get(key)
                if cached is not None:
                    self.e.cache_hits += 1
                    hits.append(result_from_cache_value(req.id, cached, cached=True))
                    if len(hits) >= 256:  # a long run of hits must not starve calls in flight
                        self.emit(hits)
                        hits = []
                        await asyncio.sleep(0)
                    continue
                if hits:
                    self.emit(hits)
                    hits = []
                await self.live.acquire()
                self.waiting[key] = []
                task = asyncio.ensure_future(self._request(req, key, body))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            if hits:
                self.emit(hits)
            while self.tasks:
                await asyncio.gather(*list(self.tasks))
        except BaseException:
            for t in list(self.tasks):
                t.cancel()
            if self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
            raise
        if self.ready:  # normally emitted by the settle batch already
            self.emit(self.ready)
            self.ready = []
        if self.error is not None:
            raise self.error

    async def _request(self, req: GenerationRequest, key: str, body: dict[str, Any]) -> None:
        try:
            await self._attempts(req, key, body)
        except _Stop:
            pass
        except EngineError as err:
            self.fail(err)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # e.g. sqlite failing: the budget can no longer be trusted
            self.fail(EngineError(f"request {req.id}: {type(err).__name__}: {one_line(err)}"))
        finally:
            self.waiting.pop(key, None)
            self.live.release()

    async def _attempts(self, req: GenerationRequest, key: str, body: dict[str, Any]) -> None:
        worst = worst_case_tokens(req)
        post = self.transport.post
        retry = 0
        while True:
            async with self.slots:
                if self.error is not None:
                    raise _Stop
                if not await self.reserver.submit(worst):
                    self.fail(BudgetExceeded(budget_message(self.e.store, self.cfg, worst)))
                    raise _Stop
                # The reservation is committed: only now may the attempt go out.
                self.e.calls += 1
                self.in_flight += 1
                self.e.peak_in_flight = max(self.e.peak_in_flight, self.in_flight)
                failure: Exception | None = None
                try:
                    data = json.loads(await post(body))
                    completions, usage = parse_response(data, self.cfg.api, req.sampling.n, worst)
                except asyncio.CancelledError:
                    raise  # the reservation stays charged: we cannot know what the server did
                except Exception as exc:
                    failure = exc
                finally:
                    self.in_flight -= 1
            if failure is None:
                value = cache_value(completions, usage)
                if usage is not None:
                    self.e.usage.add(usage)
                self.ready.append(result_from_cache_value(req.id, json.loads(value), cached=False))
                # Cache write and usage settlement in one transaction; the settle batch emits
                # the result once it is on disk.
                await self.settler.submit(
                    Settlement(
                        key=key if self.e.store.persistent else None,
                        value=value,
                        token_delta=charged_tokens(usage, worst) - worst,
                    )
                )
                # Only now, with the answer in the cache, may the key leave ``waiting``:
                # an identical request arriving in between must not be sent again.
                twins = self.waiting.pop(key, [])
                if twins:
                    self.e.cache_hits += len(twins)
                    self.emit([result_from_cache_value(rid, json.loads(value), cached=True) for rid in twins])
                return
            await self.settler.submit(
                Settlement(token_delta=-worst if never_reached_server(failure) else 0, call_refund=int(never_sent(failure)))
            )
            retryable, why, after = classify_error(failure)
            if not retryable:
                raise EngineError(f"request {req.id}: {why} (not retried)")
            if retry >= self.cfg.max_retries:
                where = f" at {self.transport.url}" if is_connection_failure(failure) else ""
                raise EngineError(f"request {req.id}: gave up after {retry + 1} attempts{where}: {why}")
            if self.error is not None:
                raise _Stop
            delay = backoff_delay(retry, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, after, self.rng)
            retry += 1
            self.e.retries += 1
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """A backoff sleep that ``fail()`` may cut short (then this request gives up quietly)."""
        me = asyncio.current_task()
        assert me is not None
        self.sleeping.add(me)
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if self.error is not None:
                raise _Stop from None
            raise
        finally:
            self.sleeping.discard(me)


async def _aiter(items: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest]) -> AsyncIterator[GenerationRequest]:
    if isinstance(items, AsyncIterable):
        async for x in items:
            yield x
    else:
        for x in items:
            yield x
