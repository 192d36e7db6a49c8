"""The canonical benchmark record and answer types every eval module shares."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
