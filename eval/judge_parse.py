"""Reading a judge's answer: the JSON verdict the rubric asks for, found and checked robustly.

Judges wrap their JSON in prose or a ```json fence, write Python literals (single quotes,
True/False, a trailing comma) and numbers as strings. What can be read without guessing is
read; anything else is a :class:`Verdict` with ``error`` set to one stable reason:

``no_json``        no ``{`` in the answer (a refusal, prose only, an empty answer)
``bad_json``       an object is there but does not parse, even after the minimal repairs
``missing_field``  a required key (``score``) is absent
``bad_value``      a value of the wrong kind (``"score": "high"``, ``"correct": "maybe"``)
``out_of_range``   a 1-10 value outside 1..10
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

SCALES = ("score", "clarity", "difficulty")  # integers 1..10; score is required
FLAGS = ("solvable", "correct")
REASONS = ("no_json", "bad_json", "missing_field", "bad_value", "out_of_range")
SCALE_RANGE = (1, 10)

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_PY_LITERALS = re.compile(r"\b(True|False|None)\b")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


@dataclass
class Verdict:
    score: float | None = None
    solvable: bool | None = None
    correct: bool | None = None
    clarity: float | None = None
    difficulty: float | None = None
    rationale: str | None = None
    error: str | None = None
    detail: str | None = None  # what was wrong, for a human reading the record

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_verdict(answer: str) -> Verdict:
    """The verdict in ``answer``; never raises."""
    candidate = _json_candidate(answer or "")
    if candidate is None:
        return Verdict(error="no_json", detail="no JSON object in the answer")
    obj = _loads_repaired(candidate)
    if not isinstance(obj, dict):
        return Verdict(error="bad_json", detail=f"unparseable object: {candidate[:80]!r}")
    return _checked(obj)


def _json_candidate(text: str) -> str | None:
    """The text of the first JSON object: inside a fence when there is one, else the first
    balanced ``{...}`` (quotes respected), else from the first ``{`` to the end (a torn object)."""
    for fenced in _FENCE.findall(text):
        if "{" in fenced:
            text = fenced
            break
    start = text.find("{")
    if start < 0:
        return None
    depth, quote, escaped = 0, None, False
    for position in range(start, len(text)):
        char = text[position]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:position + 1]
    return text[start:]


def _loads_repaired(candidate: str) -> Any:
    """json.loads, then with the minimal repairs: trailing commas, Python literals, single quotes."""
    attempts = [candidate]
    repaired = _TRAILING_COMMA.sub(r"\1", candidate)
    attempts.append(repaired)
    literal = _PY_LITERALS.sub(lambda m: {"True": "true", "False": "false", "None": "null"}[m.group(1)], repaired)
    attempts.append(literal)
    if "'" in literal:
        attempts.append(_single_to_double_quotes(literal))
    for attempt in attempts:
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            continue
    return None


def _single_to_double_quotes(text: str) -> str:
    """Python-style strings as JSON ones: a single-quoted string becomes double-quoted (its
    double quotes escaped); an apostrophe inside a double-quoted string is left alone."""
    out, quote, escaped = [], None, False
    for char in text:
        if quote is None:
            if char in "\"'":
                quote = char
                out.append('"')
            else:
                out.append(char)
        elif escaped:
            escaped = False
            out.append("'" if char == "'" and quote == "'" else "\\" + char)
        elif char == "\\":
            escaped = True
        elif char == quote:
            quote = None
            out.append('"')
        elif char == '"' and quote == "'":
            out.append('\\"')
        else:
            out.append(char)
    return "".join(out)


def _checked(obj: dict[str, Any]) -> Verdict:
    verdict = Verdict()
    rationale = obj.get("rationale")
    verdict.rationale = rationale if isinstance(rationale, str) else (None if rationale is None else str(rationale))
    if "score" not in obj or obj["score"] is None:
        return _failed(verdict, "missing_field", "no score")
    for name in SCALES:
        if name not in obj or obj[name] is None:
            continue  # only score is required
        value = _number(obj[name])
        if value is None:
            return _failed(verdict, "bad_value", f"{name}={obj[name]!r} is not a number")
        if not SCALE_RANGE[0] <= value <= SCALE_RANGE[1]:
            return _failed(verdict, "out_of_range", f"{name}={value:g} outside {SCALE_RANGE[0]}..{SCALE_RANGE[1]}")
        setattr(verdict, name, value)
    for name in FLAGS:
        if name not in obj or obj[name] is None:
            continue
        value = _flag(obj[name])
        if value is None:
            return _failed(verdict, "bad_value", f"{name}={obj[name]!r} is not a boolean")
        setattr(verdict, name, value)
    return verdict


def _failed(verdict: Verdict, reason: str, detail: str) -> Verdict:
    return Verdict(rationale=verdict.rationale, error=reason, detail=detail)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip().split("/")[0].strip()  # "7/10" -> 7
        try:
            number = float(text)
        except ValueError:
            return None
    else:
        return None
    if number != number:  # NaN
        return None
    return int(number) if number.is_integer() else number


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None
