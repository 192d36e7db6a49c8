"""What goes over the wire to an OpenAI-compatible endpoint, and what is kept of the answer.

The request body, the cache key computed from it, the response body turned back into
completions and usage, and the JSON value the request cache stores. Pure functions: no I/O,
so the formats (the cache's included) can be checked alone.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from llm.errors import EngineError
from llm.types import Completion, GenerationRequest, GenerationResult, Usage

# Bump to invalidate every cached answer (a change in what the key covers).
_CACHE_KEY_VERSION = 1


class MalformedResponse(Exception):
    """A 200 whose body is not a usable completion (truncated, not JSON, wrong shape)."""


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


def parse_response(data: Any, api: str, n: int, most_tokens: int) -> tuple[list[Completion], Usage | None]:
    """Completions (ordered by choice index) and usage (None when missing or not believable, see
    ``parse_usage``) from a decoded body; raise MalformedResponse when the body is not a full
    answer (a retry may fix it). A bad usage object does not make the answer malformed: the
    answer is paid for, and retrying it would pay again."""
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
    usage = parse_usage(data.get("usage"), most_tokens)
    if usage is not None and n == 1:
        completions[0].num_tokens = usage.completion_tokens
    return completions, usage


def parse_usage(raw: Any, most_tokens: int) -> Usage | None:
    """Token counts that can be true, else None (unknown usage, which the ledger charges at the
    request's worst case): integers, never negative (a missing completion count reads 0, as
    some servers leave it out), together at most ``most_tokens``, what the request can be
    billed at worst. A negative count would lower the ledger and let a run spend past its
    budget; one of 10**15 would exhaust the budget for every later run."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if completion is None:
        completion = 0
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, completion)):
        return None
    if prompt + completion > most_tokens:
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def cache_value(completions: list[Completion], usage: Usage | None) -> str:
    """The JSON text stored in the request cache for an answer (its on-disk format)."""
    return json.dumps(
        {"completions": [c.__dict__ for c in completions], "usage": usage.__dict__ if usage else None},
        ensure_ascii=False,
    )


def result_from_cache_value(request_id: str, value: dict[str, Any], cached: bool) -> GenerationResult:
    usage = value.get("usage")
    return GenerationResult(
        request_id=request_id,
        completions=[Completion(**c) for c in value["completions"]],
        usage=Usage(**usage) if usage else Usage(),
        cached=cached,
    )
