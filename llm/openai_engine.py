"""The ``openai`` engine: any OpenAI-compatible endpoint (the OpenAI API, a vLLM server, ...).

What it guarantees, and how:

* At most ``max_in_flight`` HTTP calls (attempts, retries included) are open at once: a
  semaphore is held only around the HTTP call itself, never during a backoff sleep.
* Requests are pulled from the caller's iterable only when there is room, so millions of
  requests never sit in memory; results stream out as they finish.
* A rerun never pays twice: every response is stored in the sqlite cache *before* it is
  handed to the caller, keyed on everything that determines the answer.
* The budget is never exceeded, even across kill -9 and reruns: before each attempt one call
  and a worst-case token amount are reserved in the ledger and committed to disk; the attempt
  is only sent once that commit returned. Actual usage replaces the reservation afterwards.
  A kill therefore leaves in-flight attempts charged at their worst case (safe, never under).
  A failed attempt keeps its call charged; its tokens are released only when the server
  provably did no work (an error status, or no connection made); after a timeout, a dropped
  connection or a broken body the worst case stays charged, as the provider may have billed it.
  The ledger is per model in the cache file, i.e. cumulative over reruns ("rerun with a
  larger budget resumes"); without a cache file it lives in memory, per process.
* Identical requests (same cache key) in one run share one call, as a rerun would share
  the cached answer: asking twice for the same key never pays twice.

Two transports make the HTTP calls (``engine.transport``); everything above is the same code
for both. ``aiohttp`` (default): one ``aiohttp.ClientSession`` per run, POSTing the JSON body
to ``{base_url}/chat/completions`` or ``/completions``; a failed connect (refused, DNS, TLS, a
connect timeout) is "never reached the server", a dropped connection, a cut body or a timeout
once the connection was made is "may have been billed". ``sdk``: the openai SDK's httpx client
(``client.post``), told apart by httpx's ConnectError / ConnectTimeout.

The cache file belongs on a local disk (sqlite's WAL needs shared memory: not NFS/Lustre);
several processes on one machine may share it.

Everything that touches sqlite runs on the event loop thread in small batches (one
transaction for all reservations, and one for all responses, that became ready in the same
loop iteration) so the per-call cost stays far below the HTTP cost.
"""
from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import importlib
import json
import os
import queue
import random
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any, Generic, TypeVar

import aiohttp
import openai
import yarl

from llm.config import OpenAIEngineConfig
from llm.engine import BudgetExceeded, Engine, EngineError
from llm.request_cache import RequestStore, Settlement
from llm.types import Completion, GenerationRequest, GenerationResult, Usage

# Chat templates add role markers and sometimes a default system prompt; bytes bound the
# content itself (a byte-level BPE token covers at least one byte).
_PER_REQUEST_OVERHEAD_TOKENS = 64
_PER_MESSAGE_OVERHEAD_TOKENS = 8
_CACHE_KEY_VERSION = 1


class MalformedResponse(Exception):
    """A 200 whose body is not a usable completion (truncated, not JSON, wrong shape)."""


