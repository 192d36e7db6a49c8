"""A local STAND-IN teacher: an OpenAI-compatible HTTP server on 127.0.0.1 for the demo.

It is not a model. No large teacher can be downloaded here, so it answers each teacher prompt
with a *human-written* GSM8K or MATH training problem and its solution (shipped, MIT:
``data/benchmarks/data/{gsm8k,math}/train.jsonl``, see ``data/benchmarks/LICENSES.md``), chosen
by TF-IDF similarity to the source text inside the prompt, in the teacher's output format
(``## Problem`` / ``## Solution`` ... ``\\boxed{}``) that distill's validator accepts. It says so:
the only model it serves is ``standin-teacher``, and every answer carries
``system_fingerprint`` and an ``X-Stand-In`` header with :data:`STAND_IN_NOTICE`.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``.

* The source text is the prompt's "Math content:" section (the stage prompt library's
  templates); without one, the whole prompt. The stage named in the prompt picks the pool:
  grade school and middle school draw GSM8K, the others MATH (problems with an ``[asy]``
  figure left out: the prompts ask for text only); a tool prompt ("solve it with a short Python
  program") draws GSM8K problems whose ``<<...>>`` calculator steps reproduce the answer, and is
  answered with the worked solution, a Python program made of those steps that prints the
  answer, and the printed value boxed.
* GSM8K solutions lose their ``<<...>>`` annotations and end "The answer is \\boxed{42}."
  instead of ``#### 42``; MATH solutions are used as they are.
* A candidate is served only if distill's own checks (parsing, a one-line boxed answer, problem
  length, the cheating rules) pass on it; within one server run no problem is served twice
  while an unused candidate is left (so distill's near-duplicate check keeps them), taking the
  next most similar instead.
* A prompt that holds a training problem verbatim (distill's self-consistency solve) gets that
  problem's solution, ``n`` times.
* ``n`` choices (distinct problems), ``stop`` (cut at the first stop string, finish_reason
  "stop"), ``max_tokens`` (whitespace tokens, finish_reason "length") and ``seed`` are
  honoured; the answer is a pure function of the request and of what this run served before
  (greedy: ``temperature`` and ``seed`` change nothing), so the same requests in the same order
  give the same answers in every run. ``usage`` counts whitespace tokens.
* A malformed request is a 400 with an OpenAI-style ``{"error": {...}}`` body; another model
  name is a 404 ``model_not_found``.

Use in-process (``with StandinTeacher() as teacher: ... teacher.url``: aiohttp on its own event
loop in a daemon thread, free port by default) or as a process
(``python -m pipeline.standin_teacher --port 8765``: prints ``PORT <n>`` once listening and serves
until SIGINT/SIGTERM). distill's config: ``teacher: {kind: openai, model: standin-teacher,
base_url: http://127.0.0.1:<port>/v1}`` (``api: chat`` or ``completions``).
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import itertools
import json
import math
import operator
import re
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

MODEL_NAME = "standin-teacher"
STAND_IN_NOTICE = "stand-in: answers with human-written GSM8K/MATH training problems"
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "benchmarks" / "data"
GSM8K_TRAIN = DATA_DIR / "gsm8k" / "train.jsonl"
MATH_TRAIN = DATA_DIR / "math" / "train.jsonl"
GSM8K_STAGES = frozenset({"grade school", "middle school"})
MAX_N = 16
MAX_STOP = 4


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


# --- the training problems -----------------------------------------------------------------

@dataclass
class Row:
    source: str  # "gsm8k" or "math"
    problem: str
    solution: str  # already in the teacher's format (GSM8K cleaned, ending with \boxed{})
    raw_answer: str  # GSM8K's original answer text (for the tool program); "" for MATH


_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_FINAL = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)


def gsm8k_solution(answer: str) -> tuple[str, str]:
    """The worked text without ``<<...>>`` annotations and the final answer (commas removed)."""
    match = _FINAL.search(answer)
    final = match.group(1).replace(",", "").strip() if match else ""
    work = _ANNOTATION.sub("", answer[: match.start()] if match else answer).strip()
    return work, final


def load_rows() -> list[Row]:
    rows: list[Row] = []
    with open(GSM8K_TRAIN, encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            work, final = gsm8k_solution(item["answer"])
            if final:
                rows.append(Row("gsm8k", item["question"].strip(), f"{work}\nThe answer is \\boxed{{{final}}}.",
                                item["answer"]))
    with open(MATH_TRAIN, encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            if "[asy]" not in item["problem"]:
                rows.append(Row("math", item["problem"].strip(), item["solution"].strip(), ""))
    return rows


# --- the tool variant: a program from GSM8K's calculator steps --------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow):
            base, exponent = _evaluate(node.left), _evaluate(node.right)
            if abs(exponent) > 12:
                raise ValueError("exponent too large")
            return base ** exponent
        if type(node.op) in _OPS:
            return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not arithmetic")


def _printed(value: float) -> str:
    """What ``print(int(a) if float(a).is_integer() else round(a, 6))`` writes."""
    if float(value).is_integer():
        return str(int(value))
    return str(round(value, 6))


def tool_solution(row: Row) -> str | None:
    """The worked solution, then a program of its calculator steps that prints the answer, then
    the printed value boxed; None when the steps are not plain arithmetic or do not reproduce
    the answer."""
    if row.source != "gsm8k":
        return None
    expressions = []
    for annotation in _ANNOTATION.findall(row.raw_answer):
        expression = annotation.rpartition("=")[0].strip()
        if not expression or not re.fullmatch(r"[0-9.+\-*/%() ]+", expression):
            return None
        expressions.append(expression)
    work, final = gsm8k_solution(row.raw_answer)
    if not expressions:
        return None
    try:
        value = _evaluate(ast.parse(expressions[-1], mode="eval"))
        for expression in expressions:
            _evaluate(ast.parse(expression, mode="eval"))
        gold = float(final)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    if not math.isfinite(value) or abs(value - gold) > 1e-6 * max(1.0, abs(gold)):
        return None
    printed = _printed(value)
    lines = ["# the calculator steps of the working above, in order"]
    lines += [f"step_{i} = {expression}" for i, expression in enumerate(expressions, 1)]
    lines += [f"answer = step_{len(expressions)}", "print(int(answer) if float(answer).is_integer() else round(answer, 6))"]
    program = "\n".join(lines)
    return (f"{work}\nThe program below redoes each calculator step of this working and prints the result.\n"
            f"```python\n{program}\n```\nThe program prints {printed}, so the answer is \\boxed{{{printed}}}.")


# --- similarity ---------------------------------------------------------------------------

_WORD = re.compile(r"[a-z][a-z]+")
_STOPWORDS = frozenset("""the and for that this with are was were has have had not but you your they them their
its his her she him how what when where which who why will would can could should may might must shall does did
from into than then there these those each all any both few more most other some such only own same just also
very too our out about above below over under again further once here why one two three four five six seven eight
nine ten let find many much per if is be of to in on at by as an or it we no so do up""".split())


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


class Index:
    """TF-IDF over the problems' words (stop words and words in over a fifth of the rows left
    out), cosine-ranked through an inverted index; built once, in about a second."""

    def __init__(self, texts: list[str]) -> None:
        counts = [Counter(_terms(t)) for t in texts]
        df: Counter = Counter()
        for c in counts:
            df.update(c.keys())
        total = len(texts)
        self.idf = {w: math.log(total / d) for w, d in df.items() if d <= total / 5}
        self.postings: dict[str, list[tuple[int, float]]] = {}
        for row, c in enumerate(counts):
            weights = {w: (1 + math.log(k)) * self.idf[w] for w, k in c.items() if w in self.idf}
            norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
            for w, v in weights.items():
                self.postings.setdefault(w, []).append((row, v / norm))

    def scores(self, text: str) -> dict[int, float]:
        c = Counter(w for w in _terms(text) if w in self.idf)
        weights = {w: (1 + math.log(k)) * self.idf[w] for w, k in c.items()}
        norm = math.sqrt(sum(v * v for v in weights.values())) or 1.0
        out: dict[int, float] = {}
        for w, v in weights.items():
            q = v / norm
            for row, d in self.postings[w]:
                out[row] = out.get(row, 0.0) + q * d
        return out


# --- reading the prompt -------------------------------------------------------------------

_STAGE = re.compile(r"self-contained\s+(.+?)\s+math problem for", re.IGNORECASE)


def source_text(prompt: str) -> str:
    """The "Math content:" section of a stage prompt, else the whole prompt."""
    head, found, rest = prompt.partition("Math content:\n")
    if not found:
        return prompt
    section, found, _ = rest.rpartition("\n\nGuidelines:")
    return (section if found else rest).strip() or prompt


def _squash(text: str) -> str:
    return " ".join(text.lower().split())


def _tokens(text: str) -> int:
    return len(text.split())


def _cut(text: str, stops: list[str], max_tokens: int | None) -> tuple[str, str]:
    """The text cut at the first stop string, then at ``max_tokens`` whitespace tokens."""
    reason = "stop"
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    if cuts:
        text = text[: min(cuts)]
    if max_tokens is not None:
        words = list(re.finditer(r"\S+", text))
        if len(words) > max_tokens:
            text, reason = text[: words[max_tokens - 1].end()], "length"
    return text, reason


# --- the teacher --------------------------------------------------------------------------

class Teacher:
    """The answering logic, HTTP aside (usable and testable alone)."""

    def __init__(self) -> None:
        self.rows = load_rows()
        self.index = Index([row.problem for row in self.rows])
        self.by_problem = {_squash(row.problem): i for i, row in enumerate(self.rows)}
        self.used: set[int] = set()
        self._answers: dict[tuple[int, bool], str | None] = {}
        self.lock = threading.Lock()

    def answer_for(self, row_id: int, tool: bool) -> str | None:
        """The completion for a row (problem, then "## Solution"), or None when distill's checks
        would reject it."""
        key = (row_id, tool)
        if key not in self._answers:
            self._answers[key] = self._build(self.rows[row_id], tool)
        return self._answers[key]

    def _build(self, row: Row, tool: bool) -> str | None:
        from data.stage_prompts.parsing import (
            is_answer,
            parse_completion,
            solution_leaked,
        )
        from data.text import count_tokens
        from distill.validation import ValidationConfig, cheating_rule

        solution = tool_solution(row) if tool else row.solution
        if solution is None:
            return None
        text = f"{row.problem}\n\n## Solution\n{solution}\n"
        parsed, _ = parse_completion(text)
        defaults = ValidationConfig()
        if (parsed is None or solution_leaked(parsed.problem, parsed.final_answer) or not is_answer(parsed.final_answer)
                or count_tokens(parsed.problem) < defaults.min_problem_words
                or cheating_rule(parsed, defaults.min_solution_words) is not None
                or (tool and parsed.code is None)):
            return None
        return text

    def _unrelated(self, prompt: str, scores: dict[int, float]):
        """The rows with no word in common with the prompt, in an order fixed by the prompt
        (only reached when every similar candidate is used or rejected)."""
        salt = hashlib.sha256(prompt.encode()).digest()
        yield from sorted(set(range(len(self.rows))) - set(scores),
                          key=lambda r: hashlib.sha256(salt + r.to_bytes(4, "big")).digest())

    def complete(self, prompt: str, n: int) -> list[str]:
        """``n`` completions for a prompt (see the module docstring)."""
        with self.lock:
            scores = self.index.scores(prompt if "Math content:" not in prompt else source_text(prompt))
            ranked = sorted(scores, key=lambda r: (-scores[r], r))
            # A self-consistency solve: the prompt holds a training problem itself.
            if "Math content:" not in prompt:
                flat = _squash(prompt)
                for row_id in ranked[:5]:
                    if _squash(self.rows[row_id].problem) in flat:
                        return [self.rows[row_id].solution] * n
            tool = "short Python program" in prompt or "```python" in prompt
            stage = _STAGE.search(prompt)
            wanted = "gsm8k" if tool or (stage and stage.group(1).lower() in GSM8K_STAGES) else ("math" if stage else None)
            chosen: list[str] = []
            fallback: list[str] = []
            for row_id in itertools.chain(ranked, self._unrelated(prompt, scores)):
                if wanted is not None and self.rows[row_id].source != wanted:
                    continue
                text = self.answer_for(row_id, tool)
                if text is None:
                    continue
                if row_id in self.used:
                    if len(fallback) < n:
                        fallback.append(text)
                    continue
                self.used.add(row_id)
                chosen.append(text)
                if len(chosen) == n:
                    break
            chosen += fallback[: n - len(chosen)]
            while len(chosen) < n:  # every candidate used and nothing left: repeat the best
                chosen.append(chosen[0] if chosen else "")
            return chosen


def _prompt_of(body: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        parts = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("each message needs a 'role' and a string 'content'", param="messages")
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            if not isinstance(content, str):
                raise BadRequest("each message needs a 'role' and a string 'content'", param="messages")
            parts.append(content)
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (or a list of one string)", param="prompt")
    return prompt


def _int_field(body: dict[str, Any], name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise BadRequest(f"'{name}' must be an integer {bound}", param=name)
    return value


def answer(teacher: Teacher, body: Any, chat: bool) -> dict[str, Any]:
    """The response body for a request body (raises BadRequest)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("'model' is required", param="model")
    if model != MODEL_NAME:
        raise BadRequest(f"The model '{model}' does not exist; this server serves only '{MODEL_NAME}' ({STAND_IN_NOTICE})",
                         status=404, code="model_not_found", param="model")
    prompt = _prompt_of(body, chat)
    n = _int_field(body, "n", 1, 1, MAX_N)
    max_tokens = _int_field(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens", None, 1)
    _int_field(body, "seed", None, -(2**63))
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise BadRequest(f"'{name}' must be a number >= 0", param=name)
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(f"'stop' must be a string or a list of at most {MAX_STOP} non-empty strings", param="stop")
    if body.get("stream"):
        raise BadRequest("streaming is not supported by the stand-in teacher", param="stream")

    choices, completion_tokens = [], 0
    for index, text in enumerate(teacher.complete(prompt, n)):
        text, reason = _cut(text, stops, max_tokens)
        completion_tokens += _tokens(text)
        if chat:
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "logprobs": None, "finish_reason": reason})
        else:
            choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": reason})
    prompt_tokens = _tokens(prompt)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + digest,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": MODEL_NAME,
        "system_fingerprint": STAND_IN_NOTICE,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


