"""``mathsynth synth filter``: the synthesizer's records -> a pre-training-ready, decontaminated,
deduplicated dataset. CPU work, kept off the GPU jobs of ``synth generate``. It also filters any
existing dataset of problems (:mod:`synth.filter_input`).

A shard's life, in two phases:

1. Its input parts (part ``j`` of the generate folder, or file ``j`` of a dataset, goes to
   shard ``j mod N``), one at a time:
   the per-record filters (:mod:`synth.filters`) in batches that keep a window's samples
   together; survivors and rejects go to ``work/<part>.kept.jsonl`` / ``.rejected.jsonl``
   (append-only, resumable by id), then the survivors' dedup sketch (``work/<part>.sketch/``)
   and a ``work/<part>.done`` marker.
2. Once every input part is marked, whichever shard sees it first (under a lock) decides exact
   and near duplicates across ALL parts, in input order (the first copy is kept), and writes
   every unsealed shard's ``part-*.jsonl`` (the dataset) and ``rejects-*.jsonl`` (every record
   dropped, with ``reject_reason``; duplicates also name ``duplicate_of``), then seals them.
   A shard that ends phase 1 earlier just returns: its outputs are written by the last one.
   With ``judge.top_k_per_source``, the same step then keeps the k best-scored survivors of each
   source text (the others are rejected as ``judge_top_k``; decided once, saved in ``work/``).
   The same step writes ``report.json`` and ``report.md`` (:mod:`synth.filter_report`): kept
   and rejected by reason, by variant and by stage, with examples of each reason.

Because the dedup order is the input order, the dataset does not depend on N, and a kill at
any point is finished by a rerun without duplicating or losing a record.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field

from data.config_base import StrictConfig, operational
from data.dedup import ShardSketch, merge_shards
from data.errors import InputError
from data.progress import progress_bar
from data.shards import Shard
from data.storage import (
    ShardWriter,
    StageOutput,
    atomic_write_text,
    part_files,
    part_stem,
    read_manifest,
)
from runner.ownership import ByInputPart
from runner.run import run_stage
from runner.stage import ShardWork, Stage
from synth.filter_input import (
    InputPart,
    RowFields,
    foreign_record,
    input_parts,
    read_part,
    read_records,
)
from synth.filter_report import report_summary, write_report
from synth.filters import (
    CodeCheckFilter,
    ConsistencyFilter,
    DecontaminationFilter,
    FormatFilter,
    JudgeFilter,
    LengthFilter,
    RecordFilters,
    judge_score,
)
from synth.text_format import pretraining_text

log = logging.getLogger(__name__)

# What the pre-training dataset keeps of a generated record (the rest stays in the input folder).
DATASET_FIELDS = ("id", "text", "problem", "solution", "final_answer", "variant", "stage", "source_id", "window",
                  "prompt_id", "item_key", "sample_index", "model")


class DedupFilter(StrictConfig):
    enabled: bool = True
    field: str = Field("problem", description="the text compared: problem (default) or text (problem + solution)")
    threshold: float = Field(0.8, gt=0, le=1, description="word 5-gram Jaccard at or above which a later copy goes")
    ngram: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=16)


class SynthFilterConfig(StrictConfig):
    input: str = Field(..., min_length=1, description="a synth generate output folder (every shard sealed), or "
                                                      "a dataset of problems: file, folder or glob (synth.filter_input)")
    rows: RowFields = Field(default_factory=RowFields, description="how a dataset's rows are read (not a generate output)")
    output: str = Field(..., min_length=1)
    format: FormatFilter = Field(default_factory=FormatFilter)
    length: LengthFilter = Field(default_factory=LengthFilter)
    decontamination: DecontaminationFilter = Field(default_factory=DecontaminationFilter)
    code_check: CodeCheckFilter = Field(default_factory=CodeCheckFilter)
    consistency: ConsistencyFilter = Field(default_factory=ConsistencyFilter)
    judge: JudgeFilter = Field(default_factory=JudgeFilter)
    dedup: DedupFilter = Field(default_factory=DedupFilter)
    batch_size: int = operational(256, ge=1, description="records per filter batch (one sandbox and grader call)")


class WorkFiles:
    """Phase-1 files of one input part."""

    def __init__(self, output: Path, part: InputPart) -> None:
        stem = part.stem
        self.folder = output / "work"
        self.kept = self.folder / f"{stem}.kept.jsonl"
        self.rejected = self.folder / f"{stem}.rejected.jsonl"
        self.sketch = self.folder / f"{stem}.sketch"
        self.done = self.folder / f"{stem}.done"


def window_batches(records: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Batches of about ``size`` records that never split the samples of one window."""
    batch: list[dict[str, Any]] = []
    for record in records:
        if len(batch) >= size and record.get("item_key") != batch[-1].get("item_key"):
            yield batch
            batch = []
        batch.append(record)
    if batch:
        yield batch


class JudgedPart(InputPart):
    """A part of a ``mathsynth judge`` output: the judged records with their ``judge`` column."""


