"""Eval runs side by side, per problem: samples, right / wrong / no-answer counts, the majority
answer and whether it is right (maj@k, eval's own rule in ``eval.metrics``), and pass@k; and
per benchmark / subject / level the accuracy of each run and the difference to the first."""
from __future__ import annotations

from typing import Any

from eval.metrics import Problem, Sample
from pipeline.explorer.index import DatasetIndex
from pipeline.explorer.queries import MAX_LIMIT, QueryError

SHOWS = {
    "all": lambda right: True,
    "right_a_wrong_b": lambda right: right[0] and not right[1],
    "wrong_a_right_b": lambda right: not right[0] and right[1],
    "differ": lambda right: len(set(right)) > 1,
    "all_wrong": lambda right: not any(right),
    "all_right": lambda right: all(right),
}
NEEDED = ("benchmark", "problem_id", "correct")


def per_problem(index: DatasetIndex) -> dict[tuple[str, str], dict[str, Any]]:
    missing = [c for c in NEEDED if c not in index.types]
    if missing:
        raise QueryError(f"{index.dataset.name}: not an eval run (no {', '.join(missing)} column)")
    optional = [c if c in index.types else "NULL" for c in ("extracted", "sample_index", "subject", "level", "gold")]
    rows = index.cursor().execute(
        f'SELECT benchmark, problem_id, correct, _row, {", ".join(q if q == "NULL" else chr(34) + q + chr(34) for q in optional)} '
        "FROM records ORDER BY benchmark, problem_id, sample_index NULLS LAST, _row").fetchall()
    problems: dict[tuple[str, str], dict[str, Any]] = {}
    for benchmark, problem_id, correct, row, extracted, _, subject, level, gold in rows:
        entry = problems.setdefault((benchmark, problem_id), {
            "problem": Problem(str(problem_id)), "rows": [], "subject": subject, "level": level, "gold": gold})
        entry["problem"].samples.append(Sample(extracted, bool(correct)))
        entry["rows"].append(row)
    return problems


def summarise(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    samples = entry["problem"].samples
    right = sum(s.correct for s in samples)
    no_answer = sum(s.answer is None for s in samples)
    votes: dict[str, int] = {}
    for s in samples:
        if s.answer is not None:
            votes[s.answer] = votes.get(s.answer, 0) + 1
    majority = max(votes, key=votes.get) if votes else None
    return {"samples": len(samples), "correct": right, "wrong": len(samples) - right - no_answer,
            "no_answer": no_answer, "majority": majority,
            "majority_correct": entry["problem"].majority_correct(len(samples)), "pass": right > 0,
            "row": entry["rows"][0]}


def compare(runs: list[DatasetIndex], params: dict[str, str]) -> dict[str, Any]:
    if len(runs) < 2:
        raise QueryError("compare: pick at least two eval runs")
    show = params.get("show") or "all"
    if show not in SHOWS:
        raise QueryError(f"show: one of {', '.join(SHOWS)}")
    benchmark = params.get("benchmark") or None
    try:
        offset, limit = int(params.get("offset") or 0), int(params.get("limit") or 50)
    except ValueError as err:
        raise QueryError(f"bad query parameter ({err})") from None
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"offset must be >= 0 and limit 1..{MAX_LIMIT}")
    tables = [per_problem(run) for run in runs]
    keys = sorted(set().union(*tables), key=lambda k: (str(k[0]), _natural(k[1])))
    keys = [k for k in keys if all(k in t for t in tables)]  # problems every run answered
    if benchmark:
        keys = [k for k in keys if k[0] == benchmark]
    cells = {k: [summarise(t[k]) for t in tables] for k in keys}
    chosen = [k for k in keys if SHOWS[show]([c["majority_correct"] for c in cells[k]])]
    problems = []
    for key in chosen[offset : offset + limit]:
        first = tables[0][key]
        problems.append({"benchmark": key[0], "problem_id": key[1], "gold": first["gold"],
                         "subject": first["subject"], "level": first["level"], "runs": cells[key]})
    return {"runs": [run.dataset.name for run in runs], "summary": summary_rows(keys, tables, cells),
            "total": len(chosen), "problems": problems,
            "benchmarks": sorted({str(k[0]) for t in tables for k in t})}


def summary_rows(keys, tables, cells) -> list[dict[str, Any]]:
    groups: dict[tuple, list] = {}
    for key in keys:
        first = tables[0][key]
        groups.setdefault((key[0], None, None), []).append(key)  # the benchmark, then each subject and level
        if first["subject"] is not None:
            groups.setdefault((key[0], first["subject"], None), []).append(key)
        if first["level"] is not None:
            groups.setdefault((key[0], None, first["level"]), []).append(key)
    rows = []
    order = lambda g: (str(g[0][0]), g[0][1] is not None or g[0][2] is not None, g[0][2] is not None,  # noqa: E731
                       str(g[0][1]), str(g[0][2]))
    for (benchmark, subject, level), members in sorted(groups.items(), key=order):
        runs = len(tables)
        accuracy = [100.0 * sum(cells[k][r]["majority_correct"] for k in members) / len(members) for r in range(runs)]
        passed = [100.0 * sum(cells[k][r]["pass"] for k in members) / len(members) for r in range(runs)]
        rows.append({"benchmark": benchmark, "subject": subject, "level": level, "problems": len(members),
                     "accuracy": [round(a, 2) for a in accuracy], "pass_at_k": [round(p, 2) for p in passed],
                     "diff": [round(a - accuracy[0], 2) for a in accuracy[1:]]})
    return rows


def _natural(problem_id: Any) -> tuple:
    """gsm8k/test/10 after gsm8k/test/9."""
    text = str(problem_id)
    head, _, tail = text.rpartition("/")
    return (head, int(tail)) if tail.isdigit() else (text, -1)
