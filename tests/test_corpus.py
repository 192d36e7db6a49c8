"""Corpus readers: formats agree, bad input is reported on one line, shards partition, memory stays flat."""
from __future__ import annotations

import gzip
import json
import re
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data.corpus import CorpusStats, iter_documents, resolve_sources
from data.errors import InputError
from data.records import content_id
from data.samples import SAMPLE_CORPUS
from data.shards import Shard


def make_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        # ids: mostly given, some empty or null so the content hash takes over
        doc_id = "" if i % 7 == 3 else None if i % 7 == 5 else f"doc-{i}"
        rows.append({"id": doc_id, "text": f"Problem {i}: compute $\\sum_k k^{i % 5}$.\nÉtape {i}.",
                     "source": "unit", "score": i, "tags": ["algebra", f"t{i % 3}"],
                     "info": {"url": f"https://example.org/q/{i}"}})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_zst(path: Path, rows: list[dict]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    return path


def write_parquet(path: Path, rows: list[dict], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_hf(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def triples(docs) -> list[tuple]:
    return [(d.id, d.text, json.dumps(d.meta, sort_keys=True)) for d in docs]


def expected(rows: list[dict]) -> list[tuple]:
    out = []
    for r in rows:
        meta = {k: v for k, v in r.items() if k not in ("id", "text")}
        out.append((r["id"] or content_id(r["text"]), r["text"], json.dumps(meta, sort_keys=True)))
    return out


# --- formats ------------------------------------------------------------------------------------


def test_every_format_gives_the_same_documents(tmp_path):
    rows = make_rows(40)
    sources = {
        "jsonl": write_jsonl(tmp_path / "a.jsonl", rows),
        "zst": write_zst(tmp_path / "a.jsonl.zst", rows),
        "gz": tmp_path / "a.jsonl.gz",
        "parquet": write_parquet(tmp_path / "a.parquet", rows, row_group_size=16),
        "hf": write_hf(tmp_path / "hf", rows),
    }
    sources["gz"].write_bytes(gzip.compress((tmp_path / "a.jsonl").read_bytes()))
    want = expected(rows)
    for name, path in sources.items():
        docs = list(iter_documents(path))
        assert triples(docs) == want, name
        assert [d.location.line for d in docs] == list(range(1, 41)), name
        assert all(d.location.path == str(path) for d in docs), name
        json.dumps([d.to_dict() for d in docs])  # meta stays JSON-serialisable


def test_glob_over_a_mix_of_formats_reads_files_in_sorted_order(tmp_path):
    rows = make_rows(40)
    write_jsonl(tmp_path / "p0.jsonl", rows[:10])
    write_zst(tmp_path / "p1.jsonl.zst", rows[10:20])
    write_parquet(tmp_path / "p2.parquet", rows[20:30])
    write_hf(tmp_path / "p3", rows[30:])
    (tmp_path / "notes.txt").write_text("not a corpus file")
    for pattern in (f"{tmp_path}/p*", f"{tmp_path}/**"):  # ** also matches the folders: no duplicates
        assert triples(iter_documents(pattern)) == expected(rows), pattern
    assert triples(iter_documents(tmp_path)) == expected(rows)  # a plain folder = its files, sorted
    assert resolve_sources([tmp_path / "p1.jsonl.zst", tmp_path / "p0.jsonl"]) == [
        str(tmp_path / "p0.jsonl"), str(tmp_path / "p1.jsonl.zst")]


def test_folder_walk_skips_hidden_and_underscore_files(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "b.jsonl", make_rows(2))
    write_jsonl(tmp_path / "a.jsonl", make_rows(3))
    write_jsonl(tmp_path / ".a.jsonl.tmp.jsonl", make_rows(1))
    write_jsonl(tmp_path / "_sources.jsonl", make_rows(1))
    assert resolve_sources(tmp_path) == [str(tmp_path / "a.jsonl"), str(tmp_path / "sub" / "b.jsonl")]


def test_ids_come_from_the_id_field_or_the_text_hash(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [
        {"id": "x-1", "text": "one"}, {"id": 42, "text": "two"}, {"id": "  ", "text": "three"},
        {"text": "four"}, {"id": None, "text": "five"}, {"key": "k6", "text": "six"}])
    assert [d.id for d in iter_documents(path)] == [
        "x-1", "42", content_id("three"), content_id("four"), content_id("five"), content_id("six")]
    assert [d.id for d in iter_documents(path, id_field="key")][-1] == "k6"
    assert [d.id for d in iter_documents(path, id_field=None)] == [
        content_id(t) for t in ("one", "two", "three", "four", "five", "six")]


def test_text_field_and_meta_fields(tmp_path):
    rows = [{"uid": "u1", "body": "text one", "a": 1, "b": {"c": 2}}]
    for path in (write_jsonl(tmp_path / "m.jsonl", rows), write_parquet(tmp_path / "m.parquet", rows)):
        (doc,) = iter_documents(path, text_field="body", id_field="uid")
        assert (doc.id, doc.text, doc.meta) == ("u1", "text one", {"a": 1, "b": {"c": 2}})
        (doc,) = iter_documents(path, text_field="body", id_field="uid", meta_fields=["b", "missing"])
        assert doc.meta == {"b": {"c": 2}}


def test_shipped_sample_corpus_reads_fully_and_matches_its_readme():
    stats = CorpusStats()
    docs = list(iter_documents(SAMPLE_CORPUS, policy="fail", stats=stats))
    assert len(docs) == 1298 == stats.yielded == stats.read and not stats.skipped
    assert "**Rows: 1,298**" in (SAMPLE_CORPUS.parent / "README.md").read_text()
    assert len({d.id for d in docs}) == len(docs)
    assert {d.meta["source"] for d in docs} == {"math.stackexchange.com", "mathoverflow.net"}
    assert all(d.meta["meta"]["url"].startswith("https://") and "CC BY-SA" in d.meta["meta"]["license"]
               for d in docs)
    dropped = {"math.stackexchange.com:393646", "math.stackexchange.com:1395970"}  # benchmark overlap
    assert not dropped & {d.id for d in docs}


# --- bad input ----------------------------------------------------------------------------------


BAD_LINES = [
    (b'{"id": "x" "text": "y"}', "malformed JSON (Expecting ',' delimiter: column 12)"),
    (b'["a list"]', "not a JSON object (got an array)"),
    (b'{"id": "x"}', "missing text field ('text')"),
    (b'{"text": 17}', "text not a string ('text' is a number)"),
    (b'{"text": " \\n\\t "}', "empty text"),
    (b'{"text": "' + b"x" * 101 + b'"}', "text too long (101 chars > max_chars 100)"),
    (b'{"text": "caf\xe9"}', "undecodable bytes (invalid utf-8: invalid continuation byte at byte 13)"),
]


@pytest.mark.parametrize("bad_line, reason", BAD_LINES, ids=[r.split(" (")[0] for _, r in BAD_LINES])
def test_fail_policy_raises_one_line_path_line_reason(tmp_path, bad_line, reason):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "good one"}\n\n' + bad_line + b'\n{"text": "never reached"}\n')
    stream = iter_documents(path, max_chars=100)
    assert next(stream).text == "good one"  # rows before the bad one were already streamed
    with pytest.raises(InputError) as caught:
        next(stream)
    message = str(caught.value)
    assert message == f"{path}:3: {reason}"  # line 2 is blank and still counted
    assert "\n" not in message


def test_skip_policy_counts_by_reason_and_yields_the_good_rows(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [b'{"text": "a"}', b"", *(line for line, _ in BAD_LINES), b'{"text": "b"}', b"   ", b"{oops",
             b'{"text": "c"}']
    path.write_bytes(b"\n".join(lines))  # no final newline: the last row still counts
    stats = CorpusStats()
    docs = list(iter_documents(path, policy="skip", max_chars=100, stats=stats))
    assert [d.text for d in docs] == ["a", "b", "c"]
    assert [d.location.line for d in docs] == [1, 10, 13]
    assert stats.skipped == {"malformed JSON": 2, "not a JSON object": 1, "missing text field": 1,
                             "text not a string": 1, "empty text": 1, "text too long": 1, "undecodable bytes": 1}
    assert (stats.read, stats.yielded, stats.skipped_total) == (11, 3, 8)
    assert stats.first_skipped[0] == f"{path}:3: malformed JSON (Expecting ',' delimiter: column 12)"
    assert len(stats.first_skipped) == stats.keep_examples
    summary = stats.summary()
    assert "\n" not in summary and "3 yielded" in summary and "malformed JSON: 2" in summary


def test_bad_sources_name_the_path(tmp_path):
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}/nope.jsonl: no such file or folder")):
        iter_documents(tmp_path / "nope.jsonl")  # checked at call time, before any row is read
    with pytest.raises(InputError, match=re.escape(f"{tmp_path}/*.jsonl: glob matches nothing")):
        iter_documents(f"{tmp_path}/*.jsonl")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="table.csv: unsupported file type"):
        iter_documents(tmp_path / "table.csv")
    with pytest.raises(InputError, match="glob matches no corpus files"):
        iter_documents(f"{tmp_path}/*.csv")
    with pytest.raises(ValueError, match="policy='drop'"):
        iter_documents(tmp_path / "table.csv", policy="drop")


def test_saved_dataset_dict_asks_for_a_split(tmp_path):
    import datasets

    datasets.DatasetDict(train=datasets.Dataset.from_list(make_rows(2))).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"a saved DatasetDict; name one split folder \(train\)"):
        iter_documents(tmp_path / "dd")
    assert len(list(iter_documents(tmp_path / "dd" / "train"))) == 2


