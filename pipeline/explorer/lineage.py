"""Lineage: from one record, the records it came from and what it became, across datasets.

Records carry content ids (DESIGN: the stage contract): ``source_id`` names the corpus text,
``item_key`` the prompted window (the same for the teacher's answer and the synthesizer's
samples of it), ``id`` the record itself (a synthetic sample keeps it through the filter), and
``problem_id`` a benchmark problem. A link is a pair of columns that hold the same value; its
direction comes from the stage order (upstream = "came from"). Pretraining is followed through
the tokenized folder's document index: which file and line each document was read from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.explorer.index import DatasetIndex

MATCHES = 20  # per linked dataset and link: a text may have many samples
# (column of the record, column of the other dataset)
LINKS = (("source_id", "id"), ("id", "source_id"), ("item_key", "item_key"), ("id", "id"),
         ("problem_id", "problem_id"))


def relation(other: DatasetIndex, values: dict[str, Any]) -> str:
    kind = other.dataset.kind
    if kind == "synth_filter":
        reason = values.get("reject_reason")
        return f"rejected by the filter: {reason}" if values.get("outcome") == "rejected" else "kept by the filter"
    if kind == "distill":
        return "teacher answer" if values.get("outcome") != "rejected" else \
            f"teacher answer, rejected: {values.get('reject_reason')}"
    if kind in ("corpus", "influence"):
        rank = values.get("influence.rank")
        return "source text" + (f" (influence rank {int(rank)})" if rank is not None else "")
    if kind == "synth_generate":
        return "synthesizer sample" + (f": {values['parse_error']}" if values.get("parse_error") else "")
    if kind == "eval":
        return "same problem" + (" (right)" if values.get("correct") else " (wrong)")
    if kind == "judge":
        score, error = values.get("judge.score"), values.get("judge.error")
        return f"judged: score {score:g}" if score is not None else f"judged: {error}"
    return f"{kind} record"


def lineage(indexes: list[DatasetIndex], origin: DatasetIndex, row: int, record: dict[str, Any]) -> dict[str, list]:
    back: list[dict[str, Any]] = []
    forward: list[dict[str, Any]] = []
    seen = {(origin.dataset.name, row)}
    for other in indexes:
        for mine, theirs in LINKS:
            value = record.get(mine)
            if value is None or isinstance(value, (dict, list)) or other.types.get(theirs) != "VARCHAR":
                continue
            if other is origin and mine != "problem_id":
                continue
            if mine == theirs == "problem_id" and other.dataset.kind != "eval":
                continue
            wanted = [c for c in ("preview", "outcome", "reject_reason", "influence.rank", "parse_error", "correct",
                                  "judge.score", "judge.error", "id") if c in other.types]
            found = other.cursor().execute(
                f'SELECT _row, {", ".join(chr(34) + c + chr(34) for c in wanted)} FROM records '
                f'WHERE "{theirs}" = ? ORDER BY _row LIMIT {MATCHES}', [str(value)]).fetchall()
            for values in found:
                item_row, named = values[0], dict(zip(wanted, values[1:]))
                if (other.dataset.name, item_row) in seen:
                    continue
                seen.add((other.dataset.name, item_row))
                upstream = other.dataset.rank < origin.dataset.rank
                items = back if upstream else forward
                base = {"dataset": other.dataset.name, "stage": other.dataset.stage or other.dataset.kind,
                        "row": item_row, "id": named.get("id"), "summary": named.get("preview") or ""}
                if other.dataset.kind == "distill" and mine == "item_key" and upstream:
                    items.append({**base, "relation": "stage prompt"})
                items.append({**base, "relation": relation(other, named)})
    if record.get("prompt_id") and not any(i["relation"] == "stage prompt" for i in back):
        if (prompt := stage_prompt(origin, record, back, indexes)) is not None:
            back.insert(0, prompt)
    for other in indexes:
        if other.dataset.kind == "pretrain" and record.get("id") is not None:
            forward += pretrain_uses(other, str(record["id"]))
    return {"back": back, "forward": forward}


def stage_prompt(origin: DatasetIndex, record: dict[str, Any], back: list[dict[str, Any]],
                 indexes: list[DatasetIndex]) -> dict[str, Any] | None:
    """The prompt this record was written from, rendered again from its source text window with
    the prompt library of the run's config, when that library still gives the record's
    ``prompt_id`` (the same wording); otherwise it says the wording is not at hand."""
    from data.stage_prompts.library import PromptLibrary

    item = {"dataset": None, "stage": None, "row": None, "id": record["prompt_id"], "relation": "stage prompt"}
    config = origin.dataset.manifest.get("config", {})
    stage, variant = record.get("stage"), record.get("variant")
    source = next((i for i in back if i["relation"].startswith("source text")), None)
    try:
        library = PromptLibrary.load(config.get("stages_file"), config.get("variants_file"))
        same = library.prompt_id(stage, variant) == record["prompt_id"]
    except Exception:  # another run's library, moved or edited: say so rather than guess
        same = False
    if not same or source is None:
        item["summary"] = f"{stage} / {variant} prompt {record['prompt_id']}: " + (
            "its source text is not among these datasets" if same else "not the wording of the library at hand")
        return item
    by_name = {index.dataset.name: index for index in indexes}
    text = by_name[source["dataset"]].record(source["row"])[2].get("text") or ""
    start, end = (record.get("window") or [0, len(text)])[:2]
    item["summary"] = library.render(stage, variant, text[start:end])
    return item


# --------------------------------------------------------------------------- pretraining


def pretrain_uses(index: DatasetIndex, record_id: str) -> list[dict[str, Any]]:
    if not _has_documents(index):
        return []
    found = index.cursor().execute("SELECT source, path, line, tokens FROM documents WHERE doc_id = ? LIMIT ?",
                                   [record_id, MATCHES]).fetchall()
    return [{"dataset": index.dataset.name, "stage": index.dataset.stage, "row": None, "id": record_id,
             "relation": "used in pretrain",
             "summary": f"source {source}: {Path(path).name}:{line}, {tokens} tokens"}
            for source, path, line, tokens in found]


def _has_documents(index: DatasetIndex) -> bool:
    return bool(index.cursor().execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'documents'").fetchone()[0])


def index_pretrain_documents(index: DatasetIndex) -> None:
    """The tokenized folder's documents (``documents.npy``: source, file, line, ..., length) with
    the id of the row each came from, read once from the source files and kept in the index."""
    from pretrain.tokenize import INDEX_COLUMNS, INDEX_FILE

    folder = index.dataset.path
    documents = folder / INDEX_FILE
    if not documents.is_file():
        return  # not finished yet: nothing was used
    stamp = str(documents.stat().st_mtime)
    cur = index.cursor()
    done = cur.execute("SELECT value FROM meta WHERE key = 'documents'").fetchone()
    if done and done[0] == stamp and _has_documents(index):
        return
    table = np.load(documents, mmap_mode="r")
    column = {name: k for k, name in enumerate(INDEX_COLUMNS)}
    sources = index.dataset.manifest.get("config", {}).get("sources", [])
    names = [s.get("name") for s in _json(folder / "sources.json").get("sources", [])]
    rows: list[tuple] = []
    for k, source in enumerate(sources):
        files = _source_files(source, folder)
        mine = table[table[:, column["source"]] == k]
        for j, path in enumerate(files):
            lines = mine[mine[:, column["file"]] == j]
            if not len(lines):
                continue
            wanted = {int(line): int(length) for line, length in zip(lines[:, column["line"]], lines[:, column["length"]])}
            for line, record_id in _ids_at(path, wanted):
                name = names[k] if k < len(names) and names[k] else str(k)
                rows.append((record_id, name, str(path), line, wanted[line]))
    cur.execute("DROP TABLE IF EXISTS documents")
    cur.execute("CREATE TABLE documents (doc_id VARCHAR, source VARCHAR, path VARCHAR, line BIGINT, tokens BIGINT)")
    if rows:
        cur.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)", rows)
    cur.execute("INSERT OR REPLACE INTO meta VALUES ('documents', ?)", [stamp])


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _source_files(source: dict[str, Any], folder: Path) -> list[Path]:
    """The files a pretrain source read, in the tokenizer's order; relative paths are tried from
    here and from the folders above the tokenized folder (the run's working directory)."""
    from data.corpus import resolve_sources
    from data.errors import InputError
    from pretrain.config import Source
    from pretrain.tokenize import source_paths

    bases = [Path.cwd(), *folder.resolve().parents]
    paths = []
    for path in source.get("paths", []):
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = next((base / path for base in bases if (base / path).exists()), candidate)
        paths.append(str(candidate))
    try:
        return [Path(p) for p in resolve_sources(source_paths(Source.model_validate({**source, "paths": paths})))]
    except (InputError, ValueError):
        return []


def _ids_at(path: Path, lines: dict[int, int]):
    """(line, id) for the wanted 1-based lines of a JSONL file."""
    last = max(lines)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number > last:
                break
            if number in lines:
                try:
                    record_id = json.loads(raw).get("id")
                except (ValueError, AttributeError):
                    continue
                if record_id is not None:
                    yield number, str(record_id)
