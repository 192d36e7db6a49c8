"""The runner's promises, as a user meets them through `mathsynth generate` (the same runner
drives every stage): one process per shard, mistakes fixable on the same folder, nothing
written where it does not belong, an empty input said out loud."""
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sample_texts, write_jsonl

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING"}


def make_run(tmp_path: Path, model: Path, corpus, output: Path, **extra) -> Path:
    config = {
        "input": {"paths": [str(corpus)], **extra.pop("input", {})},
        "prompt": {"template": "Math content:\n{{ text }}\n\n## Question\n", "window_chars": 200},
        "engine": {"kind": "hf", "model": str(model), "batch_size": 8},
        "sampling": {"max_tokens": 16, "n": 1, "seed": 7},
        "output": str(output),
    }
    path = tmp_path / f"{output.name}.yaml"
    path.write_text(json.dumps(config))
    return path


def mathsynth(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=ENV)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def ids(folder: Path) -> list[str]:
    return [json.loads(line)["id"] for part in sorted(folder.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus" / "texts.jsonl",
                       [{"id": f"doc{i}", "text": t} for i, t in enumerate(sample_texts(40))])


def test_a_second_process_on_a_running_shard_is_refused_and_writes_nothing(tmp_path, tiny_model, corpus):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".part-00000-of-00001.lock", "a") as held:  # what a running first process holds
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242 on node7 since earlier")
        held.flush()
        line = one_line_error(mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, out))))
    assert "shard 0/1 is being run by another process" in line and "pid 4242 on node7" in line
    assert ids(out) == [] and not list(out.glob("*.done"))


def test_two_processes_started_on_one_shard_write_every_record_once(tmp_path, tiny_model, corpus):
    config = make_run(tmp_path, tiny_model, corpus, tmp_path / "out")
    command = [sys.executable, "-m", "pipeline", "generate", "--config", str(config)]
    first, second = (subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # [0, 0]: the second started after the first had sealed
    if codes == [0, 2]:
        assert "being run by another process" in next(err for code, err in results if code == 2)
    written = ids(tmp_path / "out")
    assert len(written) == len(set(written)) == 40


def test_a_wrong_input_path_then_the_right_one_runs_in_the_same_folder(tmp_path, tiny_model, corpus):
    out = tmp_path / "out"
    line = one_line_error(mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, tmp_path / "nope.jsonl", out))))
    assert "nope.jsonl: no such file or folder" in line
    assert not out.exists() or not any(out.iterdir())  # nothing written before the input was checked
    fixed = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, out)))
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert len(ids(out)) == 40


def test_a_bad_row_then_policy_skip_finishes_the_same_folder(tmp_path, tiny_model):
    rows = [{"id": f"doc{i}", "text": t} for i, t in enumerate(sample_texts(12))]
    rows.insert(9, "{not json")
    corpus = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "out"
    line = one_line_error(mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, out))))
    assert "bad.jsonl:10" in line
    skipped = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, out, input={"policy": "skip"})))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert len(ids(out)) == 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["corpus_skipped"] == {"malformed JSON": 1}


def test_a_changed_config_is_still_refused_once_the_folder_holds_records(tmp_path, tiny_model, corpus):
    out = tmp_path / "out"
    assert mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, out))).returncode == 0
    config = json.loads((tmp_path / "out.yaml").read_text())
    config["sampling"]["seed"] = 8
    (tmp_path / "out.yaml").write_text(json.dumps(config))
    line = one_line_error(mathsynth("generate", "--config", str(tmp_path / "out.yaml")))
    assert "different config (changed: sampling.seed)" in line


@pytest.mark.parametrize("where", ["inside", "equal"])
def test_an_output_inside_or_equal_to_an_input_folder_is_refused(tmp_path, tiny_model, corpus, where):
    out = corpus.parent / "generated" if where == "inside" else corpus.parent
    config = make_run(tmp_path, tiny_model, corpus.parent, out)
    line = one_line_error(mathsynth("generate", "--config", str(config)))
    assert "is the input" in line and "or inside it" in line
    assert sorted(p.name for p in corpus.parent.iterdir()) == ["texts.jsonl"]


def test_an_output_that_is_a_file_or_under_proc_is_one_line(tmp_path, tiny_model, corpus):
    existing = tmp_path / "a-file"
    existing.write_text("mine\n")
    line = one_line_error(mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, existing))))
    assert "is an existing file" in line and existing.read_text() == "mine\n"
    line = one_line_error(mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, Path("/proc/mathsynth-out")))))
    assert "kernel file system" in line


def test_a_folder_of_someone_elses_files_is_not_written_into(tmp_path, tiny_model):
    """`eval run --output` an existing folder that is not an eval output (here: a user's notes)."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "report.md").write_text("my own report\n")
    result = mathsynth("eval", "run", "--model", str(tiny_model), "--engine", "hf", "--benchmarks", "gsm8k",
                       "--limit", "2", "--set", "sampling.max_tokens=4", "--output", str(folder))
    line = one_line_error(result)
    assert "holds files and is not a stage output" in line
    assert sorted(p.name for p in folder.iterdir()) == ["report.md"] and (folder / "report.md").read_text() == "my own report\n"


def test_an_empty_input_is_said_not_silently_sealed(tmp_path, tiny_model):
    corpus = write_jsonl(tmp_path / "empty.jsonl", [{"id": "a", "text": ""}, {"id": "b", "text": "   "}])
    out = tmp_path / "out"
    result = mathsynth("generate", "--config", str(make_run(tmp_path, tiny_model, corpus, out, input={"policy": "skip"})))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning" in result.stdout.lower() and "no document" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records"] == 0
    assert manifest["warnings"] and "2 skipped" in manifest["warnings"][0]


def test_status_reads_pending_partial_running_and_complete_from_the_folder(tmp_path, tiny_model, corpus):
    out = tmp_path / "out"
    config = str(make_run(tmp_path, tiny_model, corpus, out))
    assert mathsynth("generate", "--config", config, "--shard", "0/3").returncode == 0
    with open(out / ".part-00002-of-00003.lock", "a") as held:  # shard 2 is being run right now
        fcntl.flock(held, fcntl.LOCK_EX)
        partial = mathsynth("status", str(out))
    assert partial.returncode == 1
    assert partial.stdout.strip() == f"{out}: generate partial (1 of 3 shards sealed; missing 1-2; running now: 2)"
    for index in (1, 2):
        assert mathsynth("generate", "--config", config, "--shard", f"{index}/3").returncode == 0
    complete = mathsynth("status", str(out))
    assert complete.returncode == 0 and complete.stdout.strip() == f"{out}: generate complete"
    line = one_line_error(mathsynth("status", str(tmp_path)))
    assert "not a stage output" in line