class HTTPStatusError(Exception):
    """A non-2xx answer under the aiohttp transport (the SDK raises its APIStatusError)."""

    def __init__(self, status_code: int, detail: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.headers = headers


# ----------------------------------------------------------------------------------------
# Pure helpers (each testable alone)
# ----------------------------------------------------------------------------------------


def request_body(model: str, api: str, req: GenerationRequest) -> dict[str, Any]:
    """The JSON body sent for ``req``; also what the cache key is computed from."""
    s = req.sampling
    body: dict[str, Any] = {"model": model}
    if api == "chat":
        msgs = list(req.messages) if req.messages is not None else [{"role": "user", "content": req.prompt}]
        body["messages"] = [dict(m) for m in msgs]
    else:
        if req.messages is not None:
            raise EngineError(
                f"request {req.id}: chat messages given but engine.api is 'completions' "
                "(send a prompt, or set engine.api: chat)"
            )
        body["prompt"] = req.prompt
    body.update(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, n=s.n)
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    return body


def cache_key(model: str, api: str, req: GenerationRequest, body: dict[str, Any] | None = None) -> str:
    """sha256 of canonical JSON of what determines the answer: model, api kind, the prompt as
    sent and *all* sampling params (so a new field in SamplingParams changes keys by itself).
    The base_url is left out on purpose: the same model behind another URL is the same answer."""
    if body is None:
        body = request_body(model, api, req)
    text = body.get("messages", body.get("prompt"))
    canon = {
        "v": _CACHE_KEY_VERSION,
        "model": model,
        "api": api,
        "input": text,
        "sampling": req.sampling.model_dump(mode="json"),
    }
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def worst_case_tokens(req: GenerationRequest) -> int:
    """An upper bound on the tokens one attempt can be billed: prompt bytes + template
    overhead, plus max_tokens for each of the n completions."""
    if req.messages is not None:
        prompt = sum(len(m.get("content", "").encode("utf-8")) + _PER_MESSAGE_OVERHEAD_TOKENS for m in req.messages)
    else:
        prompt = len((req.prompt or "").encode("utf-8")) + _PER_MESSAGE_OVERHEAD_TOKENS
    return prompt + _PER_REQUEST_OVERHEAD_TOKENS + req.sampling.max_tokens * req.sampling.n


def backoff_delay(
    retry: int, initial: float, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter (uniform in [0, min(cap, initial * 2**retry)]).

    A server's Retry-After wins when present (it knows when it will have room), capped at
    ``cap`` so a misconfigured server cannot park the run for hours."""
    if retry_after is not None:
        return max(0.0, min(retry_after, cap))
    upper = min(cap, initial * (2.0**retry))
    return (rng or random).uniform(0.0, upper)


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return None if when is None else max(0.0, when.timestamp() - time.time())


def parse_response(data: Any, api: str, n: int) -> tuple[list[Completion], Usage | None]:
    """Completions (ordered by choice index) and usage from a decoded body; raise
    MalformedResponse when the body is not a full answer (a retry may fix it)."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise MalformedResponse(f"no 'choices' list in response: {str(data)[:80]!r}")
    choices = data["choices"]
    if len(choices) != n:
        raise MalformedResponse(f"expected n={n} choices, got {len(choices)}")
    out: list[tuple[int, Completion]] = []
    for pos, ch in enumerate(choices):
        if not isinstance(ch, dict):
            raise MalformedResponse("choice is not an object")
        if api == "chat":
            msg = ch.get("message")
            text = msg.get("content") if isinstance(msg, dict) else None
        else:
            text = ch.get("text")
        if text is not None and not isinstance(text, str):
            raise MalformedResponse("choice text is not a string")
        idx = ch.get("index", pos)
        out.append((idx if isinstance(idx, int) else pos, Completion(text=text or "", finish_reason=ch.get("finish_reason"))))
    completions = [c for _, c in sorted(out, key=lambda p: p[0])]
    usage = None
    u = data.get("usage")
    if isinstance(u, dict) and isinstance(u.get("prompt_tokens"), int):
        usage = Usage(prompt_tokens=u["prompt_tokens"], completion_tokens=int(u.get("completion_tokens") or 0))
        if n == 1:
            completions[0].num_tokens = usage.completion_tokens
    return completions, usage


def _retryable_status(code: int) -> bool:
    return code in (408, 409, 429) or code >= 500


def classify_error(exc: BaseException) -> tuple[bool, str, float | None]:
    """(retryable, one-line description, Retry-After seconds) for a failed attempt."""
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        detail = " ".join(str(exc.message).split())[:160]
        return _retryable_status(code), f"HTTP {code}: {detail}", retry_after_s(exc.response.headers)
    if isinstance(exc, HTTPStatusError):
        return _retryable_status(exc.status_code), str(exc), retry_after_s(exc.headers)
    if isinstance(exc, openai.APITimeoutError):
        return True, "timed out", None
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        return True, f"connection error ({type(cause).__name__}: {_one_line(cause)})", None
    # aiohttp (before ValueError: its InvalidURL is one)
    if isinstance(exc, aiohttp.InvalidURL):
        return False, f"invalid URL ({_one_line(exc)})", None
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return True, "timed out connecting", None
    if isinstance(exc, asyncio.TimeoutError):  # the attempt's total timeout (or a read timeout)
        return True, "timed out", None
    if isinstance(exc, aiohttp.ClientConnectionError):  # refused, DNS, TLS, dropped, reset
        return True, f"connection error ({type(exc).__name__}: {_one_line(exc)})", None
    if isinstance(exc, aiohttp.ClientPayloadError):
        return True, f"broken response body ({type(exc).__name__}: {_one_line(exc)})", None
    if isinstance(exc, (MalformedResponse, ValueError)):  # json.JSONDecodeError is a ValueError
        return True, f"malformed response ({_one_line(exc)})", None
    if isinstance(exc, aiohttp.ClientError):  # e.g. an unparsable HTTP response
        return True, f"{type(exc).__name__}: {_one_line(exc)}", None
    return False, f"{type(exc).__name__}: {_one_line(exc)}", None


def never_reached_server(exc: BaseException) -> bool:
    """True when the attempt provably was not delivered: the connection was never made (see
    ``_never_sent``) or the server answered with an error status (an error response is not
    billed). Those attempts get their reserved tokens back; a timeout, dropped connection or
    broken body keeps its worst case (the provider may have generated, and billed, the
    completion)."""
    if isinstance(exc, (openai.APIStatusError, HTTPStatusError)):
        return True
    return _never_sent(exc)


def _never_sent(exc: BaseException) -> bool:
    """The connection was never made, so no request bytes left. aiohttp: ClientConnectorError
    (refused, DNS, TLS handshake, proxy; raised only while connecting) or
    ConnectionTimeoutError (the connect phase ran out of time), or a URL it could not use.
    The SDK: httpx's ConnectError or ConnectTimeout (chained as __cause__), under openai 1.x
    or 3.x alike."""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)):
        return True
    return type(exc.__cause__).__name__ in ("ConnectError", "ConnectTimeout")


