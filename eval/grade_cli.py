"""``mathsynth eval grade --pairs FILE.jsonl``: one JSON verdict per {gold, pred} row.

Both fields may be free text (a whole solution) or bare answers; numbers are taken as their
JSON text. A row may carry its own ``answer_type`` and ``choices``. Every row is checked
before any is graded, so a bad file writes nothing and stops with ``file:line: why``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from data.errors import ConfigError, InputError
from data.jsonl import iter_json_objects
from data.records import ANSWER_TYPES, AnswerType
from eval.grading import Grader

BATCH = 4096  # rows per grade_many call: big enough to batch IPC, small enough to stream output


def _text(value: Any, field: str, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{where}: field {field!r} must be a string or a number, got {type(value).__name__}")
    return value if isinstance(value, str) else json.dumps(value)


def read_pairs(path: str | Path, gold_field: str = "gold", pred_field: str = "pred", answer_type: str = "expression") -> list[tuple]:
    """(gold, pred, answer_type, choices) per row; InputError on the first bad line."""
    if answer_type not in ANSWER_TYPES:
        raise ConfigError(f"answer_type {answer_type!r} is not one of {', '.join(ANSWER_TYPES)}")
    rows = []
    for line_no, row in iter_json_objects(path):
        where = f"{path}:{line_no}"
        for field in (gold_field, pred_field):
            if field not in row:
                raise InputError(f"{where}: missing field {field!r}")
        kind = row.get("answer_type", answer_type)
        if kind not in ANSWER_TYPES:
            raise InputError(f"{where}: answer_type {kind!r} is not one of {', '.join(ANSWER_TYPES)}")
        choices = row.get("choices")
        if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            raise InputError(f"{where}: 'choices' must be a list of strings")
        gold = _text(row[gold_field], gold_field, where)
        pred = _text(row[pred_field], pred_field, where, optional=True)
        rows.append((gold, pred, kind, choices))
    return rows


def grade_pairs(
    path: str | Path,
    out: TextIO = sys.stdout,
    *,
    gold_field: str = "gold",
    pred_field: str = "pred",
    answer_type: AnswerType | str = "expression",
    timeout_s: float = 5.0,
) -> int:
    """Grade every row of ``path`` and write one JSON line per row to ``out``; returns the row count."""
    rows = read_pairs(path, gold_field, pred_field, answer_type)
    with Grader() as grader:
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            for (gold, pred, _, _), verdict in zip(batch, grader.grade_many(batch, timeout_s=timeout_s)):
                record = {
                    "equal": verdict.equal,
                    "gold": gold,
                    "pred": pred,
                    "gold_extracted": verdict.gold_extracted,
                    "pred_extracted": verdict.pred_extracted,
                    "reason": verdict.reason,
                }
                if verdict.detail:
                    record["detail"] = verdict.detail
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    return len(rows)
