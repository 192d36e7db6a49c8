"""One DuckDB file per dataset: every record's short fields as columns, a lower-cased search text,
and where its line is, so a folder of millions of records is filtered and paged without being
loaded; the full record is read back from its file by offset when it is opened.

The index is built once and brought up to date incrementally: stage files are append-only (a
resumed shard only cuts a torn tail that was never indexed), so a file that grew is read from
where the index stopped; one whose start changed is indexed again. A torn last line (a shard
being written) is left for the next refresh; a line that is not a JSON object is recorded as
a bad line with its file and line number and skipped.

The cache sits in the folder as ``.explore-index.duckdb`` (dot files are ignored by the stages
and by ``datasets``), or under ``~/.cache/mathsynth/explorer`` when the folder is not writable
or the dataset is a corpus file.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipeline.explorer.catalog import Dataset

INDEX_VERSION = "3"  # bumped when what a column holds changes: old caches are rebuilt
CACHE_NAME = ".explore-index.duckdb"
LINE_BITS = 32  # a row id is file_no << 32 | line: stable across refreshes, and it names the line
SHORT_TEXT = 200  # a string field's column keeps this much (the record view shows all of it)
SEARCH_CHARS = 20_000
MAX_COLUMNS = 96  # more keys than this (odd records) are searched, not made columns
BATCH_ROWS = 20_000
HEAD_BYTES = 4096
# Long text: searched and shown in the record view, never a column.
TEXT_FIELDS = frozenset({"prompt", "completion", "problem", "solution", "text", "code", "messages", "source_text"})
PREVIEW_FIELDS = ("problem", "text", "completion", "prompt", "messages")
SYSTEM_COLUMNS = ("_row", "_file", "_line", "_offset", "_length", "_search")
NUMBER, TEXT, BOOL = "DOUBLE", "VARCHAR", "BOOLEAN"


def cache_path(dataset: Dataset, beside: bool = True) -> Path:
    folder = dataset.path
    if beside and dataset.kind != "corpus" and folder.is_dir() and os.access(folder, os.W_OK):
        return folder / CACHE_NAME
    base = Path(os.environ.get("MATHSYNTH_EXPLORER_CACHE", Path.home() / ".cache" / "mathsynth" / "explorer"))
    base.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(dataset.path.resolve()).encode()).hexdigest()[:16]
    suffix = "" if beside else f"-{os.getpid()}"
    return base / f"{dataset.path.name}-{digest}{suffix}.duckdb"


def row_id(file_no: int, line: int) -> int:
    return (file_no << LINE_BITS) | line


def split_row_id(row: int) -> tuple[int, int]:
    return row >> LINE_BITS, row & ((1 << LINE_BITS) - 1)


class DatasetIndex:
    """The index of one dataset. ``refresh()`` brings it up to date; ``cursor()`` gives a
    connection for one request (DuckDB cursors may be used from other threads)."""

    def __init__(self, dataset: Dataset, derive=None) -> None:
        self.dataset = dataset
        self.path = cache_path(dataset)
        self.derive = derive  # record -> extra columns (e.g. an eval record's error kind)
        self._lock = threading.Lock()
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.IOException:  # another explorer holds this cache: this one builds its own
            self.path = cache_path(dataset, beside=False)
            self.con = duckdb.connect(str(self.path))
        self.con.execute("SET threads TO 2")
        self._prepare()

    # ----------------------------------------------------------------- schema

    def _prepare(self) -> None:
        con = self.con
        con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        version = con.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        wanted = f"{INDEX_VERSION}:{self.dataset.kind}"  # the kind decides the derived columns
        if version is None or version[0] != wanted:
            for table in ("files", "bad_lines", "records"):
                con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", [wanted])
        con.execute("CREATE TABLE IF NOT EXISTS files (file_no INTEGER, path VARCHAR, size BIGINT, mtime DOUBLE, "
                    "indexed_bytes BIGINT, head VARCHAR, lines BIGINT)")
        con.execute("CREATE TABLE IF NOT EXISTS bad_lines (file_no INTEGER, line BIGINT, error VARCHAR)")
        con.execute("CREATE TABLE IF NOT EXISTS records (_row BIGINT, _file INTEGER, _line BIGINT, _offset BIGINT, "
                    "_length INTEGER, _search VARCHAR)")
        self.types = self._column_types()

    def _column_types(self) -> dict[str, str]:
        rows = self.con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'records' ORDER BY ordinal_position").fetchall()
        return {name: kind for name, kind in rows if name not in SYSTEM_COLUMNS}

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self.con.cursor()

    # ----------------------------------------------------------------- refresh

    def refresh(self) -> dict[str, int]:
        """Index what is new; returns how many lines were read and how many were bad."""
        with self._lock:
            known = {path: (no, size, mtime, done, head, lines) for no, path, size, mtime, done, head, lines
                     in self.con.execute("SELECT * FROM files").fetchall()}
            wanted = {str(p) for p in self.dataset.files}
            for path, (file_no, *_rest) in known.items():
                if path not in wanted:  # a file that went away
                    self._forget(file_no)
            stats = {"read": 0, "bad": 0}
            next_no = max((v[0] for v in known.values()), default=-1) + 1
            for path in self.dataset.files:
                entry = known.get(str(path))
                file_no = entry[0] if entry else next_no
                next_no += entry is None
                read, bad = self._refresh_file(path, file_no, entry)
                stats["read"] += read
                stats["bad"] += bad
            self.types = self._column_types()
            return stats

    def _forget(self, file_no: int) -> None:
        for table, column in (("records", "_file"), ("bad_lines", "file_no"), ("files", "file_no")):
            self.con.execute(f"DELETE FROM {table} WHERE {column} = ?", [file_no])

    def _refresh_file(self, path: Path, file_no: int, entry) -> tuple[int, int]:
        try:
            stat = path.stat()
        except OSError:
            return 0, 0
        start, line = 0, 0
        if entry is not None:
            _, size, mtime, done, head, lines = entry
            if size == stat.st_size and mtime == stat.st_mtime:
                return 0, 0
            if stat.st_size >= done and _head(path, done) == head:
                start, line = done, lines  # appended to since: read on from where the index stopped
            else:
                self._forget(file_no)
                entry = None
        read = bad = 0
        batch: list[dict[str, Any]] = []
        offset = start
        with open(path, "rb") as handle:
            handle.seek(start)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a torn tail being written: indexed once it is whole
                line += 1
                length = len(raw)
                try:
                    record = json.loads(raw)
                    if not isinstance(record, dict):
                        raise ValueError("not a JSON object")
                except (ValueError, UnicodeDecodeError) as err:
                    if raw.strip():
                        message = str(err).splitlines()[0][:200]
                        self.con.execute("INSERT INTO bad_lines VALUES (?, ?, ?)", [file_no, line, message])
                        bad += 1
                    offset += length
                    continue
                columns, search = split_record(record)
                if self.derive is not None:
                    columns.update(self.derive(record, path))
                columns.update(_row=row_id(file_no, line), _file=file_no, _line=line, _offset=offset,
                               _length=length, _search=search)
                batch.append(columns)
                offset += length
                read += 1
                if len(batch) >= BATCH_ROWS:
                    self._insert(batch)
                    batch = []
        if batch:
            self._insert(batch)
        self.con.execute("DELETE FROM files WHERE file_no = ?", [file_no])
        self.con.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [file_no, str(path), stat.st_size, stat.st_mtime, offset, _head(path, offset), line])
        return read, bad

    def _insert(self, batch: list[dict[str, Any]]) -> None:
        wanted: dict[str, str] = {}
        for record in batch:
            for key, value in record.items():
                if key in SYSTEM_COLUMNS or value is None:
                    continue
                kind, seen = _kind_of(value), wanted.get(key)
                wanted[key] = kind if seen in (None, kind) else TEXT
        for key, kind in wanted.items():
            have = self.types.get(key)
            if have is None:
                if len(self.types) >= MAX_COLUMNS:
                    continue
                self.con.execute(f"ALTER TABLE records ADD COLUMN {quote(key)} {kind}")
                self.types[key] = kind
            elif have != kind and have != TEXT:  # a field holding numbers and words: keep both as text
                self.con.execute(f"ALTER TABLE records ALTER {quote(key)} TYPE VARCHAR")
                self.types[key] = TEXT
        columns = {name: [] for name in (*SYSTEM_COLUMNS, *self.types)}
        for record in batch:
            for name, values in columns.items():
                values.append(_as(record.get(name), self.types.get(name)))
        table = pa.table({name: pa.array(values, type=_arrow_type(name, self.types.get(name)))
                          for name, values in columns.items()})
        self.con.register("incoming", table)
        try:
            self.con.execute("INSERT INTO records BY NAME SELECT * FROM incoming")
        finally:
            self.con.unregister("incoming")

    # ----------------------------------------------------------------- reading back

    def file_paths(self) -> dict[int, str]:
        return dict(self.cursor().execute("SELECT file_no, path FROM files").fetchall())

    def record(self, row: int) -> tuple[str, int, dict[str, Any]]:
        """(file, line, the full record) of a row id."""
        found = self.cursor().execute(
            "SELECT f.path, r._line, r._offset, r._length FROM records r JOIN files f ON f.file_no = r._file "
            "WHERE r._row = ?", [row]).fetchone()
        if found is None:
            raise KeyError(f"{self.dataset.name}: no record {row}")
        path, line, offset, length = found
        return path, line, read_line(path, offset, length)

    def records(self, rows: list[int]) -> list[dict[str, Any]]:
        """Full records of many rows, in the order given, each file read once in offset order."""
        if not rows:
            return []
        cur = self.cursor()
        cur.register("wanted", pa.table({"_row": pa.array(rows, type=pa.int64())}))
        found = cur.execute("SELECT r._row, f.path, r._offset, r._length FROM records r JOIN files f "
                            "ON f.file_no = r._file WHERE r._row IN (SELECT _row FROM wanted) "
                            "ORDER BY f.path, r._offset").fetchall()
        out: dict[int, dict[str, Any]] = {}
        handle, open_path = None, None
        try:
            for row, path, offset, length in found:
                if path != open_path:
                    if handle:
                        handle.close()
                    handle, open_path = open(path, "rb"), path
                handle.seek(offset)
                out[row] = json.loads(handle.read(length))
        finally:
            if handle:
                handle.close()
        return [out[row] for row in rows if row in out]

    def bad_lines(self, limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
        cur = self.cursor()
        total = cur.execute("SELECT count(*) FROM bad_lines").fetchone()[0]
        rows = cur.execute("SELECT f.path, b.line, b.error FROM bad_lines b JOIN files f ON f.file_no = b.file_no "
                           "ORDER BY b.file_no, b.line LIMIT ?", [limit]).fetchall()
        return total, [{"file": path, "line": line, "error": error} for path, line, error in rows]

    def count(self) -> int:
        return self.cursor().execute("SELECT count(*) FROM records").fetchone()[0]

    def close(self) -> None:
        self.con.close()


_ARROW = {NUMBER: pa.float64(), TEXT: pa.string(), BOOL: pa.bool_()}


def _arrow_type(name: str, kind: str | None) -> pa.DataType:
    if name == "_search":
        return pa.string()
    return _ARROW[kind] if kind else pa.int64()


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_line(path: str, offset: int, length: int) -> dict[str, Any]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return json.loads(handle.read(length))


def _head(path: Path, upto: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(min(upto, HEAD_BYTES))).hexdigest()[:16]


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    return TEXT


def _as(value: Any, kind: str | None) -> Any:
    if value is None or kind is None:
        return value
    if kind == TEXT and not isinstance(value, str):
        return json.dumps(value)
    if kind == NUMBER and isinstance(value, bool):
        return float(value)
    return value


def split_record(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(columns, search text): scalars and short strings become columns (one level of nested
    objects as ``key.sub``, lists as ``key.count``); every string is searched."""
    columns: dict[str, Any] = {}
    search: list[str] = []
    for key, value in record.items():
        if key.startswith("_"):
            continue
        if isinstance(value, str):
            search.append(value)
            if key not in TEXT_FIELDS:
                columns[key] = value[:SHORT_TEXT]
        elif value is None or isinstance(value, (bool, int, float)):
            columns[key] = value
        elif isinstance(value, dict):
            for sub, inner in value.items():
                if isinstance(inner, str):
                    search.append(inner)
                    columns[f"{key}.{sub}"] = inner[:SHORT_TEXT]
                elif inner is None or isinstance(inner, (bool, int, float)):
                    columns[f"{key}.{sub}"] = inner
                else:
                    search.append(json.dumps(inner, ensure_ascii=False))
        elif isinstance(value, list):
            columns[f"{key}.count"] = len(value)
            search.append(json.dumps(value, ensure_ascii=False))
    columns["preview"] = _preview(record)
    text = "\n".join(search)
    return columns, text[:SEARCH_CHARS].lower()


def _preview(record: dict[str, Any]) -> str | None:
    for key in PREVIEW_FIELDS:
        value = record.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0].get("content")
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())[:SHORT_TEXT]
    return None