def _connection_failure(exc: BaseException) -> bool:
    """Worth naming the URL in the error: the endpoint, not the request, is the likely problem."""
    return isinstance(
        exc, (openai.APIConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
    )


@functools.lru_cache(maxsize=None)
def _http_module() -> Any:
    """The HTTP library this openai version is built on: httpx (openai 1.x) or httpx2 (3.x)."""
    for cls in openai.DefaultAsyncHttpxClient.__mro__:
        if cls.__name__ == "AsyncClient":
            return importlib.import_module(cls.__module__.split(".")[0])
    raise EngineError("openai: cannot find the HTTP client library it is built on")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str) -> str:
    """``${NAME}`` in a header or query value, read from the environment (a key need not sit
    in the config, which manifests record); an unset variable is a one-line error."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise EngineError(f"engine config refers to ${{{name}}} but the environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REF.sub(sub, value)


def _env_proxy(url: yarl.URL) -> str | None:
    """The proxy httpx (and so the SDK) would use for ``url`` from the environment
    (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, minus NO_PROXY): looked up once per run."""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(url.host or "", proxies):
        return None
    return proxies.get(url.scheme) or proxies.get("all")


def _ssl_context() -> ssl.SSLContext:
    """Certificates as httpx (and so the SDK) finds them: SSL_CERT_FILE / SSL_CERT_DIR, else
    certifi's bundle (not the system store, which slim images may lack)."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:  # pragma: no cover - httpx depends on it
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _error_detail(raw: bytes) -> str:
    """The one-line message of an error body: OpenAI's ``{"error": {"message": ...}}``, or the text."""
    try:
        data = json.loads(raw)
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else (err if isinstance(err, str) else None)
        if msg is None and isinstance(data, dict):
            msg = data.get("message") or data.get("detail")
        text = str(msg) if msg is not None else raw.decode("utf-8", "replace")
    except ValueError:
        text = raw.decode("utf-8", "replace")
    return " ".join(text.split())[:160] or "(empty body)"


