"""``mathsynth eval score``: grade completions produced elsewhere against a benchmark.

The benchmark is a shipped name (``gsm8k``) or the path of a custom benchmark YAML (the schema
of ``configs/benchmarks/example_custom.yaml``; its relative ``path`` is read from the YAML's
folder). Rows are matched to problems by an id field (a record id such as ``gsm8k/test/17``, or
the problem's 0-based position) or, by default, by order. Every prediction is graded with the
same extraction and grader as ``eval run``, so numbers from other tools are comparable.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.errors import InputError
from data.jsonl import iter_json_objects
from data.records import BenchmarkRecord

if TYPE_CHECKING:  # the registry loads lazily, as the rest of score does
    from data.benchmarks import BenchmarkSpec


def read_predictions(path: Path, field: str) -> list[dict[str, Any]]:
    rows = []
    for line_no, row in iter_json_objects(path):
        if field not in row:
            raise InputError(f"{path}:{line_no}: no field {field!r}")
        rows.append(row)
    return rows


def match_rows(records: list[BenchmarkRecord], rows: list[dict[str, Any]], id_field: str | None, path: Path):
    if id_field is None:
        if len(rows) != len(records):
            raise InputError(f"{path}: {len(rows)} predictions for {len(records)} problems; match by --id-field or give one per problem")
        return list(zip(records, rows))
    index = {r.id: r for r in records} | {str(i): r for i, r in enumerate(records)}
    pairs = []
    for number, row in enumerate(rows, start=1):
        key = str(row.get(id_field))
        if key not in index:
            raise InputError(f"{path}: row {number}: {id_field}={key!r} matches no problem")
        pairs.append((index[key], row))
    return pairs


def benchmark_spec(benchmark: str) -> BenchmarkSpec:
    """A benchmark by name, or a custom one from its YAML file (not registered: scoring one
    file must not change what names mean elsewhere in the process)."""
    from data.benchmarks import BENCHMARKS, get_spec, load_benchmark_config

    if benchmark.endswith((".yaml", ".yml")) or (benchmark not in BENCHMARKS and Path(benchmark).is_file()):
        return load_benchmark_config(benchmark, register=False)
    return get_spec(benchmark)


def score(benchmark: str, predictions: Path, field: str, *, id_field: str | None = None,
          timeout_s: float = 5.0) -> tuple[list[dict[str, Any]], str]:
    from data.benchmarks import load_benchmark
    from eval.report import accuracy_line
    from eval.run import Grading, extract

    spec = benchmark_spec(benchmark)
    records = load_benchmark(spec)
    pairs = match_rows(records, read_predictions(predictions, field), id_field, predictions)
    grading = Grading(timeout_s)
    try:
        answers = [(record, extract(record, row[field] if isinstance(row[field], str) else str(row[field])))
                   for record, row in pairs]
        graded = [{"problem_id": record.id, "gold": record.gold, **verdict}
                  for (record, _), verdict in zip(answers, grading.grade(answers))]
    finally:
        grading.close()
    return graded, accuracy_line(spec.name, graded)
