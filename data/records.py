"""Record types and stable, content-derived ids.

Every record a stage writes carries an ``id`` derived from what it is made of, so a rerun
recomputes the same ids and can skip what is already written, and the ids of what it came
from, so any row can be traced back to its source text and prompt.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


def content_id(*parts: Any, length: int = 16) -> str:
    """A short hex digest of ``parts``; equal inputs give equal ids on every machine."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def stable_seed(*parts: Any) -> int:
    """A non-negative 63-bit seed fixed by ``parts`` on every machine (torch, numpy and random
    all accept it): derived seeds for data orders, masks and projections."""
    return int(content_id(*parts, length=16), 16) >> 1


def stable_uniform(*parts: Any) -> float:
    """A number in [0, 1) fixed by ``parts`` on every machine: a draw that no order, shard or
    process count can change."""
    return int(content_id(*parts, length=16), 16) / 16**16


def config_hash(config: Any) -> str:
    """The hash a manifest records for a resolved config (plain JSON-able data)."""
    return content_id(config, length=16)


@dataclass(frozen=True)
class SourceLocation:
    """Where a record was read from: enough for an error message or a trace back."""

    path: str
    line: int  # 1-based line for text formats, 1-based row for columnar ones

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Document:
    """One corpus text. ``id`` is the source's own id when it has one, else a hash of the text."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    location: SourceLocation | None = None

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["location"] = str(self.location) if self.location else None
        return row


# How a gold answer is compared:
#   number     a real number (GSM8K, SVAMP, ...): numeric equality within tolerance
#   expression LaTeX / symbolic math (MATH, Minerva, CARP): math-verify equivalence
#   choice     a multiple-choice letter (AQuA, SAT, MMLU-STEM): letters compared
#   text       anything else: normalised string equality
AnswerType = Literal["number", "expression", "choice", "text"]
ANSWER_TYPES: tuple[str, ...] = ("number", "expression", "choice", "text")


@dataclass
class BenchmarkRecord:
    """One benchmark problem in canonical form, whatever the source file looked like."""

    id: str  # stable within the benchmark, e.g. "gsm8k/test/17"
    benchmark: str
    question: str
    gold: str  # the gold final answer (a letter for choice benchmarks)
    answer_type: AnswerType
    choices: list[str] | None = None  # option texts, in letter order A, B, C, ...
    table: str | None = None  # TabMWP: the table as text, shown with the question
    subject: str | None = None  # MATH type / MMLU subject, for per-subject metrics
    level: str | None = None  # MATH level, for per-level metrics
    reference_solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