# ----------------------------------------------------------------------------------------
# Transports: one POST of a JSON body, the raw response body back (or an exception)
# ----------------------------------------------------------------------------------------


class _AiohttpTransport:
    """One ``aiohttp.ClientSession`` for a run, created and closed on the run's event loop.

    The pool holds ``max_in_flight`` connections, as many as calls in flight, so an attempt
    never waits for one. Each attempt has ``timeout_s`` in all; connecting (DNS, TCP, TLS)
    gets at most half of it, so a connect that hangs ends as a ConnectionTimeoutError (never
    sent: refunded) rather than as the total timeout (which may strike after the request went
    out, so it keeps its charge)."""

    def __init__(self, cfg: OpenAIEngineConfig) -> None:
        base = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        root = yarl.URL(base)
        if root.scheme not in ("http", "https") or not root.host:
            raise EngineError(f"engine.base_url: {base!r} is not an http(s) URL")
        self.url = base
        path = "/chat/completions" if cfg.api == "chat" else "/completions"
        self.endpoint = yarl.URL(base + path)
        if cfg.default_query:
            self.endpoint = self.endpoint.update_query({k: expand_env(v) for k, v in cfg.default_query.items()})
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for name, value in cfg.extra_headers.items():
            for have in [h for h in headers if h.lower() == name.lower()]:
                del headers[have]
            headers[name] = expand_env(value)
        connector = aiohttp.TCPConnector(
            limit=cfg.max_in_flight,
            ssl=_ssl_context() if root.scheme == "https" else True,
            # below the 5 s that uvicorn (vLLM's server) keeps an idle connection: a pooled
            # connection is reused only while the server still holds it open
            keepalive_timeout=4.0,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=cfg.timeout_s, connect=cfg.timeout_s / 2),
            proxy=_env_proxy(self.endpoint),
        )

    async def post(self, body: dict[str, Any]) -> bytes:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        async with self.session.post(self.endpoint, data=data) as resp:
            raw = await resp.read()
            if not 200 <= resp.status < 300:
                raise HTTPStatusError(resp.status, _error_detail(raw), resp.headers)
            return raw

    async def close(self) -> None:
        await self.session.close()


class _SdkTransport:
    """The openai SDK's client (``client.post`` with the raw HTTP response, the SDK's
    documented way to call any route), ``engine.calls_per_client`` calls per client.

    Not ``.create()``: it walks the params' TypedDict annotations and builds pydantic models
    on every call, which cost more CPU than everything else together
    (bench/openai_engine.py); we validate the body ourselves anyway."""

    def __init__(self, engine: OpenAIEngine) -> None:
        self.clients = engine._make_clients()
        # Which slot a call holds decides its client: each client carries <= its share (the
        # run's semaphore keeps at most max_in_flight slots taken).
        self.free_slots = list(range(engine.cfg.max_in_flight))
        self.path = "/chat/completions" if engine.cfg.api == "chat" else "/completions"
        self.response_type = _http_module().Response
        self.url = str(self.clients[0].base_url).rstrip("/")

    async def post(self, body: dict[str, Any]) -> bytes:
        slot = self.free_slots.pop()
        client = self.clients[slot % len(self.clients)]
        try:
            raw = await client.post(self.path, body=body, cast_to=self.response_type)
        finally:
            self.free_slots.append(slot)
        return raw.content

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


