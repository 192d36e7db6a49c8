"""One report per eval run: ``report.json`` and ``report.md`` beside the rows they come from."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from data.errors import InputError
from data.storage import (
    atomic_write_json,
    atomic_write_text,
    iter_records,
    read_manifest,
)
from eval.metrics import Problem, Sample, default_ks, summarise, summarise_by_group

GROUP_FIELDS = ("subject", "level")


def problems_by_benchmark(rows: Iterable[dict[str, Any]]) -> dict[str, list[Problem]]:
    """Rows (one per sample) grouped into problems, samples in sample order."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["benchmark"]][row["problem_id"]].append(row)
    result: dict[str, list[Problem]] = {}
    for benchmark, problems in sorted(grouped.items()):
        result[benchmark] = []
        for problem_id, samples in sorted(problems.items()):
            samples.sort(key=lambda r: r["sample_index"])
            first = samples[0]
            result[benchmark].append(Problem(
                id=problem_id,
                samples=[Sample(answer=_vote_key(r.get("extracted")), correct=bool(r["correct"])) for r in samples],
                groups={g: first.get(g) for g in GROUP_FIELDS if first.get(g) is not None},
            ))
    return result


def _vote_key(answer: str | None) -> str | None:
    """Answers vote by their text with spacing removed, so "1/2" and "1 / 2" count together."""
    return None if answer is None else "".join(answer.split())


def build_report(rows: Iterable[dict[str, Any]], *, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    benchmarks = {}
    for name, problems in problems_by_benchmark(rows).items():
        n = min(len(p.samples) for p in problems)
        ks = default_ks(n)
        benchmarks[name] = {"overall": summarise(problems, ks), "by_group": summarise_by_group(problems, ks)}
    return {**(meta or {}), "benchmarks": benchmarks}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report.get('model', '')} ({report.get('setting', '')})", ""]
    columns = sorted({k for b in report["benchmarks"].values() for k in b["overall"] if "@" in k}, key=_metric_order)
    lines.append("| benchmark | problems | samples | accuracy | " + " | ".join(columns) + " |")
    lines.append("|---|---|---|---|" + "---|" * len(columns))
    for name, entry in report["benchmarks"].items():
        o = entry["overall"]
        cells = [f"{o[c]:.2f}" if c in o else "" for c in columns]
        lines.append(f"| {name} | {o['problems']} | {o['samples_per_problem']} | {o['accuracy']:.2f} | " + " | ".join(cells) + " |")
    for name, entry in report["benchmarks"].items():
        for group, values in entry["by_group"].items():
            lines += ["", f"## {name} by {group}", "", "| " + group + " | problems | accuracy |", "|---|---|---|"]
            lines += [f"| {value} | {m['problems']} | {m['accuracy']:.2f} |" for value, m in values.items()]
    return "\n".join(lines) + "\n"


def _metric_order(name: str) -> tuple[str, int]:
    kind, _, k = name.partition("@")
    return (kind, int(k))


def write_report(folder: Path, *, require_complete: bool = True) -> dict[str, Any]:
    """Report of a complete eval output folder, written atomically beside its rows.
    ``require_complete=False``: the runner's finish step, once every shard is sealed."""
    manifest = _eval_manifest(folder)
    config = manifest["config"]
    meta = {
        "model": config["engine"]["model"],
        "engine": config["engine"]["kind"],
        "setting": config["setting"],
        "prompt": config["prompt"],
        "n": config["n"],
        "config_hash": manifest["config_hash"],
    }
    report = build_report(iter_records(folder, require_complete=require_complete), meta=meta)
    atomic_write_json(folder / "report.json", report)
    atomic_write_text(folder / "report.md", markdown(report))
    return report


def _eval_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of an eval output folder; any other folder (or none) is a one-line error."""
    manifest = read_manifest(folder)
    if manifest.get("stage") != "eval":
        raise InputError(f"{folder}: holds a {manifest.get('stage')} output, not an eval run")
    return manifest


def accuracy_line(benchmark: str, rows: list[dict[str, Any]]) -> str:
    """``gsm8k accuracy 59.74 (788/1319)``: the last line `eval score` prints."""
    correct = sum(bool(r["correct"]) for r in rows)
    return f"{benchmark} accuracy {100.0 * correct / max(len(rows), 1):.2f} ({correct}/{len(rows)})"