def _truncated_zst(path: Path, rows: list[dict]) -> Path:
    compressed = zstandard.ZstdCompressor().compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    path.write_bytes(compressed[: len(compressed) * 2 // 3])
    return path


def test_truncated_zst_is_a_clear_error_not_a_silent_short_read(tmp_path):
    rows = make_rows(3000)
    path = _truncated_zst(tmp_path / "torn.jsonl.zst", rows)
    stream = iter_documents(path)
    docs = []
    with pytest.raises(InputError) as caught:
        for doc in stream:
            docs.append(doc)
    assert triples(docs) == expected(rows[: len(docs)])  # only whole lines came out
    assert 0 < len(docs) < len(rows)
    assert str(caught.value) == (f"{path}:{len(docs) + 1}: truncated or corrupt file "
                                 "(ZstdError: zstd stream ends mid-frame: file truncated)")
    stats = CorpusStats()
    assert len(list(iter_documents(path, policy="skip", stats=stats))) == len(docs)
    assert stats.skipped == {"truncated or corrupt file": 1}


def test_concatenated_zst_frames_and_truncated_gzip(tmp_path):
    rows = make_rows(30)
    data = [("".join(json.dumps(r) + "\n" for r in part)).encode() for part in (rows[:10], rows[10:])]
    frames = tmp_path / "frames.jsonl.zst"
    frames.write_bytes(b"".join(zstandard.ZstdCompressor().compress(d) for d in data))
    assert triples(iter_documents(frames)) == expected(rows)
    torn_gz = tmp_path / "torn.jsonl.gz"
    torn_gz.write_bytes(gzip.compress(b"".join(data))[:-12])
    with pytest.raises(InputError, match=r"torn\.jsonl\.gz:\d+: truncated or corrupt file \(EOFError"):
        list(iter_documents(torn_gz))


# --- sharding -----------------------------------------------------------------------------------


def _shards(sources, count: int, **kwargs):
    per_shard, stats = [], []
    for index in range(count):
        stats.append(CorpusStats())
        per_shard.append(list(iter_documents(sources, shard=Shard(index, count), stats=stats[-1], **kwargs)))
    return per_shard, stats


def _assert_partition(per_shard, whole):
    keys = [(d.location.path, d.location.line) for docs in per_shard for d in docs]
    assert len(keys) == len(set(keys))  # no row in two shards
    assert sorted(triples(d for docs in per_shard for d in docs)) == sorted(triples(whole))


def test_file_level_sharding_reads_whole_files(tmp_path):
    rows = make_rows(50)
    files = [write_jsonl(tmp_path / f"part-{k}.jsonl", rows[k * 10:(k + 1) * 10]) for k in range(5)]
    whole = list(iter_documents(tmp_path))
    per_shard, stats = _shards(tmp_path, 3)
    _assert_partition(per_shard, whole)
    for index, docs in enumerate(per_shard):
        owned_files = {str(f) for k, f in enumerate(files) if k % 3 == index}
        assert {d.location.path for d in docs} == owned_files
        assert stats[index].files == len(owned_files)  # never opened the others


def test_row_level_sharding_when_fewer_files_than_shards(tmp_path):
    rows = make_rows(2600)
    write_jsonl(tmp_path / "a.jsonl", rows[:100])
    write_parquet(tmp_path / "b.parquet", rows[100:], row_group_size=700)  # batches cross row groups
    whole = list(iter_documents(tmp_path))
    per_shard, stats = _shards(tmp_path, 3)
    _assert_partition(per_shard, whole)
    position = {(d.location.path, d.location.line): p for p, d in enumerate(whole)}
    for index, docs in enumerate(per_shard):
        assert all(position[(d.location.path, d.location.line)] % 3 == index for d in docs)
        assert stats[index].read == len(docs)  # only owned rows are parsed


def test_bad_rows_are_reported_only_by_their_owner(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n{broken\n{"text": "c"}\n{"text": "d"}\n')
    # rows (blank lines are not rows): 0:a 1:b 2:broken 3:c 4:d -> position 2 is shard 0 of 2
    per_shard, stats = _shards(path, 2, policy="skip")
    assert [s.skipped for s in stats] == [{"malformed JSON": 1}, {}]
    assert [[d.text for d in docs] for docs in per_shard] == [["a", "d"], ["b", "c"]]
    with pytest.raises(InputError, match=re.escape(f"{path}:4: malformed JSON")):
        list(iter_documents(path, shard=Shard(0, 2)))
    assert len(list(iter_documents(path, shard=Shard(1, 2)))) == 2  # the other shard is unaffected

    torn = _truncated_zst(tmp_path / "torn.jsonl.zst", make_rows(3000))
    per_shard, stats = _shards(torn, 4, policy="skip")
    assert sum(s.skipped_total for s in stats) == 1
    whole = list(iter_documents(torn, policy="skip"))
    _assert_partition(per_shard, whole)


# --- streaming ----------------------------------------------------------------------------------


def test_memory_stays_flat_on_a_large_file(tmp_path):
    n = 200_000
    line = '{"id": "r%d", "text": "Let x be the %d-th term; show that x^2 - 1 is even or odd.", "score": %d}\n'
    path = tmp_path / "big.jsonl"
    with open(path, "w") as out:
        for start in range(0, n, 10_000):
            out.write("".join(line % (i, i, i) for i in range(start, start + 10_000)))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_documents(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert peak < 2 * 2**20 < size / 5, (peak, size)


def test_a_stage_output_folder_reads_its_parts_only_when_complete(tmp_path):
    from data.shards import Shard
    from data.storage import StageOutput

    output = StageOutput(tmp_path / "up", stage="generate", config={"x": 1}, num_shards=2)
    writer = output.open_shard(Shard(0, 2))
    writer.write({"id": "a", "text": "first"})
    output.finish_shard(Shard(0, 2), writer, {})
    with pytest.raises(InputError, match=r"stage output is incomplete \(shards \[1\] not done\)"):
        list(iter_documents(tmp_path / "up"))
    writer = output.open_shard(Shard(1, 2))
    writer.write({"id": "b", "text": "second"})
    output.finish_shard(Shard(1, 2), writer, {})
    assert [d.id for d in iter_documents(tmp_path / "up")] == ["a", "b"]
