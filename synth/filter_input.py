"""What ``synth filter`` reads: a ``synth generate`` output, or any dataset of problems.

A ``synth generate`` folder is read as it was written (its records carry problem, solution,
variant and the window they came from), once every shard of it is sealed.

Anything else named by ``input`` (a file, a folder, a glob: JSONL plain/.zst/.gz, parquet, a
``datasets.save_to_disk`` folder; see :mod:`data.corpus`) is a dataset of problems, so an
existing synthetic set (JiuZhang3.0's released corpus, OpenMathInstruct) goes through the same
filters. A row gives its problem and solution either as two fields (``rows.problem_field`` /
``rows.solution_field``) or as one text in the JiuZhang3.0 layout (``## Question`` then ``##
Solution`` or ``## Code Solution``), parsed by :func:`data.stage_prompts.parsing.parse_completion`.
Its variant is ``rows.variant_field`` when that holds "cot" or "tool", else the solution
header's (``## Code Solution`` is tool), else "tool" when the solution holds a python block.
Its id is ``rows.id_field`` when present, else a hash of its content (a repeat of the same
content in one file gets ``#2``, ``#3``, ...: an exact copy is dedup's to drop, not lost as an
already-written id on resume). Each file is one input part, owned by shard ``j mod N``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from data.config_base import StrictConfig, operational
from data.corpus import CorpusStats, iter_rows, resolve_sources
from data.errors import InputError
from data.jsonl import iter_json_objects
from data.records import content_id
from data.stage_prompts.parsing import parse_completion
from data.storage import part_files, read_manifest
from data.text import code_blocks
from synth.filters import wrong_field_type
from synth.text_format import pretraining_text

VARIANTS = ("cot", "tool")


class RowFields(StrictConfig):
    """How the rows of a dataset that is not a ``synth generate`` output are read."""

    text_field: str = "text"
    problem_field: str = "problem"
    solution_field: str = "solution"
    id_field: str | None = "id"
    variant_field: str = "variant"
    stage_field: str = "stage"
    policy: Literal["fail", "skip"] = operational("fail", description="a bad row: stop with file:line, or skip it")


@dataclass(frozen=True)
class InputPart:
    path: Path
    stem: str  # names the part's work files; stable across runs
    generated: bool  # a synth generate part, or a file of some other dataset


def input_parts(source: str) -> list[InputPart]:
    """The parts ``input`` names: a finished ``synth generate`` output's part files, or the files
    of any other dataset."""
    folder = Path(source)
    if folder.is_dir() and (folder / "manifest.json").is_file():
        upstream = read_manifest(folder)
        if upstream.get("stage") != "synth_generate":
            raise InputError(f"input: {folder} is a {upstream.get('stage')} output; synth filter reads a synth "
                             "generate output or a dataset of problems (files with text or problem/solution)")
        if not upstream.get("complete"):
            raise InputError(f"input: {folder}: not every shard is sealed yet; finish synth generate first")
        return [InputPart(part, part.name.split(".")[0], True) for part in part_files(folder)]
    try:
        files = resolve_sources(source)
    except InputError as err:
        raise InputError(f"input: {err}") from None
    return [InputPart(Path(file), f"input-{index:05d}", False) for index, file in enumerate(files)]


def read_part(part: InputPart, fields: RowFields) -> Iterator[dict[str, Any]]:
    """The records of one part, each a dict the filters read (problem, solution, variant, ...)."""
    if part.generated:
        yield from read_records(part.path)
        return
    stats = CorpusStats()
    repeats: dict[str, int] = {}
    for location, row in iter_rows(str(part.path), policy=fields.policy, stats=stats):
        try:
            record = foreign_record(row, fields)
        except ValueError as err:
            if fields.policy == "fail":
                raise InputError(f"{location.path}:{location.line}: {err}") from None
            continue
        if record.pop("_hashed_id"):
            repeats[record["id"]] = seen = repeats.get(record["id"], 0) + 1
            if seen > 1:
                record["id"] = f"{record['id']}#{seen}"
        yield record


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one of our own JSONL files (a generate part, the filter's work files); one
    without an id, or with a text field of another type, is a one-line error naming file and line."""
    for line_no, row in iter_json_objects(path):
        if not isinstance(row.get("id"), str):
            raise InputError(f"{path}:{line_no}: record without a string 'id'")
        if problem := wrong_field_type(row):
            raise InputError(f"{path}:{line_no}: {problem}")
        yield row


def foreign_record(row: dict[str, Any], fields: RowFields) -> dict[str, Any]:
    """A dataset row as a filter record; ``ValueError`` says what is wrong with it."""
    problem, solution = row.get(fields.problem_field), row.get(fields.solution_field)
    text = row.get(fields.text_field)
    header_variant = None
    if isinstance(problem, str) and isinstance(solution, str):
        parse_error = None
        text = pretraining_text(problem, solution, "tool" if code_blocks(solution) else "cot")
    elif isinstance(text, str):
        parsed, parse_error = parse_completion(text)
        problem, solution = (parsed.problem, parsed.solution) if parsed else (None, None)
        header_variant = parsed.variant if parsed else None
    else:
        raise ValueError(f"neither a string {fields.text_field!r} nor string {fields.problem_field!r} and "
                         f"{fields.solution_field!r} fields")
    variant = row.get(fields.variant_field)
    if variant not in VARIANTS:
        variant = header_variant or ("tool" if solution and code_blocks(solution) else "cot")
    given_id = row.get(fields.id_field) if fields.id_field else None
    hashed = not isinstance(given_id, (str, int)) or isinstance(given_id, bool) or given_id == ""
    record = {
        "id": content_id(text) if hashed else str(given_id), "_hashed_id": hashed,
        "problem": problem, "solution": solution, "final_answer": None, "variant": variant,
        "stage": row.get(fields.stage_field) if isinstance(row.get(fields.stage_field), str) else None,
        "parse_error": parse_error, "text": text,
    }
    if problem_found := wrong_field_type(record):
        raise ValueError(problem_found)
    return record
