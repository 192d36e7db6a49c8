"""`mathsynth generate` as a user runs it: a subprocess over a corpus, killed and rerun."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_when_written, sample_texts, write_jsonl

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING"}


def make_run(tmp_path: Path, model: Path, corpus: Path, output: str, **extra) -> Path:
    config = {
        "input": {"paths": [str(corpus)], **extra.pop("input", {})},
        "prompt": {"template": "Math content:\n{{ text }}\n\n## Question\n", "window_chars": 200},
        "engine": {"kind": "hf", "model": str(model), "batch_size": 8},
        "sampling": {"max_tokens": 24, "n": 2, "seed": 7, **extra.pop("sampling", {})},
        "output": str(tmp_path / output),
    }
    path = tmp_path / f"{output}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def mathsynth(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=ENV, **kwargs)


def read_parts(folder: Path) -> list[dict]:
    rows = []
    for part in sorted(folder.glob("part-*.jsonl")):
        for line in part.read_text().splitlines():
            rows.append(json.loads(line))  # a torn or invalid line fails here
    return rows


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(sample_texts(160))])


def test_generate_writes_traceable_records_and_a_manifest(tmp_path, tiny_model, corpus):
    result = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, "out", input={"limit": 20})))
    assert result.returncode == 0, result.stderr
    assert "40 records from 20 documents (complete)" in result.stdout
    rows = read_parts(tmp_path / "out")
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    first = rows[0]
    assert first["input_id"].startswith("doc") and first["prompt"].startswith("Math content:")
    assert first["sample_index"] in (0, 1) and first["window"] == [0, 200] and first["model"] == str(tiny_model)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["records"] == 40
    assert manifest["usage"]["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in rows) > 0
    # A finished run is a no-op when rerun.
    again = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, "out", input={"limit": 20})))
    assert again.returncode == 0 and len(read_parts(tmp_path / "out")) == 40


def test_kill_minus_9_then_rerun_gives_the_uninterrupted_ids(tmp_path, tiny_model, corpus):
    config = make_run(tmp_path, tiny_model, corpus, "killed")
    part = tmp_path / "killed" / "part-00000-of-00001.jsonl"
    written_before = kill_when_written([sys.executable, "-m", "pipeline", "generate", "--config", str(config)], part, 60, ENV)
    assert 60 <= written_before < 320, "the kill must land in the middle of the run"
    assert not (tmp_path / "killed" / "part-00000-of-00001.done").exists()

    rerun = mathsynth("generate", "--config", str(config))
    assert rerun.returncode == 0, rerun.stderr
    uninterrupted = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, "clean")))
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    killed_ids = [r["id"] for r in read_parts(tmp_path / "killed")]
    clean_ids = [r["id"] for r in read_parts(tmp_path / "clean")]
    assert len(killed_ids) == len(set(killed_ids)) == 320  # no duplicates, no torn records
    assert set(killed_ids) == set(clean_ids)
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["resumed_done"] >= written_before // 2 - 8


def test_two_shards_give_the_same_union_as_one(tmp_path, tiny_model, corpus):
    config = make_run(tmp_path, tiny_model, corpus, "sharded", input={"limit": 30})
    shards = [
        subprocess.Popen([sys.executable, "-m", "pipeline", "generate", "--config", str(config), "--shard", f"{i}/2"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    assert all(p.wait() == 0 for p in shards), [p.stderr.read() for p in shards]
    single = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, "single", input={"limit": 30})))
    assert single.returncode == 0, single.stderr
    sharded = [r["id"] for r in read_parts(tmp_path / "sharded")]
    assert len(sharded) == len(set(sharded)) == 60
    assert set(sharded) == {r["id"] for r in read_parts(tmp_path / "single")}
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 2 and manifest["counts"]["documents"] == 30


def test_malformed_corpus_fails_in_one_line_or_is_counted_under_skip(tmp_path, tiny_model):
    corpus = write_jsonl(tmp_path / "bad.jsonl", [
        {"id": "a", "text": "one plus one"},
        '{"id": "b", "text": "broken',
        {"id": "c"},
        {"id": "d", "text": "two plus two"},
        {"id": "e", "text": "   "},
    ])
    failing = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, "fail")))
    assert failing.returncode == 2
    errors = [line for line in failing.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"mathsynth generate: error: {corpus}:2: malformed JSON (Unterminated string starting at: column 21)"]
    assert not list((tmp_path / "fail").glob("*.done"))

    skipping = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, "skip", input={"policy": "skip"})))
    assert skipping.returncode == 0, skipping.stderr
    assert {r["input_id"] for r in read_parts(tmp_path / "skip")} == {"a", "d"}
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    assert sum(manifest["counts"]["corpus_skipped"].values()) == 3
