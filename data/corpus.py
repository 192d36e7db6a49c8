"""Streaming corpus readers: jsonl (plain, .zst, .gz), parquet and ``datasets.save_to_disk`` folders.

``iter_documents`` turns files, folders and globs into a stream of ``Document`` without ever
holding a whole file in memory, so a corpus larger than RAM reads like a small one.

Order. Sources resolve to a sorted list of files (a ``save_to_disk`` folder counts as one
file), so every machine sees the same order. Folders are walked recursively; names starting
with ``.`` or ``_`` are ignored there (temp files, ``_sources.json``-style side files).

Sharding rule. With ``shard`` = I/N:
  * if the corpus resolves to at least N files, shard I reads whole files: file k belongs to
    shard k mod N, and no shard opens a file it does not own;
  * otherwise every shard streams every row and keeps the rows whose global position p
    (counted over the whole sorted corpus, blank jsonl lines not counted) satisfies
    ``shard.owns(p)``; rows it does not own are never JSON-parsed or converted to Python.
Either way the shards partition the unsharded stream. A bad row is reported only by the shard
that owns it; a torn file (truncated .zst/.gz, corrupt parquet) counts as a bad row at the
position right after its last complete row.

Bad input. ``policy="fail"`` raises ``InputError("path:line: reason (detail)")``, one line;
``policy="skip"`` drops the row and counts it by reason in ``CorpusStats``. The rest of a
torn file is lost either way: its tail cannot be read.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, Sequence, Union

import zstandard
from pydantic import Field, field_validator

from data.config_base import StrictConfig, operational
from data.errors import InputError
from data.records import Document, SourceLocation, content_id
from data.shards import Shard

logger = logging.getLogger(__name__)

Policy = Literal["fail", "skip"]
POLICIES: tuple[Policy, ...] = ("fail", "skip")
SourceSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz")
PARQUET_SUFFIX = ".parquet"
_BATCH_ROWS = 1024
_ZSTD_READ_BYTES = 1 << 16  # compressed bytes per read: bounds the decompressed burst too

# Skip reasons: stable keys for CorpusStats.skipped (the detail goes only into messages).
MALFORMED_JSON = "malformed JSON"
NOT_AN_OBJECT = "not a JSON object"
MISSING_TEXT = "missing text field"
TEXT_NOT_STRING = "text not a string"
EMPTY_TEXT = "empty text"
TEXT_TOO_LONG = "text too long"
UNDECODABLE = "undecodable bytes"
TORN_FILE = "truncated or corrupt file"


@dataclass
class CorpusStats:
    """What one call (one shard) read, yielded and skipped; pass one in to get it back."""

    files: int = 0
    read: int = 0  # rows this shard owned and examined
    yielded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: list[str] = field(default_factory=list)  # "path:line: reason (detail)"
    keep_examples: int = 5

    def record_skip(self, reason: str, message: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.first_skipped) < self.keep_examples:
            self.first_skipped.append(message)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.files} files, {self.read} rows read, {self.yielded} yielded, {self.skipped_total} skipped"
        if self.skipped:
            by_reason = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
            first = "; ".join(self.first_skipped)
            text += f" ({by_reason}; first: {first})"
        return text

    def as_dict(self) -> dict[str, Any]:
        """For a stage manifest."""
        return {"files": self.files, "read": self.read, "yielded": self.yielded,
                "skipped": dict(sorted(self.skipped.items())), "first_skipped": list(self.first_skipped)}


class _BadRow(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = " ".join(detail.split())  # messages stay on one line

    def message(self, where: str) -> str:
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class _Fields:
    text: str
    id: str | None
    meta: tuple[str, ...] | None
    max_chars: int

    def columns(self) -> list[str] | None:
        """Columns a columnar reader needs; None = all (meta is every other field)."""
        if self.meta is None:
            return None
        return list(dict.fromkeys([self.text, *([self.id] if self.id else []), *self.meta]))


# ---------------------------------------------------------------------------------------------
# Public entry point


def iter_documents(
    sources: SourceSpec,
    *,
    text_field: str = "text",
    id_field: str | None = "id",
    meta_fields: Sequence[str] | None = None,
    policy: Policy = "fail",
    max_chars: int = 1_000_000,
    shard: Shard | None = None,
    stats: CorpusStats | None = None,
) -> Iterator[Document]:
    """Stream the documents of ``sources`` (paths, folders, globs); see the module docstring.

    ``id`` is the row's ``id_field`` value as a string when present and non-empty, else
    ``content_id(text)``. ``meta`` is every other field, or only ``meta_fields`` when given.
    Sources are resolved and arguments checked now; rows are read as the iterator is consumed.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: expected one of {', '.join(POLICIES)}")
    if max_chars < 1:
        raise ValueError(f"max_chars={max_chars!r}: expected a positive number of characters")
    fields = _Fields(text_field, id_field or None, tuple(meta_fields) if meta_fields is not None else None, max_chars)
    files = resolve_sources(sources)
    return _stream(files, fields, policy, shard, stats if stats is not None else CorpusStats(), _to_document)


