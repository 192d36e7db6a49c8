"""What ``mathsynth rft`` keeps of one problem's graded samples: pure functions, no engine.

- :func:`majority_label`: a pseudo-label when the problem has no reference answer (the most
  frequent extracted answer, if it is the only one at the top).
- :func:`select_diverse`: the correct solutions worth training on: exact duplicates (after
  normalising case and whitespace) and near duplicates (the same sequence of equations, or a
  ``difflib`` ratio at or above the threshold against a solution already kept) are dropped, and
  at most ``limit`` are kept, in sampling order.
- :func:`preference_pairs`: (chosen, rejected) = (a kept correct solution, a distinct incorrect
  solution of the same problem), each rejected solution used once.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any, Sequence

_SPACE = re.compile(r"\s+")
# "3 * 4 = 12", "16 - 3 - 4 = 9", "$x+2=5$": an arithmetic step; the sequence of them is a
# solution's skeleton, so two texts that compute the same things in the same order are one.
_EQUATION = re.compile(r"[\w.$\\{}()]+(?:\s*[-+*/×÷^]\s*[\w.$\\{}()]+)+\s*=\s*[\w.$\\{}()-]+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def equations(text: str) -> tuple[str, ...]:
    return tuple(_SPACE.sub("", match.group(0)).strip("$") for match in _EQUATION.finditer(text))


def answer_key(answer: str | None) -> str | None:
    """Extracted answers that count as the same vote ("18", "18.0", " 18 ")."""
    if answer is None:
        return None
    text = _SPACE.sub("", answer).rstrip(".")
    try:
        number = float(text.replace(",", ""))
        return repr(int(number)) if number.is_integer() else repr(number)
    except ValueError:
        return text


def majority_label(answers: Sequence[str | None], min_votes: int) -> tuple[str | None, int]:
    """(label, votes): the most frequent answer when it has ``min_votes`` and no tie, else
    (None, votes of the top answer)."""
    keys = [answer_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, 0
    (top, votes), *rest = counts.most_common(2)
    if votes < min_votes or (rest and rest[0][1] == votes):
        return None, votes
    return next(a for a, k in zip(answers, keys) if k == top), votes


@dataclass
class Selection:
    kept: list[int] = field(default_factory=list)  # indices into the candidates, in order
    dropped: Counter = field(default_factory=Counter)  # reason -> count: duplicate, similar, over_limit


def select_diverse(texts: Sequence[str], limit: int, similarity: float) -> Selection:
    """Which of ``texts`` (correct solutions, in sampling order) to keep. ``similarity`` >= 1
    turns the near-duplicate test off (exact duplicates still go)."""
    selection = Selection()
    seen: set[str] = set()
    kept: list[tuple[str, tuple[str, ...]]] = []
    for index, text in enumerate(texts):
        norm = normalise(text)
        if norm in seen:
            selection.dropped["duplicate"] += 1
            continue
        seen.add(norm)
        if len(selection.kept) >= limit:
            selection.dropped["over_limit"] += 1
            continue
        steps = equations(norm)
        if similarity < 1 and any(_similar(norm, steps, other, other_steps, similarity) for other, other_steps in kept):
            selection.dropped["similar"] += 1
            continue
        kept.append((norm, steps))
        selection.kept.append(index)
    return selection


def _similar(a: str, a_steps: tuple[str, ...], b: str, b_steps: tuple[str, ...], threshold: float) -> bool:
    if a_steps and a_steps == b_steps:
        return True
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    # the cheap upper bounds first: most pairs of different solutions stop here
    return matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold and matcher.ratio() >= threshold


def preference_pairs(chosen: Sequence[dict[str, Any]], wrong: Sequence[dict[str, Any]],
                     limit: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Up to ``limit`` pairs: each distinct wrong solution once, against the kept correct
    solutions in turn."""
    if not chosen:
        return []
    seen: set[str] = set()
    rejected = []
    for sample in wrong:
        norm = normalise(sample["completion"])
        if norm and norm not in seen:
            seen.add(norm)
            rejected.append(sample)
    return [(chosen[i % len(chosen)], bad) for i, bad in enumerate(rejected[:limit])]