# ----------------------------------------------------------------------------------------
# Group commit: one sqlite transaction per loop iteration instead of one per call
# ----------------------------------------------------------------------------------------

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class _Batcher(Generic[_In, _Out]):
    """Collects items submitted during one event-loop iteration and runs ``fn`` on all of
    them in the next: every waiter gets its own result once the single transaction is done."""

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


# ----------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------

Emit = Callable[[list[GenerationResult]], None]


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
        self.store = RequestStore(cfg.cache_path, scope=cfg.model) if cfg.cache_path else _process_ledger(cfg.model)
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
            "transport": self.cfg.transport,
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

    # -- internals -----------------------------------------------------------------------
    #: calls in flight per AsyncOpenAI client. httpx's pool scans all of its connections
    #: (a poll() syscall per idle one) each time it hands one out, so one pool of 64 costs
    #: more CPU than 8 pools of 8 (bench/openai_engine.py: ~10% of all client CPU).
    calls_per_client: int = 8

    def _make_clients(self) -> list[openai.AsyncOpenAI]:
        k = -(-self.cfg.max_in_flight // self.calls_per_client)
        per = -(-self.cfg.max_in_flight // k)
        return [self._make_client(per) for _ in range(k)]

    def _make_client(self, n: int) -> openai.AsyncOpenAI:
        # The pool keeps all its calls' connections alive (the SDK keeps 100 at most): a
        # connection closed after each call would cost a TCP handshake per call.
        limits = _http_module().Limits(max_connections=2 * n + 8, max_keepalive_connections=n)
        return openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=os.environ.get(self.cfg.api_key_env) or "EMPTY",
            max_retries=0,  # retries are ours: they must go through the budget
            timeout=self.cfg.timeout_s,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=self.cfg.timeout_s),
            default_headers={k: expand_env(v) for k, v in self.cfg.extra_headers.items()} or None,
            default_query={k: expand_env(v) for k, v in self.cfg.default_query.items()} or None,
        )

    def _make_transport(self) -> _AiohttpTransport | _SdkTransport:
        if self.cfg.transport == "sdk":
            return _SdkTransport(self)
        return _AiohttpTransport(self.cfg)

    async def _run(
        self,
        requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
        emit: Emit,
        backlog: Callable[[], int],
    ) -> None:
        if self._closed:
            raise EngineError("OpenAIEngine: used after close()")
        transport = self._make_transport()
        try:
            await _Run(self, transport, emit, backlog).run(requests)
        finally:
            await transport.close()


_PROCESS_LEDGERS: dict[str, RequestStore] = {}
_PROCESS_LEDGERS_LOCK = threading.Lock()


def _process_ledger(model: str) -> RequestStore:
    """The in-memory ledger of this process for ``model``, shared by its engines without a cache."""
    with _PROCESS_LEDGERS_LOCK:
        if model not in _PROCESS_LEDGERS:
            _PROCESS_LEDGERS[model] = RequestStore(None, scope=model)
        return _PROCESS_LEDGERS[model]


class _Stop(Exception):
    """This request gives up quietly: the run is stopping for another request's error."""


