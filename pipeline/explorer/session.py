"""The explorer's state: the datasets it was pointed at, their indexes, and one method per page
question. Each answer is plain data (the server turns it into JSON)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from pipeline.explorer import catalog
from pipeline.explorer.compare import compare
from pipeline.explorer.index import DatasetIndex, split_row_id
from pipeline.explorer.lineage import index_pretrain_documents, lineage
from pipeline.explorer.patterns import derive_columns, error_report
from pipeline.explorer.queries import Query, QueryError, column_info, export, page

log = logging.getLogger(__name__)
REFRESH_EVERY_S = 5.0  # a folder being written is re-read at most this often


class Explorer:
    def __init__(self, paths: list[str | Path]) -> None:
        self.paths = [str(p) for p in paths]
        self.datasets = catalog.collect(self.paths)
        self.indexes: dict[str, DatasetIndex] = {}
        self.columns: dict[str, list[dict[str, Any]]] = {}
        self.errors: dict[str, str] = {}
        self._refreshed = 0.0
        self._lock = threading.Lock()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Index what is new in every dataset (all of it the first time)."""
        with self._lock:
            if not force and time.monotonic() - self._refreshed < REFRESH_EVERY_S:
                return
            for dataset in self.datasets:
                if dataset.error:
                    continue
                if dataset.kind != "corpus" and dataset.path.is_dir():  # a stage may have added shards
                    dataset.files = catalog.stage_folder(dataset.path).files
                try:
                    index = self.indexes.get(dataset.name)
                    if index is None:
                        index = self.indexes[dataset.name] = DatasetIndex(dataset, derive_columns(dataset.kind, dataset.manifest))
                    started = time.perf_counter()
                    stats = index.refresh()
                    if stats["read"] or stats["bad"] or dataset.name not in self.columns:
                        self.columns[dataset.name] = column_info(index)
                        log.info("%s: indexed %d new records in %.1f s", dataset.name, stats["read"],
                                 time.perf_counter() - started)
                    if dataset.kind == "pretrain":
                        index_pretrain_documents(index)
                except Exception as err:  # one unreadable dataset must not take the page down
                    log.exception("%s: cannot index", dataset.name)
                    self.errors[dataset.name] = f"{dataset.path}: cannot index ({type(err).__name__}: {err})"
            self._refreshed = time.monotonic()

    def index(self, name: str | None) -> DatasetIndex:
        if not name:
            raise QueryError("dataset: missing")
        index = self.indexes.get(name)
        if index is None:
            known = next((d for d in self.datasets if d.name == name), None)
            if known is not None:
                raise QueryError(known.error or self.errors.get(name) or f"{name}: not indexed")
            raise LookupError(f"no dataset {name!r}")
        return index

    # ----------------------------------------------------------------- the API

    def list_datasets(self, params: dict[str, str] | None = None) -> dict[str, Any]:
        self.refresh()
        out = []
        for d in self.datasets:
            entry = {"name": d.name, "path": str(d.path), "stage": d.stage, "kind": d.kind, "complete": d.complete,
                     "records": 0, "bad_line_count": 0, "bad_lines": [], "error": d.error or self.errors.get(d.name),
                     "columns": []}
            index = self.indexes.get(d.name)
            if index is not None and entry["error"] is None:
                entry["records"] = index.count()
                entry["bad_line_count"], entry["bad_lines"] = index.bad_lines()
                entry["columns"] = self.columns.get(d.name, [])
                if not d.complete and d.manifest:
                    done, shards = len(d.manifest.get("shards_done", [])), d.manifest.get("num_shards", 1)
                    entry["progress"] = f"{done} of {shards} shards sealed"
            out.append(entry)
        return {"datasets": out}

    def records(self, params: dict[str, str]) -> dict[str, Any]:
        return page(self.index(params.get("dataset")), Query.from_params(params))

    def _located(self, params: dict[str, str]) -> tuple[DatasetIndex, int, str, int, dict[str, Any]]:
        index, row = self.index(params.get("dataset")), _row(params)
        try:
            path, line, record = index.record(row)
        except KeyError as err:
            raise LookupError(err.args[0]) from None
        return index, row, path, line, record

    def record(self, params: dict[str, str]) -> dict[str, Any]:
        index, row, path, line, record = self._located(params)
        return {"dataset": index.dataset.name, "row": row, "file": path, "line": line, "record": record}

    def lineage(self, params: dict[str, str]) -> dict[str, Any]:
        index, row, _, _, record = self._located(params)
        return lineage(list(self.indexes.values()), index, row, record)

    def compare(self, params: dict[str, str]) -> dict[str, Any]:
        names = [n for n in (params.get("datasets") or "").split(",") if n]
        return compare([self.index(name) for name in names], params)

    def error_patterns(self, params: dict[str, str]) -> dict[str, Any]:
        return error_report(self.index(params.get("dataset")))

    def export(self, params: dict[str, str]) -> tuple[str, Iterator[str]]:
        index = self.index(params.get("dataset"))
        query = Query.from_params({**params, "limit": "1", "offset": "0"})
        name = index.dataset.name.replace("/", "-")
        return f"{name}-export.jsonl", export(index, query)

    def close(self) -> None:
        for index in self.indexes.values():
            index.close()


def _row(params: dict[str, str]) -> int:
    try:
        row = int(params.get("row", ""))
    except ValueError:
        raise QueryError("row: expected a record number") from None
    split_row_id(row)
    return row
