"""The retry policy of the ``openai`` engine, for a failed attempt: is it worth another try,
after how long, and did it provably never reach the server (so the budget gets it back)?

Apart from the dispatch loop so that each rule can be checked on a bare exception, without a
server.
"""
from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Mapping

import aiohttp

from llm.openai_http import HTTPStatusError, ResponseTooLarge
from llm.openai_protocol import MalformedResponse


def classify_error(exc: BaseException) -> tuple[bool, str, float | None]:
    """(retryable, one-line description, Retry-After seconds) for a failed attempt."""
    if isinstance(exc, HTTPStatusError):
        return _retryable_status(exc.status_code), str(exc), retry_after_s(exc.headers)
    if isinstance(exc, ResponseTooLarge):  # the same request would get the same answer, and pay again
        return False, str(exc), None
    # before ValueError: aiohttp's InvalidURL is one
    if isinstance(exc, aiohttp.InvalidURL):
        return False, f"invalid URL ({one_line(exc)})", None
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return True, "timed out connecting", None
    if isinstance(exc, asyncio.TimeoutError):  # the attempt's total timeout (or a read timeout)
        return True, "timed out", None
    if isinstance(exc, aiohttp.ClientConnectionError):  # refused, DNS, TLS, dropped, reset
        return True, f"connection error ({type(exc).__name__}: {one_line(exc)})", None
    if isinstance(exc, aiohttp.ClientPayloadError):
        return True, f"broken response body ({type(exc).__name__}: {one_line(exc)})", None
    if isinstance(exc, (MalformedResponse, ValueError)):  # json.JSONDecodeError is a ValueError
        return True, f"malformed response ({one_line(exc)})", None
    if isinstance(exc, aiohttp.ClientError):  # e.g. an unparsable HTTP response
        return True, f"{type(exc).__name__}: {one_line(exc)}", None
    return False, f"{type(exc).__name__}: {one_line(exc)}", None


def _retryable_status(code: int) -> bool:
    return code in (408, 409, 429) or code >= 500


def never_reached_server(exc: BaseException) -> bool:
    """True when the attempt provably was not delivered: the connection was never made (see
    ``never_sent``) or the server answered with an error status (an error response is not
    billed). Those attempts get their reserved tokens back; a timeout, dropped connection,
    broken or oversized body keeps its worst case (the provider may have generated, and
    billed, the completion)."""
    return isinstance(exc, HTTPStatusError) or never_sent(exc)


def never_sent(exc: BaseException) -> bool:
    """The connection was never made, so no request bytes left: ClientConnectorError (refused,
    DNS, TLS handshake, proxy; raised only while connecting), ConnectionTimeoutError (the
    connect phase ran out of time), or a URL aiohttp could not use. The call is refunded too."""
    return isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL))


def is_connection_failure(exc: BaseException) -> bool:
    """Worth naming the URL in the error: the endpoint, not the request, is the likely problem."""
    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError))


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


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
