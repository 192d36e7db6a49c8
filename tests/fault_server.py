"""A local, deliberately faulty OpenAI-compatible endpoint for tests and benchmarks.

Serves ``/v1/chat/completions`` and ``/v1/completions`` with answers derived from the request
(``expected_text``), after a configurable latency, and injects faults on a configurable
fraction of attempts: 429 with Retry-After, 500, 503, a response slower than the client's
timeout, a body cut short (Content-Length larger than what is sent, then close), a complete
but invalid JSON body, and a connection dropped without any response. Two more kinds, only
when asked for by name (``kinds``): ``huge``, a valid answer padded to ``huge_bytes``, and
``drip``, a 200 whose body trickles out forever. ``usage`` replaces the usage object of every
answer (an endpoint that lies about tokens); what the server bills stays the true count.

Faults are a pure function of (request key, attempt number), so a run is reproducible and
every request succeeds once it has had ``max_faults`` faults. A prompt containing
``__400__`` always gets a 400 (a non-retryable error).

The server counts what a provider would bill: every request received and every successful
response, per request key (sha256 of the canonical request body), plus the most requests it
ever handled at once (a client that has given up on a request no longer counts).

Use in-process (``with FaultServer(...) as srv``: an aiohttp server on its own loop in a
thread) or as a separate process (``python tests/fault_server.py --latency 0.05``: prints
``PORT <n>`` and serves until killed); ``srv.stats()`` / ``fetch_stats(url)`` read the
counters over HTTP (``GET /_stats``, which also shows the path, query and headers of the last
completion request), ``POST /_config`` changes the fault plan.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

FAULT_KINDS = ("429", "500", "503", "slow", "truncated", "badjson", "drop")
BODY_FAULT_KINDS = ("huge", "drip")  # not in the default mix: a client must not retry them to success


@dataclass
class FaultPlan:
    rate: float = 0.0  # fraction of attempts (before max_faults) that fail
    max_faults: int = 3  # per key: from this attempt on, always succeed
    kinds: tuple[str, ...] = FAULT_KINDS
    slow_s: float = 2.0  # how long a "slow" answer takes (set above the client timeout)
    retry_after: str = "0.01"  # seconds, sent with 429
    huge_bytes: int = 20 * 2**20  # the size of a "huge" answer
    usage: Any = None  # when set, sent as the usage of every answer instead of the true one

    def pick(self, key: str, attempt: int) -> str | None:
        """The fault for this attempt, or None: deterministic in (key, attempt)."""
        if attempt >= self.max_faults or self.rate <= 0 or not self.kinds:
            return None
        h = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
        if int.from_bytes(h[:8], "big") / 2**64 >= self.rate:
            return None
        return self.kinds[h[8] % len(self.kinds)]


def request_key(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def expected_text(prompt: str, index: int = 0, seed: int | None = None) -> str:
    """The answer the server gives for this prompt (the test side computes it the same way)."""
    h = hashlib.sha256(f"{prompt}|{seed}".encode()).hexdigest()[:12]
    return f"ok:{h}:{index}"


def prompt_tokens(prompt: str) -> int:
    return len(prompt.encode()) // 4 + 1


COMPLETION_TOKENS = 5


@dataclass
class Counters:
    received: Counter = field(default_factory=Counter)  # per key: attempts received
    billed: Counter = field(default_factory=Counter)  # per key: successful responses
    faults: Counter = field(default_factory=Counter)  # per fault kind
    billed_tokens: int = 0
    active: int = 0
    max_active: int = 0
    last_request: dict[str, Any] = field(default_factory=dict)  # path, query, headers (lower-case names)

    def snapshot(self) -> dict[str, Any]:
        return {
            "total_received": sum(self.received.values()),
            "total_billed": sum(self.billed.values()),
            "received": dict(self.received),
            "billed": dict(self.billed),
            "faults": dict(self.faults),
            "billed_tokens": self.billed_tokens,
            "max_active": self.max_active,
            "last_request": self.last_request,
        }


class FaultApp:
    def __init__(self, plan: FaultPlan | None = None, latency_s: float = 0.0) -> None:
        self.plan = plan or FaultPlan()
        self.latency_s = latency_s
        self.c = Counters()

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/_stats", self.stats)
        app.router.add_post("/_config", self.configure)
        app.router.add_post("/_reset", self.reset)
        return app

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.c.snapshot())

    async def reset(self, request: web.Request) -> web.Response:
        self.c = Counters()
        return web.json_response({"ok": True})

    async def configure(self, request: web.Request) -> web.Response:
        data = await request.json()
        if "latency_s" in data:
            self.latency_s = float(data.pop("latency_s"))
        if "kinds" in data:
            data["kinds"] = tuple(data["kinds"])
        self.plan = FaultPlan(**{**asdict(self.plan), **data})
        return web.json_response({"ok": True})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        key = request_key(body)
        c = self.c
        attempt = c.received[key]
        c.received[key] += 1
        c.last_request = {
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        # Let the loop finish cancelling handlers whose client already hung up (their FIN
        # reached us before this request did) so max_active measures live calls only.
        for _ in range(3):
            await asyncio.sleep(0)
        c.active += 1
        c.max_active = max(c.max_active, c.active)
        try:
            return await self._answer(request, body, key, attempt)
        finally:
            c.active -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any], key: str, attempt: int) -> web.StreamResponse:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        prompt = prompt_text(body)
        if "__400__" in prompt:
            return web.json_response({"error": {"message": "bad request (injected)", "type": "invalid_request_error"}}, status=400)
        fault = self.plan.pick(key, attempt)
        if fault is not None:
            self.c.faults[fault] += 1
        if fault == "429":
            return web.json_response(
                {"error": {"message": "rate limited (injected)"}}, status=429, headers={"Retry-After": self.plan.retry_after}
            )
        if fault in ("500", "503"):
            return web.json_response({"error": {"message": f"server error {fault} (injected)"}}, status=int(fault))
        if fault == "slow":
            await asyncio.sleep(self.plan.slow_s)  # the client times out first
            return web.json_response({"error": {"message": "too slow"}}, status=503)
        if fault == "drop":
            _drop(request)
            return web.Response()  # never written: the transport is gone
        payload = self._completion(body, prompt)
        billed_tokens = payload["usage"]["total_tokens"]
        if self.plan.usage is not None:
            payload["usage"] = self.plan.usage
        blob = json.dumps(payload).encode()
        if fault == "badjson":
            return web.Response(body=blob[: len(blob) // 2], content_type="application/json")
        if fault == "truncated":
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            resp.content_length = len(blob)
            await resp.prepare(request)
            await resp.write(blob[: len(blob) // 2])
            _drop(request)
            return resp
        self.c.billed[key] += 1
        self.c.billed_tokens += billed_tokens
        if fault in BODY_FAULT_KINDS:
            return await self._stream_body(request, blob, fault)
        return web.Response(body=blob, content_type="application/json")

    async def _stream_body(self, request: web.Request, blob: bytes, fault: str) -> web.StreamResponse:
        """A chunked 200: the answer padded with whitespace to ``huge_bytes`` (still valid
        JSON), or a byte every 20 ms forever. Ends when the client hangs up."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            await resp.write(blob[:-1])
            if fault == "drip":
                while True:
                    await resp.write(b" ")
                    await asyncio.sleep(0.02)
            pad = self.plan.huge_bytes - len(blob)
            chunk = b" " * (1 << 20)
            while pad > 0:
                await resp.write(chunk[:pad])
                pad -= len(chunk)
            await resp.write(blob[-1:])
            await resp.write_eof()
        except ConnectionError:  # the client gave up on the body: what the test wants
            pass
        return resp

    @staticmethod
    def _completion(body: dict[str, Any], prompt: str) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        seed = body.get("seed")
        chat = "messages" in body
        choices = []
        for i in range(n):
            text = expected_text(prompt, i, seed)
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
            else:
                choices.append({"index": i, "text": text, "finish_reason": "stop"})
        pt, ct = prompt_tokens(prompt), COMPLETION_TOKENS * n
        return {
            "id": "cmpl-fault",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": choices,
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()  # RST/close right away, nothing more is written


class FaultServer:
    """The fault app on 127.0.0.1 (free port) on its own event loop in a daemon thread."""

    def __init__(self, plan: FaultPlan | None = None, latency_s: float = 0.0) -> None:
        self.app = FaultApp(plan, latency_s)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-server", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FaultServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app.make_app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def stats(self) -> dict[str, Any]:
        return fetch_stats(self.url)

    def configure(self, **changes: Any) -> None:
        post_json(self.url, "/_config", changes)

    def reset(self) -> None:
        post_json(self.url, "/_reset", {})

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _root(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def fetch_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(_root(base_url) + "/_stats", timeout=10) as r:
        return json.loads(r.read())


def post_json(base_url: str, path: str, data: dict[str, Any]) -> None:
    req = urllib.request.Request(
        _root(base_url) + path, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    args = ap.parse_args()

    async def serve() -> None:
        fa = FaultApp(FaultPlan(rate=args.fault_rate), args.latency)
        runner = web.AppRunner(fa.make_app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
        print(f"PORT {runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
