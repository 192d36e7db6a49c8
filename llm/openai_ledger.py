"""What an attempt of the ``openai`` engine may cost and what it is charged.

The budget holds only if three things hold, and they live here together: the worst case
reserved before an attempt is sent is a true upper bound; what an answer is charged afterwards
never leaves [0, that worst case], whatever usage the endpoint reports; and the reservations
and settlements reach the sqlite ledger (``llm.request_cache``) in one transaction per event-loop
iteration, not one per call. Without a cache file the ledger lives in memory, per process.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from llm.config import OpenAIEngineConfig
from llm.request_cache import RequestStore
from llm.types import GenerationRequest, Usage

# Chat templates add role markers and sometimes a default system prompt; bytes bound the
# content itself (a byte-level BPE token covers at least one byte).
_PER_REQUEST_OVERHEAD_TOKENS = 64
_PER_MESSAGE_OVERHEAD_TOKENS = 8


def worst_case_tokens(req: GenerationRequest) -> int:
    """An upper bound on the tokens one attempt can be billed: prompt bytes + template
    overhead, plus max_tokens for each of the n completions."""
    if req.messages is not None:
        prompt = sum(len(m.get("content", "").encode("utf-8")) + _PER_MESSAGE_OVERHEAD_TOKENS for m in req.messages)
    else:
        prompt = len((req.prompt or "").encode("utf-8")) + _PER_MESSAGE_OVERHEAD_TOKENS
    return prompt + _PER_REQUEST_OVERHEAD_TOKENS + req.sampling.max_tokens * req.sampling.n


def charged_tokens(usage: Usage | None, worst: int) -> int:
    """What a delivered answer costs the ledger: its usage, or its worst case when the usage is
    unknown (``parse_usage`` turns a count that cannot be true into unknown). Never outside
    [0, worst]: the attempt was admitted on its worst case."""
    return worst if usage is None else max(0, min(usage.total_tokens, worst))


def budget_message(store: RequestStore, cfg: OpenAIEngineConfig, wanted_tokens: int) -> str:
    calls, tokens = store.spent()
    b = cfg.budget
    parts = []
    if b.max_calls is not None:
        parts.append(f"{calls}/{b.max_calls} calls")
    if b.max_tokens is not None:
        parts.append(f"{tokens}/{b.max_tokens} tokens (next call may need {wanted_tokens})")
    where = (
        f"finished calls are cached in {cfg.cache_path}" if cfg.cache_path else "no cache_path: finished calls are not kept"
    )
    return f"budget exhausted: {', '.join(parts)} for model {cfg.model} (rerun with a larger budget resumes; {where})"


_PROCESS_LEDGERS: dict[str, RequestStore] = {}
_PROCESS_LEDGERS_LOCK = threading.Lock()


def process_ledger(model: str) -> RequestStore:
    """The in-memory ledger of this process for ``model``, shared by its engines without a cache."""
    with _PROCESS_LEDGERS_LOCK:
        if model not in _PROCESS_LEDGERS:
            _PROCESS_LEDGERS[model] = RequestStore(None, scope=model)
        return _PROCESS_LEDGERS[model]


_In = TypeVar("_In")
_Out = TypeVar("_Out")


class Batcher(Generic[_In, _Out]):
    """Group commit: collects items submitted during one event-loop iteration and runs ``fn``
    on all of them in the next, so every waiter gets its own result from a single transaction."""

    def __init__(self, fn: Callable[[list[_In]], list[_Out]]) -> None:
        self._fn = fn
        self._items: list[_In] = []
        self._futures: list[asyncio.Future[_Out]] = []

    def submit(self, item: _In) -> asyncio.Future[_Out]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Out] = loop.create_future()
        if not self._items:
            loop.call_soon(self._flush)
        self._items.append(item)
        self._futures.append(fut)
        return fut

    def _flush(self) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        try:
            results = self._fn(items)
        except Exception as exc:  # sqlite trouble: every waiter fails, the run stops
            for f in futures:
                if not f.done():
                    f.set_exception(exc)
            return
        for f, r in zip(futures, results):
            if not f.done():  # a cancelled waiter's reservation stays charged: safe side
                f.set_result(r)
