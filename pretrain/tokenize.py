"""``pretrain tokenize``: the datasets -> memory-mapped token arrays, sharded and resumable.

Tokenizing billions of tokens must never be redone after a crash nor need the corpus in memory,
so it is a stage of its own: rows are streamed (``data.corpus.iter_rows``; each source split
over the shards by the corpus rule), tokenized a chunk at a time and appended to three flat
files per shard:

    tokens-00000-of-00004.u32   token ids (uint32)
    loss-00000-of-00004.u8      1 where the token is scored
    docs-00000-of-00004.i64     per document: source, file, line, offset, length, kind (int64)

The part file holds one record per chunk (where its rows start, how many, the array ends after
it). A chunk's arrays reach the OS before its record is written, so a kill -9 leaves at most an
unrecorded tail, which the rerun cuts off before going on from the first row not recorded.

Once every shard is sealed, the finish step writes ``documents.npy``: every document of every
shard, ordered by (source, file, line) so the same inputs give the same index whatever the
number of shards; the trainer reads that and the arrays, never the text.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from data.corpus import CorpusStats, iter_rows, resolve_sources
from data.errors import InputError, OutputError
from data.records import SourceLocation
from data.shards import Shard
from data.storage import (
    MANIFEST,
    ShardWriter,
    StageOutput,
    atomic_write_json,
    part_stem,
    read_json,
)
from pretrain.config import PretrainConfig, Source
from pretrain.examples import KIND_NAMES, BadRow, RowTokenizer
from runner.ownership import ByCorpusRecord
from runner.stage import ShardWork, Stage

log = logging.getLogger(__name__)

DOC_COLUMNS = ("source", "file", "line", "offset", "length", "kind")
INDEX_COLUMNS = (*DOC_COLUMNS, "shard")
INDEX_FILE = "documents.npy"
SOURCES_FILE = "sources.json"
ARRAYS = {"tokens": ("u32", np.uint32), "loss": ("u8", np.uint8), "docs": ("i64", np.int64)}


def array_path(folder: Path, kind: str, shard: Shard) -> Path:
    suffix, _ = ARRAYS[kind]
    return folder / f"{kind}-{part_stem(shard)[len('part-'):]}.{suffix}"


class TokenizeStage(Stage):
    name = "pretrain-tokenize"
    ownership = ByCorpusRecord()
    has_finish_step = True

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self._tokenizer = None

    @property
    def output(self) -> Path:
        return self.config.tokenized_folder()

    def inputs(self) -> list[str]:
        return [self.config.tokenizer_path(), *(p for s in self.config.sources for p in source_paths(s))]

    def manifest_config(self) -> dict[str, Any]:
        return self.config.tokenize_config()

    def operational_keys(self) -> list[str]:
        return []  # the manifest config holds only what decides the tokens

    def check(self) -> None:
        for k, source in enumerate(self.config.sources):
            try:
                resolve_sources(source_paths(source))
            except InputError as err:
                raise InputError(f"sources.{k}.paths: {err}") from None
        RowTokenizer(self.tokenizer, self.config.sources[0])  # refuses a tokenizer without offsets

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from llm.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.tokenizer_path())
        return self._tokenizer

    def run_shard(self, work: ShardWork) -> dict[str, Any]:
        arrays = ShardArrays(self.output, work.shard, work.writer)
        stats = {"rows": 0, "docs": 0, "tokens": 0, "loss_tokens": 0, "skipped": 0}
        with work.progress("row") as advance:
            for index, source in enumerate(self.config.sources):
                tokenizer = RowTokenizer(self.tokenizer, source)
                done = arrays.rows_done(index)
                corpus_stats = CorpusStats()
                chunk: list[tuple[SourceLocation, dict]] = []
                for position, row in enumerate(owned_rows(source, work.shard, corpus_stats)):
                    if position < done:
                        continue  # recorded by an earlier run of this shard
                    chunk.append(row)
                    if len(chunk) == self.config.tokenize_batch_rows:
                        arrays.append(index, position + 1 - len(chunk), chunk, tokenizer.tokenize(chunk), source)
                        advance(len(chunk))
                        chunk = []
                if chunk:
                    arrays.append(index, arrays.rows_done(index), chunk, tokenizer.tokenize(chunk), source)
                    advance(len(chunk))
                if corpus_stats.skipped:  # unreadable rows under policy skip (malformed JSON, ...)
                    arrays.skipped_unreadable += corpus_stats.skipped_total
        arrays.close()
        for key in stats:
            stats[key] = arrays.totals[key]
        stats["skipped"] += arrays.skipped_unreadable
        return stats

    def finish(self, output: StageOutput) -> dict[str, Any]:
        index = build_index(self.output, output.num_shards)
        sources = []
        for k, source in enumerate(self.config.sources):
            mine = index[index[:, 0] == k]
            kinds = {KIND_NAMES[kind]: int((mine[:, 5] == kind).sum()) for kind in np.unique(mine[:, 5]).tolist()}
            sources.append({"name": source.label, "docs": len(mine), "tokens": int(mine[:, 4].sum()), "kinds": kinds})
        atomic_write_json(self.output / SOURCES_FILE, {"tokenizer": self.config.tokenizer_path(),
                                                        "vocab_size": len(self.tokenizer), "sources": sources})
        return {"documents": len(index), "tokens": int(index[:, 4].sum()), "sources": sources}

    def summary(self, manifest: dict[str, Any]) -> str:
        counts = manifest.get("counts", {})
        skipped = counts.get("skipped", 0)
        return (f"{counts.get('docs', 0)} documents, {counts.get('tokens', 0)} tokens "
                f"({counts.get('loss_tokens', 0)} scored)" + (f", {skipped} rows skipped" if skipped else ""))


def source_paths(source: Source) -> list[str]:
    """The source's paths, a distill output folder standing for its SFT export (complete only)."""
    paths = []
    for path in source.paths:
        manifest = Path(path) / MANIFEST
        if manifest.is_file() and read_json(manifest).get("stage") == "distill":
            if not read_json(manifest).get("complete"):
                raise InputError(f"{path}: distill output is incomplete (its sft_raw.jsonl is written at the end); "
                                 f"finish it first")
            paths.append(str(Path(path) / "sft_raw.jsonl"))
        else:
            paths.append(path)
    return paths


