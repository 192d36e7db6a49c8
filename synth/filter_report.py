"""What ``synth filter`` kept and why it dropped the rest, in a form a person reads at once.

``report.json`` / ``report.md`` in the output folder (written when the dataset is): records
kept and rejected by reason, by variant and by stage, and a few examples of each reason, so a
rule that eats good data shows on the first run. :func:`write_audit` (``mathsynth synth audit``)
exports N random rejects per reason as one readable file for a hand check.

Both stream the output's part and reject files once; examples are the records of each reason
with the smallest hash of their id (a spread sample, the same on every run).
"""
from __future__ import annotations

import heapq
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

from data.jsonl import iter_json_objects
from data.records import content_id
from data.storage import atomic_write_text

KEPT = "kept"
PROBLEM_CHARS, SOLUTION_CHARS = 700, 700  # report excerpts; the audit file shows records whole


def output_records(folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(reason or "kept", record) for every record of a finished synth filter output."""
    for part in sorted(folder.glob("part-*.jsonl")):
        for _, row in iter_json_objects(part):
            yield KEPT, row
    for part in sorted(folder.glob("rejects-*.jsonl")):
        for _, row in iter_json_objects(part):
            yield row.get("reject_reason") or "unknown", row


def build_report(folder: Path, examples_per_reason: int = 3) -> dict[str, Any]:
    by_reason: Counter[str] = Counter()
    by_variant: dict[str, Counter[str]] = defaultdict(Counter)
    by_stage: dict[str, Counter[str]] = defaultdict(Counter)
    examples: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for reason, row in output_records(folder):
        by_reason[reason] += 1
        by_variant[str(row.get("variant"))][reason] += 1
        by_stage[str(row.get("stage"))][reason] += 1
        if reason == KEPT:
            continue
        # heapq keeps the k smallest keys: negate so the heap top is the largest kept so far
        key = -int(content_id(row.get("id"), length=12), 16)
        heap = examples[reason]
        item = (key, str(row.get("id")), excerpt(row))
        if len(heap) < examples_per_reason:
            heapq.heappush(heap, item)
        elif key > heap[0][0]:
            heapq.heapreplace(heap, item)
    total = sum(by_reason.values())
    return {
        "records": total, "kept": by_reason.get(KEPT, 0),
        "rejected_by_reason": dict(sorted(((k, v) for k, v in by_reason.items() if k != KEPT),
                                          key=lambda kv: (-kv[1], kv[0]))),
        "by_variant": {k: dict(v) for k, v in sorted(by_variant.items())},
        "by_stage": {k: dict(v) for k, v in sorted(by_stage.items())},
        "examples": {reason: [row for _, _, row in sorted(heap, reverse=True)] for reason, heap in sorted(examples.items())},
    }


def excerpt(row: dict[str, Any], problem_chars: int = PROBLEM_CHARS, solution_chars: int = SOLUTION_CHARS) -> dict[str, Any]:
    """What a reader needs to judge a decision: the problem, the end of the solution (where
    the answer is), the answer, and the filter's details."""
    solution = row.get("solution") or row.get("completion") or row.get("text") or ""
    return {
        "id": row.get("id"), "variant": row.get("variant"), "stage": row.get("stage"),
        "reason": row.get("reject_reason"), "final_answer": row.get("final_answer"),
        "problem": _clip(row.get("problem") or "", problem_chars, head=True),
        "solution": _clip(solution, solution_chars, head=False),
        "details": {k: v for k, v in {**(row.get("filter_details") or {}), "duplicate_of": row.get("duplicate_of")}.items()
                    if v is not None},
    }


def _clip(text: str, limit: int, head: bool) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    return text[:limit] + " [...]" if head else "[...] " + text[-limit:]


def write_report(folder: Path, examples_per_reason: int = 3) -> dict[str, Any]:
    report = build_report(folder, examples_per_reason)
    atomic_write_text(folder / "report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(folder / "report.md", render_report(report))
    return report


def report_summary(folder: Path) -> str:
    """A few lines for the terminal: kept per variant and stage, the biggest reasons, the file."""
    path = folder / "report.json"
    if not path.is_file():
        return ""
    report = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for title, table in (("variant", report["by_variant"]), ("stage", report["by_stage"])):
        cells = []
        for name, counts in table.items():
            total = sum(counts.values())
            top = ", ".join(f"{k} {v}" for k, v in Counter({k: v for k, v in counts.items() if k != KEPT}).most_common(2))
            cells.append(f"{name}: kept {counts.get(KEPT, 0)}/{total}" + (f" ({top})" if top else ""))
        lines.append(f"  by {title}: " + "; ".join(cells))
    lines.append(f"  examples of each reason: {folder / 'report.md'}; a hand-check sample: mathsynth synth audit "
                 f"--input {folder}")
    return "\n".join(lines)


def render_report(report: dict[str, Any]) -> str:
    reasons = [KEPT, *report["rejected_by_reason"]]
    lines = ["# synth filter report", "",
             f"{report['kept']} of {report['records']} records kept.", ""]
    for title, table in (("variant", report["by_variant"]), ("stage", report["by_stage"])):
        lines += [f"## By {title}", "", "| " + " | ".join([title, "records", *reasons]) + " |",
                  "|" + "---|" * (len(reasons) + 2)]
        for name, counts in table.items():
            lines.append("| " + " | ".join([name, str(sum(counts.values())), *(str(counts.get(r, 0)) for r in reasons)])
                         + " |")
        lines.append("")
    lines += ["## Examples of each reason", ""]
    for reason, rows in report["examples"].items():
        lines += [f"### {reason} ({report['rejected_by_reason'].get(reason, 0)})", ""]
        for row in rows:
            lines += render_record(row)
    return "\n".join(lines) + "\n"


def render_record(row: dict[str, Any]) -> list[str]:
    fence = "~~~~"  # solutions hold ``` fences of their own
    return [f"#### {row.get('id')} ({row.get('variant')}, stage {row.get('stage')})", "",
            f"- reason: `{row.get('reason')}`; final answer: `{row.get('final_answer')}`",
            f"- details: `{json.dumps(row.get('details') or {}, ensure_ascii=False)[:600]}`", "",
            "Problem:", "", fence, row.get("problem") or "", fence, "", "Solution:", "", fence,
            row.get("solution") or "", fence, ""]


def write_audit(folder: Path, destination: Path, per_reason: int, seed: int = 0,
                reasons: list[str] | None = None) -> dict[str, int]:
    """``per_reason`` random rejects of each reason (reservoir sampling, seeded), whole, as one
    Markdown file with a verdict line to fill in per record. Returns the count written per reason."""
    rng = random.Random(seed)
    seen: Counter[str] = Counter()
    chosen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for reason, row in output_records(folder):
        if reason == KEPT and (reasons is None or KEPT not in reasons):
            continue
        if reasons is not None and reason not in reasons:
            continue
        seen[reason] += 1
        sample = chosen[reason]
        if len(sample) < per_reason:
            sample.append(row)
        elif (slot := rng.randrange(seen[reason])) < per_reason:
            sample[slot] = row
    lines = ["# synth filter audit", "", f"Output: `{folder}`; {per_reason} random records per reason (seed {seed}). "
             "For each, write the verdict: right (the rule is right about it) or wrong.", ""]
    for reason in sorted(chosen):
        lines += [f"## {reason}: {len(chosen[reason])} of {seen[reason]}", ""]
        for row in chosen[reason]:
            lines += render_record(excerpt(row, 0, 0)) + ["Verdict: ", ""]
    atomic_write_text(destination, "\n".join(lines) + "\n")
    return {reason: len(rows) for reason, rows in sorted(chosen.items())}