# --- HTTP ---------------------------------------------------------------------------------

def _error(message: str, status: int = 400, code: str | None = None, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status, headers={"X-Stand-In": STAND_IN_NOTICE})


def make_app(teacher: Teacher) -> web.Application:
    async def completions(request: web.Request, chat: bool) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error("the request body is not valid JSON")
        try:
            # The ranking is CPU work: off the event loop, so /v1/models stays responsive.
            payload = await asyncio.get_running_loop().run_in_executor(None, answer, teacher, body, chat)
        except BadRequest as err:
            return _error(str(err), err.status, err.code, err.param)
        return web.json_response(payload, headers={"X-Stand-In": STAND_IN_NOTICE})

    async def chat_completions(request: web.Request) -> web.Response:
        return await completions(request, True)

    async def text_completions(request: web.Request) -> web.Response:
        return await completions(request, False)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": STAND_IN_NOTICE}]},
            headers={"X-Stand-In": STAND_IN_NOTICE})

    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", text_completions)
    app.router.add_get("/v1/models", models)
    return app


class StandinTeacher:
    """The server on its own event loop in a daemon thread: ``with StandinTeacher() as t: t.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.teacher: Teacher | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="standin-teacher", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "StandinTeacher":
        self.teacher = Teacher()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.teacher), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def __enter__(self) -> "StandinTeacher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(host: str, port: int) -> None:
    started = time.monotonic()
    teacher = Teacher()
    runner = web.AppRunner(make_app(teacher), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1]
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    print(f"{STAND_IN_NOTICE}: {len(teacher.rows)} problems indexed in {time.monotonic() - started:.1f} s; "
          f"model {MODEL_NAME!r} at http://{host}:{bound}/v1", file=sys.stderr, flush=True)
    print(f"PORT {bound}", flush=True)
    try:
        await done.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.standin_teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed as 'PORT <n>')")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
