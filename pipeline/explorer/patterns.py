"""Error patterns: why eval answers are wrong (by kind, and by similar wrong solutions), and why
a filter rejected what it rejected (by reason), each group with its count and examples."""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from data.dedup import MinHashLSH, signatures
from pipeline.explorer.index import DatasetIndex

EXAMPLES = 5
CLUSTER_LIMIT = 20_000  # wrong solutions clustered per request (the newest kinds of error show up well before)
CLUSTER_THRESHOLD = 0.5
_NUMBER_RE = re.compile(r"^-?[\d,]*\.?\d+(?:e[-+]?\d+)?%?$", re.IGNORECASE)
_FRACTION_RE = re.compile(r"^-?(?:\\[dt]?frac\{-?\d+\}\{\d+\}|\d+/\d+)$")


def eval_error_kind(record: dict[str, Any]) -> str | None:
    """The kind of a wrong eval answer (None for a right one): the first of timeout, code error,
    truncated, no answer, several boxed answers that applies; else wrong number (a number for a
    number), wrong form (another shape than the gold answer's) or wrong value."""
    from eval.extraction import boxed_contents

    if record.get("correct"):
        return None
    statuses = [e.get("status") for e in record.get("executions") or [] if isinstance(e, dict)]
    if record.get("verdict") == "timeout" or "timeout" in statuses:
        return "timeout"
    if statuses and statuses[-1] != "ok":
        return "code error"
    if record.get("finish_reason") == "length":
        return "truncated"
    extracted = record.get("extracted")
    if extracted is None or record.get("verdict") == "no_answer":
        return "no answer"
    completion = record.get("completion") or ""
    if len(set(boxed_contents(completion))) > 1:
        return "several boxed answers"
    gold_shape, answer_shape = shape(record.get("gold")), shape(extracted)
    if gold_shape == answer_shape == "number":
        return "wrong number"
    return "wrong form" if gold_shape != answer_shape else "wrong value"


def shape(answer) -> str:
    """What kind of answer this is written as: number, equation, tuple, text or expression.
    A wrong answer of another shape than the gold one ("x = 4" for "4", a number for an
    interval) is a form error; of the same shape, a wrong value."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return "number"
    text = re.sub(r"\\(?:left|right|!|,|;)|\$|\s", "", str(answer))
    if _NUMBER_RE.match(text) or _FRACTION_RE.match(text):
        return "number"
    if re.search(r"(?<![<>!])=", text):
        return "equation"
    if text[:1] in "([" and "," in text:
        return "tuple"
    if text.startswith("\\text") or re.fullmatch(r"[A-Za-z]{2,}", text):
        return "text"
    return "expression"


def derive_columns(kind: str, manifest: dict[str, Any] | None = None):
    """The extra columns a dataset kind's index keeps (see ``DatasetIndex(derive=...)``): an
    eval record's error kind, whether it has an answer, and its run's setting (nl, tool, ...),
    which the manifest holds once for the whole run."""
    if kind == "eval":
        setting = (manifest or {}).get("config", {}).get("setting")
        return lambda record, path: {"error_kind": eval_error_kind(record), "setting": setting,
                                     "no_answer": record.get("extracted") is None}
    if kind in ("synth_filter", "distill"):
        return lambda record, path: {"outcome": "rejected" if path.name.startswith("rejects-") else "kept"}
    return None


def groups(index: DatasetIndex, column: str, where: str = "TRUE", params: list | None = None) -> list[dict[str, Any]]:
    """Each value of ``column`` (most frequent first) with its count and a few examples."""
    cur = index.cursor()
    rows = cur.execute(f'SELECT "{column}", count(*) AS n FROM records WHERE {where} AND "{column}" IS NOT NULL '
                       f'GROUP BY 1 ORDER BY n DESC, 1', params or []).fetchall()
    out = []
    for value, count in rows:
        examples = cur.execute(f'SELECT _row, preview FROM records WHERE {where} AND "{column}" = ? ORDER BY _row '
                               f'LIMIT {EXAMPLES}', [*(params or []), value]).fetchall()
        out.append({"name": value, "count": count,
                    "examples": [{"row": row, "summary": preview or ""} for row, preview in examples]})
    return out


def error_report(index: DatasetIndex) -> dict[str, Any]:
    kind = index.dataset.kind
    if kind == "eval" and "error_kind" in index.types:
        return {"kind": "eval", "groups": groups(index, "error_kind"), "clusters": wrong_clusters(index)}
    if "reject_reason" in index.types:
        return {"kind": "filter", "groups": groups(index, "reject_reason"), "clusters": []}
    return {"kind": kind, "groups": [], "clusters": [],
            "note": f"{index.dataset.name}: no verdicts or reject reasons to group"}


def wrong_clusters(index: DatasetIndex, limit: int = CLUSTER_LIMIT) -> list[dict[str, Any]]:
    """Groups of near-identical wrong solutions (MinHash LSH at Jaccard >= 0.5 on word 5-grams):
    a model repeating one mistake shows up as one large group. Singletons are left out."""
    rows = index.cursor().execute(
        "SELECT _row FROM records WHERE error_kind IS NOT NULL ORDER BY _row LIMIT ?", [limit]).fetchall()
    row_ids = [r[0] for r in rows]
    texts = [(record.get("completion") or "") for record in index.records(row_ids)]
    if len(texts) < 2:
        return []
    sigs = signatures(texts, num_perm=64, ngram=3)
    lsh = MinHashLSH(threshold=CLUSTER_THRESHOLD, num_perm=64)
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, sig in enumerate(sigs):
        for j in lsh.query(sig):
            if np.mean(sigs[j] == sig) >= CLUSTER_THRESHOLD:
                parent[find(i)] = find(j)
        lsh.insert(i, sig)
    members: dict[int, list[int]] = {}
    for i in range(len(texts)):
        members.setdefault(find(i), []).append(i)
    clusters = sorted((m for m in members.values() if len(m) > 1), key=len, reverse=True)
    previews = dict(index.cursor().execute("SELECT _row, preview FROM records WHERE error_kind IS NOT NULL "
                                           "ORDER BY _row LIMIT ?", [limit]).fetchall())
    return [{"size": len(m), "examples": [{"row": row_ids[i], "summary": _summary(texts[i], previews.get(row_ids[i]))}
                                          for i in m[:EXAMPLES]]} for m in clusters[:50]]


def _summary(completion: str, preview: str | None) -> str:
    text = " ".join(completion.split())
    return (text[:160] or preview or "")