def filter_input_parts(source: str) -> list[InputPart]:
    """:func:`synth.filter_input.input_parts`, plus the output of ``mathsynth judge`` (of a synth
    generate folder or of any dataset of problems): the judged records, read with their scores."""
    folder = Path(source)
    if folder.is_dir() and (folder / "manifest.json").is_file():
        upstream = read_manifest(folder)
        if upstream.get("stage") == "judge":
            if not upstream.get("complete"):
                raise InputError(f"input: {folder}: not every shard of the judge run is sealed yet; finish it first")
            return [JudgedPart(part, part.name.split(".")[0], True) for part in part_files(folder)]
    return input_parts(source)


def read_judged(part: InputPart, config: SynthFilterConfig) -> Iterator[dict[str, Any]]:
    """A judged synth generate record as it is (its parse error included); any other judged row
    read like a dataset row (``rows``), keeping its id, its scores and its source."""
    carried = (config.judge.root, config.judge.source_field, "source_id", "item_key")
    for row in read_records(part.path):
        if "parse_error" in row and "variant" in row:  # written by synth generate
            yield row
            continue
        try:
            record = foreign_record(row, config.rows)
        except ValueError as err:
            if config.rows.policy == "fail":
                raise InputError(f"{part.path}: record {row['id']}: {err}") from None
            continue
        record.pop("_hashed_id")
        record["id"] = row["id"]
        record.update({name: row[name] for name in carried if name in row})
        yield record


def read_input(part: InputPart, config: SynthFilterConfig) -> Iterator[dict[str, Any]]:
    return read_judged(part, config) if isinstance(part, JudgedPart) else read_part(part, config.rows)


def filter_part(part: InputPart, files: WorkFiles, filters: RecordFilters, config: SynthFilterConfig) -> None:
    """Phase 1 for one input part; a no-op when it is already marked done."""
    if files.done.exists():
        return
    files.folder.mkdir(parents=True, exist_ok=True)
    kept, rejected = ShardWriter(files.kept), ShardWriter(files.rejected)
    try:
        with progress_bar(f"synth filter {part.path.name}", unit="record") as advance:
            for batch in window_batches(read_input(part, config), config.batch_size):
                # The whole batch is checked (a window's samples are judged together); only
                # records not written by an interrupted earlier run are written.
                if all(r["id"] in kept or r["id"] in rejected for r in batch):
                    advance(len(batch))
                    continue
                for record, outcome in zip(batch, filters.check(batch)):
                    if outcome.reason is None:
                        kept.write(dataset_record(record, kept_columns(config)))
                    else:
                        rejected.write({**record, "reject_reason": outcome.reason, "filter_details": outcome.details})
                advance(len(batch))
    finally:
        kept.close(sync=True)
        rejected.close(sync=True)
    rows = list(read_records(files.kept))
    ShardSketch.compute([r["id"] for r in rows], [r.get(config.dedup.field) or "" for r in rows],
                        num_perm=config.dedup.num_perm, ngram=config.dedup.ngram).save(files.sketch)
    atomic_write_text(files.done, "")


def kept_columns(config: SynthFilterConfig) -> tuple[str, ...]:
    """Fields kept beyond DATASET_FIELDS when a record has them: the judge's scores (and the
    source field the top-k groups by)."""
    return (config.judge.root, config.judge.source_field) if config.judge.enabled else ("judge",)


