"""Accuracy, pass@k and maj@k from graded samples, overall and per group.

Every number is computed from per-row verdicts that are kept on disk, so any figure in a
report can be traced to the rows that produced it.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from math import comb
from typing import Any, Iterable


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which ``correct`` are right (Chen et al., 2021):
    the chance that at least one of k samples drawn without replacement is right."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - correct < k:
        return 1.0
    return 1.0 - comb(n - correct, k) / comb(n, k)


@dataclass
class Sample:
    """One graded completion of one problem."""

    answer: str | None  # the extracted answer, normalised for voting; None if none was found
    correct: bool


@dataclass
class Problem:
    id: str
    samples: list[Sample] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # e.g. {"subject": "Algebra", "level": "Level 5"}

    def majority_correct(self, k: int) -> bool:
        """maj@k: the most frequent answer among the first k samples (ties go to the answer
        seen first) decides; samples without an answer do not vote."""
        votes = Counter()
        first_seen: dict[str, int] = {}
        verdict: dict[str, bool] = {}
        for index, sample in enumerate(self.samples[:k]):
            if sample.answer is None:
                continue
            votes[sample.answer] += 1
            first_seen.setdefault(sample.answer, index)
            verdict.setdefault(sample.answer, sample.correct)
        if not votes:
            return False
        winner = max(votes, key=lambda a: (votes[a], -first_seen[a]))
        return verdict[winner]


def summarise(problems: Iterable[Problem], ks: Iterable[int] = (1,)) -> dict[str, Any]:
    """accuracy (mean over problems of the fraction of correct samples, in percent),
    pass@k and maj@k for each k the sample count allows."""
    problems = list(problems)
    if not problems:
        return {"problems": 0}
    n = min(len(p.samples) for p in problems)
    result: dict[str, Any] = {
        "problems": len(problems),
        "samples_per_problem": n,
        "correct": sum(s.correct for p in problems for s in p.samples[:n]),
        "accuracy": 100.0 * sum(sum(s.correct for s in p.samples[:n]) / n for p in problems) / len(problems),
    }
    for k in sorted(set(ks)):
        if k > n:
            continue
        result[f"pass@{k}"] = 100.0 * sum(pass_at_k(n, sum(s.correct for s in p.samples[:n]), k) for p in problems) / len(problems)
        result[f"maj@{k}"] = 100.0 * sum(p.majority_correct(k) for p in problems) / len(problems)
    return result


def summarise_by_group(problems: Iterable[Problem], ks: Iterable[int] = (1,)) -> dict[str, dict[str, Any]]:
    """``{"subject": {"Algebra": {...}, ...}, "level": {...}}`` for the groups problems carry."""
    buckets: dict[str, dict[str, list[Problem]]] = defaultdict(lambda: defaultdict(list))
    for problem in problems:
        for group, value in problem.groups.items():
            if value is not None:
                buckets[group][str(value)].append(problem)
    return {
        group: {value: summarise(members, ks) for value, members in sorted(values.items())}
        for group, values in sorted(buckets.items())
    }


def default_ks(n: int) -> list[int]:
    """1, then powers of two up to n, and n itself: the usual pass@k / maj@k columns."""
    ks, k = [1], 2
    while k <= n:
        ks.append(k)
        k *= 2
    if n not in ks:
        ks.append(n)
    return ks