class _Run:
    """One generate() call: dispatch, retries, budget and cache for a stream of requests."""

    def __init__(
        self, engine: OpenAIEngine, transport: _AiohttpTransport | _SdkTransport, emit: Emit, backlog: Callable[[], int]
    ) -> None:
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
        self.reserver: _Batcher[int, bool] = _Batcher(self._reserve_batch)
        self.settler: _Batcher[Settlement, None] = _Batcher(self._settle_batch)
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
                    hits.append(_result(req.id, cached, cached=True))
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
            self.fail(EngineError(f"request {req.id}: {type(err).__name__}: {_one_line(err)}"))
        finally:
            self.waiting.pop(key, None)
            self.live.release()

    async def _attempts(self, req: GenerationRequest, key: str, body: dict[str, Any]) -> None:
        worst = worst_case_tokens(req)
        n = req.sampling.n
        post = self.transport.post
        retry = 0
        while True:
            async with self.slots:
                if self.error is not None:
                    raise _Stop
                if not await self.reserver.submit(worst):
                    self.fail(BudgetExceeded(self._budget_message(worst)))
                    raise _Stop
                # The reservation is committed: only now may the attempt go out.
                self.e.calls += 1
                self.in_flight += 1
                self.e.peak_in_flight = max(self.e.peak_in_flight, self.in_flight)
                failure: Exception | None = None
                try:
                    data = json.loads(await post(body))
                    completions, usage = parse_response(data, self.cfg.api, n)
                except asyncio.CancelledError:
                    raise  # the reservation stays charged: we cannot know what the server did
                except Exception as exc:
                    failure = exc
                finally:
                    self.in_flight -= 1
            if failure is None:
                actual = usage.total_tokens if usage is not None else worst
                value = json.dumps(
                    {"completions": [c.__dict__ for c in completions], "usage": usage.__dict__ if usage else None},
                    ensure_ascii=False,
                )
                if usage is not None:
                    self.e.usage.add(usage)
                self.ready.append(_result(req.id, json.loads(value), cached=False))
                # Cache write and usage settlement in one transaction; the settle batch emits
                # the result once it is on disk.
                await self.settler.submit(
                    Settlement(key=key if self.e.store.persistent else None, value=value, token_delta=actual - worst)
                )
                # Only now, with the answer in the cache, may the key leave ``waiting``:
                # an identical request arriving in between must not be sent again.
                twins = self.waiting.pop(key, [])
                if twins:
                    self.e.cache_hits += len(twins)
                    self.emit([_result(rid, json.loads(value), cached=True) for rid in twins])
                return
            refund = never_reached_server(failure)
            await self.settler.submit(
                Settlement(
                    token_delta=-worst if refund else 0,
                    call_refund=int(_never_sent(failure)),
                )
            )
            retryable, why, after = classify_error(failure)
            if not retryable:
                raise EngineError(f"request {req.id}: {why} (not retried)")
            if retry >= self.cfg.max_retries:
                where = f" at {self.transport.url}" if _connection_failure(failure) else ""
                raise EngineError(f"request {req.id}: gave up after {retry + 1} attempts{where}: {why}")
            if self.error is not None:
                raise _Stop
            delay = backoff_delay(retry, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, after, self.rng)
            retry += 1
            self.e.retries += 1
            me = asyncio.current_task()
            assert me is not None
            self.sleeping.add(me)
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                if self.error is not None:  # cut short by fail(): give up quietly
                    raise _Stop from None
                raise
            finally:
                self.sleeping.discard(me)

    def _budget_message(self, wanted_tokens: int) -> str:
        calls, tokens = self.e.store.spent()
        b = self.cfg.budget
        parts = []
        if b.max_calls is not None:
            parts.append(f"{calls}/{b.max_calls} calls")
        if b.max_tokens is not None:
            parts.append(f"{tokens}/{b.max_tokens} tokens (next call may need {wanted_tokens})")
        where = (
            f"finished calls are cached in {self.cfg.cache_path}"
            if self.cfg.cache_path
            else "no cache_path: finished calls are not kept"
        )
        return f"budget exhausted: {', '.join(parts)} for model {self.cfg.model} (rerun with a larger budget resumes; {where})"


def _result(request_id: str, value: dict[str, Any], cached: bool) -> GenerationResult:
    usage = value.get("usage")
    return GenerationResult(
        request_id=request_id,
        completions=[Completion(**c) for c in value["completions"]],
        usage=Usage(**usage) if usage else Usage(),
        cached=cached,
    )


async def _aiter(items: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest]) -> AsyncIterator[GenerationRequest]:
    if isinstance(items, AsyncIterable):
        async for x in items:
            yield x
    else:
        for x in items:
            yield x