def iter_rows(
    sources: SourceSpec,
    *,
    policy: Policy = "fail",
    shard: Shard | None = None,
    stats: CorpusStats | None = None,
) -> Iterator[tuple[SourceLocation, dict[str, Any]]]:
    """Like :func:`iter_documents` (same files, order, sharding rule and bad-row handling), but
    every JSON object as it is, with where it was read: for readers whose rows are not one text
    field (prompt/completion, chat messages)."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r}: expected one of {', '.join(POLICIES)}")
    fields = _Fields("", None, None, 0)
    return _stream(resolve_sources(sources), fields, policy, shard, stats if stats is not None else CorpusStats(),
                   _to_located_row)


def resolve_sources(sources: SourceSpec) -> list[str]:
    """The sorted, de-duplicated corpus files (and ``save_to_disk`` folders) named by ``sources``."""
    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not specs:
        raise InputError("no corpus sources given")
    found: set[str] = set()
    for spec in specs:
        text = os.fspath(spec)
        if any(char in text for char in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"{text}: glob matches nothing")
            resolved = [f for match in matches for f in _resolve_path(match, named=False)]
            if not resolved:
                raise InputError(f"{text}: glob matches no corpus files ({_SUPPORTED})")
        else:
            resolved = _resolve_path(text, named=True)
        found.update(resolved)
    return sorted(found)


_SUPPORTED = "expected .jsonl, .jsonl.zst, .jsonl.gz, .parquet or a datasets.save_to_disk folder"


def _resolve_path(path: str, *, named: bool) -> list[str]:
    """Files under one path; ``named`` paths (not glob matches) must be usable."""
    if os.path.isdir(path):
        if _is_dataset_dict(path):
            splits = sorted(p.name for p in Path(path).iterdir() if p.is_dir())
            raise InputError(f"{path}: a saved DatasetDict; name one split folder ({', '.join(splits)})")
        if _is_hf_dataset(path):
            return [path]
        if os.path.isfile(os.path.join(path, "manifest.json")):
            return _stage_output_parts(path)
        files = _walk(path)
        if named and not files:
            raise InputError(f"{path}: no corpus files in folder ({_SUPPORTED})")
        return files
    if os.path.isfile(path):
        if _is_supported_file(path):
            return [path]
        if named:
            raise InputError(f"{path}: unsupported file type ({_SUPPORTED})")
        return []
    raise InputError(f"{path}: no such file or folder")


def _stage_output_parts(folder: str) -> list[str]:
    """A stage output folder is read through its part files, and only once every shard is
    sealed: half of an upstream run must never pass for the whole of it."""
    from data.storage import read_json

    manifest = read_json(Path(folder) / "manifest.json")
    if not manifest.get("complete"):
        missing = sorted(set(range(manifest.get("num_shards", 1))) - set(manifest.get("shards_done", [])))
        raise InputError(f"{folder}: stage output is incomplete (shards {missing} not done); finish it first")
    return sorted(str(p) for p in Path(folder).glob("part-*-of-*.jsonl"))


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        kept = []
        for name in sorted(dirs):
            if _hidden(name):
                continue
            sub = os.path.join(root, name)
            if _is_hf_dataset(sub):
                found.append(sub)  # a unit: never descend into its arrow files
            elif not _is_dataset_dict(sub):
                kept.append(name)
        dirs[:] = kept
        found.extend(os.path.join(root, n) for n in names if not _hidden(n) and _is_supported_file(n))
    return sorted(found)


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _is_supported_file(path: str) -> bool:
    return path.endswith(JSONL_SUFFIXES) or path.endswith(PARQUET_SUFFIX)


def _is_hf_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json"))


def _is_dataset_dict(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json"))


# ---------------------------------------------------------------------------------------------
# The stream: which files, which rows, and what to do with a bad one


class _RowPositions:
    """Global row positions for the row-level shard rule (``shard=None``: keep every row)."""

    def __init__(self, shard: Shard | None) -> None:
        self._shard = shard
        self._next = 0

    def take(self, n: int) -> range:
        """Offsets, within the next ``n`` rows, of the rows this shard owns."""
        start, self._next = self._next, self._next + n
        if self._shard is None:
            return range(n)
        return range((self._shard.index - start) % self._shard.count, n, self._shard.count)


def _stream(files: list[str], fields: _Fields, policy: Policy, shard: Shard | None,
            stats: CorpusStats, convert) -> Iterator[Any]:
    whole_files = shard is None or len(files) >= shard.count
    positions = _RowPositions(None if whole_files else shard)
    for k, path in enumerate(files):
        if whole_files and shard is not None and not shard.owns(k):
            continue
        stats.files += 1
        logger.debug("reading %s", path)
        for line, row in _read_rows(path, positions, fields):
            stats.read += 1
            try:
                if isinstance(row, _BadRow):
                    raise row
                document = convert(_parse_line(row, line) if isinstance(row, bytes) else row,
                                   SourceLocation(path, line), fields)
            except _BadRow as bad:
                message = bad.message(f"{path}:{line}")
                if policy == "fail":
                    raise InputError(message) from None
                stats.record_skip(bad.reason, message)
                continue
            stats.yielded += 1
            yield document


def _parse_line(raw: bytes, line: int) -> Any:
    try:
        text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRow(UNDECODABLE, f"invalid utf-8: {exc.reason} at byte {exc.start}") from None
    try:
        # Without its line ending, a cut-off line reads as "unterminated", not "control character".
        return json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        raise _BadRow(MALFORMED_JSON, f"{exc.msg}: column {exc.colno}") from None


def _to_document(row: Any, location: SourceLocation, fields: _Fields) -> Document:
    if not isinstance(row, dict):
        raise _BadRow(NOT_AN_OBJECT, f"got {_json_type(row)}")
    text = row.get(fields.text)
    if text is None:
        raise _BadRow(MISSING_TEXT, repr(fields.text))
    if not isinstance(text, str):
        raise _BadRow(TEXT_NOT_STRING, f"{fields.text!r} is {_json_type(text)}")
    if not text.strip():
        raise _BadRow(EMPTY_TEXT)
    if len(text) > fields.max_chars:
        raise _BadRow(TEXT_TOO_LONG, f"{len(text)} chars > max_chars {fields.max_chars}")
    raw_id = row.get(fields.id) if fields.id else None
    doc_id = str(raw_id) if raw_id is not None and str(raw_id).strip() else content_id(text)
    if fields.meta is None:
        meta = {k: v for k, v in row.items() if k != fields.text and k != fields.id}
    else:
        meta = {k: row[k] for k in fields.meta if k in row}
    return Document(id=doc_id, text=text, meta=meta, location=location)


def _to_located_row(row: Any, location: SourceLocation, fields: _Fields) -> tuple[SourceLocation, dict[str, Any]]:
    if not isinstance(row, dict):
        raise _BadRow(NOT_AN_OBJECT, f"got {_json_type(row)}")
    return location, row


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# Readers: yield (1-based line or row, raw row) for the rows this shard owns. A raw row is the
# line's bytes (jsonl), a dict (columnar) or a _BadRow standing for the unreadable rest of a file.


def _read_rows(path: str, positions: _RowPositions, fields: _Fields) -> Iterator[tuple[int, Any]]:
    if os.path.isdir(path):
        return _columnar_rows(path, positions, fields, _hf_batches)
    if path.endswith(PARQUET_SUFFIX):
        return _columnar_rows(path, positions, fields, _parquet_batches)
    return _jsonl_rows(path, positions)


def _jsonl_rows(path: str, positions: _RowPositions) -> Iterator[tuple[int, Any]]:
    line = 0
    try:
        with _open_binary(path) as lines:
            for line, raw in enumerate(lines, 1):
                if raw.strip() and positions.take(1):
                    yield line, raw
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        # Lines are only handed out whole, so a torn tail never reaches the parser.
        if positions.take(1):
            yield line + 1, _BadRow(TORN_FILE, _describe(exc))


def _open_binary(path: str) -> BinaryIO:
    if path.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(open(path, "rb")), buffer_size=1 << 16)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # raises EOFError on a truncated member
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a .zst file, frame after frame.

    zstandard's own ``stream_reader`` ends quietly on a truncated frame, which would drop the
    tail of a corpus without a word; this reader raises instead.
    """

    def __init__(self, compressed: BinaryIO) -> None:
        self._compressed = compressed
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._frame_started = False
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._compressed.read(_ZSTD_READ_BYTES)
            if not chunk:
                if self._frame_started and not self._frame.eof:
                    raise zstandard.ZstdError("zstd stream ends mid-frame: file truncated")
                return 0
            self._pending = memoryview(self._decompress(chunk))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            if self._frame.eof:  # concatenated frames: start the next one
                self._frame = zstandard.ZstdDecompressor().decompressobj()
            out.append(self._frame.decompress(chunk))
            self._frame_started = True
            chunk = self._frame.unused_data if self._frame.eof else b""
        return b"".join(out)

    def close(self) -> None:
        self._compressed.close()
        super().close()