def dataset_record(record: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    found = {name: record.get(name) for name in DATASET_FIELDS}
    found.update({name: record[name] for name in extra if name in record and name not in found})
    found["text"] = record.get("text") or pretraining_text(record["problem"], record["solution"], record["variant"])
    return found


def duplicates(output: Path, parts: list[InputPart], config: SynthFilterConfig) -> dict[str, dict[str, Any]]:
    """Every dropped duplicate by id, decided once over all parts in input order and saved, so
    every shard (and a rerun) writes from the same decision."""
    saved = output / "work" / "duplicates.jsonl"
    if saved.exists():
        return {row["id"]: row for row in read_records(saved)}
    dropped: dict[str, dict[str, Any]] = {}
    if config.dedup.enabled:
        started = time.monotonic()
        sketches = [ShardSketch.load(WorkFiles(output, part).sketch) for part in parts]
        decisions = merge_shards(sketches, threshold=config.dedup.threshold)
        for i in range(len(decisions)):
            if not decisions.keep[i]:
                d = decisions[i]
                dropped[d.id] = {"id": d.id, "reject_reason": d.reason, "duplicate_of": d.duplicate_of,
                                 "jaccard": round(d.jaccard, 4)}
        log.info("dedup over %d records: %d duplicates (%.1fs)", len(decisions), len(dropped),
                 time.monotonic() - started)
    atomic_write_text(saved, "".join(json.dumps(row) + "\n" for row in dropped.values()))
    return dropped


def judge_top_k(output: Path, parts: list[InputPart], config: SynthFilterConfig,
                duplicates_dropped: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The survivors (after dedup) beyond the ``top_k_per_source`` best-scored of their source
    text, by id; ties go to the smaller id. Decided once over all parts and saved, like the dedup."""
    saved = output / "work" / "judge_top_k.jsonl"
    if saved.exists():
        return {row["id"]: row for row in read_records(saved)}
    judge, dropped = config.judge, {}
    if judge.enabled and judge.top_k_per_source is not None:
        groups: dict[str, list[tuple[float, str]]] = {}
        for part in parts:
            for record in read_records(WorkFiles(output, part).kept):
                if record["id"] in duplicates_dropped:
                    continue
                score = judge_score(record, judge.column)
                source = record.get(judge.source_field)
                group = f"source:{source}" if isinstance(source, (str, int)) else f"id:{record['id']}"
                groups.setdefault(group, []).append((score if score is not None else float("-inf"), record["id"]))
        for members in groups.values():
            members.sort(key=lambda member: (-member[0], member[1]))
            for rank, (score, record_id) in enumerate(members[judge.top_k_per_source:], start=judge.top_k_per_source + 1):
                dropped[record_id] = {"id": record_id, "reject_reason": "judge_top_k", "judge_rank": rank,
                                      "top_k": judge.top_k_per_source}
    atomic_write_text(saved, "".join(json.dumps(row) + "\n" for row in dropped.values()))
    return dropped


def write_shard(output: StageOutput, shard: Shard, parts: list[InputPart], dropped: dict[str, dict[str, Any]],
                seconds: float) -> dict[str, Any]:
    """Phase 2 for one shard: its dataset part and rejects, then the seal."""
    writer = output.open_shard(shard)
    rejects = ShardWriter(output.folder / f"rejects-{part_stem(shard)[len('part-'):]}.jsonl")
    by_reason: dict[str, int] = {}
    considered = 0
    try:
        for part in parts:
            files = WorkFiles(output.folder, part)
            for record in read_records(files.rejected):
                considered += 1
                by_reason[record["reject_reason"]] = by_reason.get(record["reject_reason"], 0) + 1
                rejects.write(record)
            for record in read_records(files.kept):
                considered += 1
                duplicate = dropped.get(record["id"])
                if duplicate is None:
                    writer.write(record)
                else:
                    by_reason[duplicate["reject_reason"]] = by_reason.get(duplicate["reject_reason"], 0) + 1
                    rejects.write({**record, **duplicate})
    finally:
        rejects.close(sync=True)
    return output.finish_shard(shard, writer, {
        "input_records": considered, "kept": len(writer), "rejected": len(rejects),
        "rejected_by_reason": by_reason, "seconds": seconds,
    })


class SynthFilterStage(Stage):
    """Input parts owned by position; a shard's run filters its parts (phase 1), and the finish
    step, once every part is filtered, dedups across all of them and writes and seals every
    shard (phase 2): see the module docstring."""

    name = "synth_filter"
    ownership = ByInputPart()
    seals_own_shard = False
    has_finish_step = True

    def __init__(self, config: SynthFilterConfig) -> None:
        super().__init__(config)
        self.parts: list[InputPart] = []

    def inputs(self) -> list[str]:
        return [self.config.input]

    def check(self) -> None:
        self.parts = filter_input_parts(self.config.input)

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        config, folder = self.config, work.output.folder
        filters = RecordFilters(config.format, config.length, config.decontamination, config.code_check,
                                config.consistency, cache_dir=folder / "work", judge=config.judge)
        try:
            for part in self.ownership.parts(self.parts, work.shard):
                filter_part(part, WorkFiles(folder, part), filters, config)
        finally:
            filters.close()
        waiting = [part.path.name for part in self.parts if not WorkFiles(folder, part).done.exists()]
        if waiting:
            log.info("shard %s filtered; %d input part(s) still being filtered by other shards (%s ...); "
                     "the last shard to finish dedups across all of them and writes the dataset",
                     work.shard, len(waiting), waiting[0])
        return {}

    def ready_to_finish(self, output: StageOutput) -> bool:
        return all(WorkFiles(output.folder, part).done.exists() for part in self.parts)

    def finish(self, output: StageOutput) -> dict[str, Any]:
        dropped = duplicates(output.folder, self.parts, self.config)
        dropped.update(judge_top_k(output.folder, self.parts, self.config, dropped))
        for index in range(output.num_shards):
            shard = Shard(index, output.num_shards)
            if not output.is_done(shard):
                write_shard(output, shard, self.ownership.parts(self.parts, shard), dropped,
                            output.prepared_stats(shard).get("seconds", 0.0))
        counts = output.refresh_manifest().get("counts", {})
        log.info("%s: %d of %d records kept", output.folder, counts.get("kept", 0), counts.get("input_records", 0))
        write_report(output.folder)
        return {}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        if not manifest.get("complete"):
            return "filtered; waiting for the other shards (the last one dedups and writes the dataset)"
        reasons = counts.get("rejected_by_reason", {})
        return (f"kept {counts.get('kept', 0)} of {counts.get('input_records', 0)} records; rejected: "
                f"{', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none'}\n"
                + report_summary(Path(self.config.output)))


def run_synth_filter(config: SynthFilterConfig, shard: Shard) -> dict[str, Any]:
    """One shard of ``mathsynth synth filter`` (see :mod:`runner.run`)."""
    return run_stage(SynthFilterStage(config), shard)