def owned_rows(source: Source, shard: Shard, stats: CorpusStats) -> Iterator[tuple[SourceLocation, dict]]:
    """This shard's rows of ``source``; ``limit`` counts rows of the whole source, so it applies
    before sharding (every shard then streams from the start)."""
    if source.limit is None:
        yield from iter_rows(source_paths(source), policy=source.policy, shard=shard, stats=stats)
        return
    for position, row in enumerate(iter_rows(source_paths(source), policy=source.policy, stats=stats)):
        if position >= source.limit:
            return
        if shard.owns(position):
            yield row


class ShardArrays:
    """A shard's three array files and its chunk records, kept consistent across kills."""

    def __init__(self, folder: Path, shard: Shard, writer: ShardWriter) -> None:
        self.folder, self.shard, self.writer = folder, shard, writer
        self.records = [json.loads(line) for line in writer.path.read_text(encoding="utf-8").splitlines()] \
            if writer.path.exists() else []
        self.file_index: dict[int, dict[str, int]] = {}
        self.skipped_unreadable = 0
        ends = {"tokens": 0, "docs": 0}
        for record in self.records:
            ends = {"tokens": max(ends["tokens"], record["tokens_end"]), "docs": max(ends["docs"], record["docs_end"])}
        self.tokens_end, self.docs_end = ends["tokens"], ends["docs"]
        self.totals = {key: sum(r[key] for r in self.records) for key in ("rows", "docs", "tokens", "loss_tokens", "skipped")}
        self.handles = {}
        for kind, (_, dtype) in ARRAYS.items():
            path = array_path(folder, kind, shard)
            keep = (self.docs_end * len(DOC_COLUMNS) if kind == "docs" else self.tokens_end) * np.dtype(dtype).itemsize
            size = path.stat().st_size if path.exists() else 0
            if size < keep:
                raise OutputError(f"{path}: {size} bytes, but the part file records {keep}; the folder was altered")
            if size > keep:
                log.info("%s: cutting an unrecorded tail of %d bytes left by a kill", path, size - keep)
            handle = open(path, "ab" if path.exists() else "wb")
            handle.truncate(keep)
            self.handles[kind] = handle

    def rows_done(self, source: int) -> int:
        return sum(r["rows"] for r in self.records if r["source"] == source)

    def _file_number(self, source: Source, source_index: int, path: str) -> int:
        numbers = self.file_index.setdefault(source_index, {p: k for k, p in enumerate(resolve_sources(source_paths(source)))})
        return numbers[path]

    def append(self, source_index: int, first_row: int, rows, results, source: Source) -> None:
        docs, skipped, loss_tokens = [], 0, 0
        tokens = self.handles["tokens"]
        offset = self.tokens_end
        for result in results:
            if isinstance(result, BadRow):
                if source.policy == "fail":
                    raise InputError(str(result))
                skipped += 1
                log.warning("skipped %s", result)
                continue
            tokens.write(result.ids.tobytes())
            self.handles["loss"].write(result.loss.tobytes())
            loss_tokens += int(result.loss.sum())
            docs.append((source_index, self._file_number(source, source_index, result.location.path),
                         result.location.line, offset, len(result.ids), result.kind))
            offset += len(result.ids)
        if docs:
            self.handles["docs"].write(np.asarray(docs, dtype=np.int64).tobytes())
        for handle in self.handles.values():
            handle.flush()  # the arrays reach the OS before the record that covers them
        record = {"id": f"{source_index}-{first_row}", "source": source_index, "first_row": first_row,
                  "rows": len(rows), "docs": len(docs), "skipped": skipped, "tokens": offset - self.tokens_end,
                  "loss_tokens": loss_tokens, "tokens_end": offset, "docs_end": self.docs_end + len(docs)}
        self.writer.write(record)
        self.writer.flush()
        self.records.append(record)
        for key in self.totals:
            self.totals[key] += record[key]
        self.tokens_end, self.docs_end = offset, self.docs_end + len(docs)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


def build_index(folder: Path, num_shards: int) -> np.ndarray:
    """Every document of every shard (columns ``INDEX_COLUMNS``), by (source, file, line)."""
    parts = []
    for k in range(num_shards):
        shard = Shard(k, num_shards)
        docs = np.fromfile(array_path(folder, "docs", shard), dtype=np.int64).reshape(-1, len(DOC_COLUMNS))
        parts.append(np.concatenate([docs, np.full((len(docs), 1), k, dtype=np.int64)], axis=1))
    index = np.concatenate(parts) if parts else np.zeros((0, len(INDEX_COLUMNS)), dtype=np.int64)
    index = index[np.lexsort((index[:, 2], index[:, 1], index[:, 0]))]
    tmp = folder / f".{INDEX_FILE}.tmp"
    with open(tmp, "wb") as handle:
        np.save(handle, index)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / INDEX_FILE)
    return index


def read_sources_file(folder: Path) -> dict[str, Any]:
    return read_json(folder / SOURCES_FILE)