def _columnar_rows(path: str, positions: _RowPositions, fields: _Fields, batches) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa

    done = 0  # rows of this file already passed (owned or not)
    try:
        for batch in batches(path, fields.columns()):
            owned = positions.take(batch.num_rows)
            if len(owned) == batch.num_rows:
                records = batch.to_pylist()
            else:  # convert only the owned rows to Python
                records = batch.take(pa.array(owned, type=pa.int64())).to_pylist() if len(owned) else []
            for offset, record in zip(owned, records):
                yield done + offset + 1, _jsonable(record)
            done += batch.num_rows
    except (OSError, pa.ArrowException) as exc:
        if positions.take(1):
            yield done + 1, _BadRow(TORN_FILE, _describe(exc))


def _parquet_batches(path: str, columns: list[str] | None):
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        if columns is not None:
            columns = [c for c in columns if c in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns)


def _hf_batches(path: str, columns: list[str] | None):
    import datasets  # heavy import: only when a saved dataset is read

    dataset = datasets.load_from_disk(path)  # memory-mapped arrow, never loaded whole
    if columns is not None:
        dataset = dataset.select_columns([c for c in columns if c in dataset.column_names])
    yield from dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS)


def _jsonable(value: Any) -> Any:
    """Columnar values as JSON data (timestamps, decimals, ... become strings)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class CorpusInput(StrictConfig):
    """The ``input:`` section of a stage config: which corpus, and how to read it."""

    paths: list[str] = Field(..., min_length=1, description="files, folders or globs of a corpus")
    text_field: str = "text"
    id_field: str | None = "id"
    # Operational: a run that stopped at a bad row under "fail" holds only good records, so the
    # same folder may be finished under "skip".
    policy: Literal["fail", "skip"] = operational("fail")
    max_chars: int = Field(1_000_000, ge=1, description="longer texts are bad input")
    limit: int | None = Field(None, ge=1, description="only the first N documents (of the whole corpus)")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value):
        return [value] if isinstance(value, str) else value


def read_corpus(config: CorpusInput, shard: Shard, stats: CorpusStats | None = None) -> Iterator[Document]:
    """This shard's documents of the configured corpus. ``limit`` counts documents of the whole
    corpus, so it is applied before sharding (and then every shard streams from the start)."""
    docs = iter_documents(config.paths, text_field=config.text_field, id_field=config.id_field, policy=config.policy,
                          max_chars=config.max_chars, shard=shard if config.limit is None else None, stats=stats)
    if config.limit is None:
        yield from docs
        return
    for position, doc in enumerate(docs):
        if position >= config.limit:
            return
        if shard.owns(position):
            yield doc
