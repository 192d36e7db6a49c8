"""The HTTP transport of the ``openai`` engine: POST a JSON body, get the raw body back.

The one place that knows about URLs, headers, proxies, TLS and the limits on an answer, so the
engine above it deals in bodies and exceptions only. One ``aiohttp.ClientSession`` per run,
POSTing to ``{base_url}/chat/completions`` or ``/completions``. A failed connect (refused, DNS,
TLS, a connect timeout) is "never reached the server"; a dropped connection, a cut body or a
timeout once the connection was made is "may have been billed" (``llm.openai_retry`` tells them
apart by exception type).
"""
from __future__ import annotations

import json
import os
import re
import ssl
import urllib.request
from collections.abc import Mapping
from typing import Any

import aiohttp
import certifi
import yarl

from llm.config import OpenAIEngineConfig
from llm.errors import EngineError

# Enough of an error body for its message; the rest is not read.
_ERROR_BODY_BYTES = 64 * 1024


class HTTPStatusError(Exception):
    """A non-2xx answer."""

    def __init__(self, status_code: int, detail: str, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.headers = headers


class ResponseTooLarge(Exception):
    """A 2xx body past ``max_response_bytes``: reading stopped there (it was not buffered whole)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"response body over engine.max_response_bytes ({limit} bytes)")


class HttpTransport:
    """One session for a run, created and closed on the run's event loop.

    The pool holds ``max_in_flight`` connections, as many as calls in flight, so an attempt
    never waits for one. Each attempt has ``timeout_s`` in all, reading the whole body included
    (a body that trickles forever ends as a timeout); connecting (DNS, TCP, TLS) gets at most
    half of it, so a connect that hangs ends as a ConnectionTimeoutError (never sent: refunded)
    rather than as the total timeout (which may strike after the request went out, so it keeps
    its charge)."""

    def __init__(self, cfg: OpenAIEngineConfig) -> None:
        base = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        root = yarl.URL(base)
        if root.scheme not in ("http", "https") or not root.host:
            raise EngineError(f"engine.base_url: {base!r} is not an http(s) URL")
        self.url = base
        self.max_response_bytes = cfg.max_response_bytes
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
            if not 200 <= resp.status < 300:
                raise HTTPStatusError(resp.status, _error_detail(await _read_at_most(resp, _ERROR_BODY_BYTES)), resp.headers)
            raw = await _read_at_most(resp, self.max_response_bytes + 1)
            if len(raw) > self.max_response_bytes:
                raise ResponseTooLarge(self.max_response_bytes)
            return raw

    async def close(self) -> None:
        await self.session.close()


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes; what lies beyond is never read (nor buffered)."""
    raw = bytearray()
    while len(raw) < limit:
        chunk = await resp.content.read(limit - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


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
    """The proxy the environment names for ``url`` (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY,
    minus NO_PROXY), as curl and httpx read them: looked up once per run."""
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(url.host or "", proxies):
        return None
    return proxies.get(url.scheme) or proxies.get("all")


def _ssl_context() -> ssl.SSLContext:
    """Certificates from SSL_CERT_FILE / SSL_CERT_DIR, else certifi's bundle (not the system
    store, which slim images may lack)."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
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
