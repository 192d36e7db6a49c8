"""Every problem a user can fix ends the CLI with exit 2 and one stderr line naming the file
and line, the key or the variable: never a traceback, never a hang."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, sample_texts, write_jsonl

from data.shards import MAX_SHARDS, Shard
from data.storage import StageOutput
from pipeline.cli import main

GENERATE_CONFIG = """
input: {paths: [corpus.jsonl]}
prompt: {template: "Q: {{ text }}"}
engine: {kind: hf, model: /nowhere}
output: out
"""


def one_error_line(argv: list[str], capsys) -> str:
    """Run the CLI in this process: a traceback would raise here instead of returning 2."""
    capsys.readouterr()
    assert main(["--log-level", "ERROR", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _generate_config(tmp_path, text: str = GENERATE_CONFIG):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_a_config_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"input: {paths: [corpus.jsonl]}\nprompt: {template: \"Q: \xe9t\xe9 {{ text }}\"}\n")
    line = one_error_line(["generate", "--config", str(path)], capsys)
    assert line.startswith(f"mathsynth generate: error: {path}:2: not UTF-8")


def test_a_pairs_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"gold": "1", "pred": "1"}\n{"gold": "\xff", "pred": "2"}\n')
    line = one_error_line(["eval", "grade", "--pairs", str(path)], capsys)
    assert line.startswith(f"mathsynth eval: error: {path}:2: not UTF-8")


def test_a_predictions_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b'{"id": "0", "pred": "1"}\n\n{"id": "1", "pred": "\x80"}\n')
    line = one_error_line(["eval", "score", "--benchmark", "gsm8k", "--predictions", str(path), "--field", "pred",
                           "--id-field", "id"], capsys)
    assert line.startswith(f"mathsynth eval: error: {path}:3: not UTF-8")


@pytest.mark.parametrize("variable", ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"])
def test_a_slurm_array_variable_that_is_not_an_integer_is_named(tmp_path, capsys, monkeypatch, variable):
    for name, value in {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
                        variable: "1-4"}.items():
        monkeypatch.setenv(name, value)
    line = one_error_line(["generate", "--config", str(_generate_config(tmp_path))], capsys)
    assert line.startswith(f"mathsynth generate: error: {variable}='1-4': expected an integer")


def test_a_huge_shard_count_is_refused_at_once(tmp_path, capsys):
    line = one_error_line(["generate", "--config", str(_generate_config(tmp_path)),
                           "--shard", "0/100000000000000000000"], capsys)
    assert line == (f"mathsynth generate: error: --shard '0/100000000000000000000': "
                    f"N must be at most {MAX_SHARDS}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("holds", ["nothing", "another stage", "a file"])
def test_eval_report_of_a_folder_that_is_not_an_eval_output(tmp_path, capsys, holds):
    folder = tmp_path / "out"
    if holds == "another stage":
        output = StageOutput(folder, stage="synth_generate", config={"a": 1})
        output.finish_shard(Shard(0, 1), output.open_shard(Shard(0, 1)), {})
    elif holds == "a file":
        folder.write_text("x")
    line = one_error_line(["eval", "report", "--output", str(folder)], capsys)
    expected = {"nothing": "not a stage output (no manifest.json)", "a file": "not a stage output (no manifest.json)",
                "another stage": "holds a synth_generate output, not an eval run"}[holds]
    assert line == f"mathsynth eval: error: {folder}: {expected}"


def test_eval_score_out_that_is_a_folder(tmp_path, capsys):
    predictions = write_jsonl(tmp_path / "predictions.jsonl", [{"id": "0", "pred": "The answer is 18."}])
    line = one_error_line(["eval", "score", "--benchmark", "gsm8k", "--predictions", str(predictions),
                           "--field", "pred", "--id-field", "id", "--out", str(tmp_path)], capsys)
    assert line == f"mathsynth eval: error: --out {tmp_path}: is a folder; give a file path"


@pytest.mark.parametrize("stage, config, key, weights", [
    ("distill", "distill-example.yaml", "variants", "{cot: 0, tool: 0}"),
    ("distill", "distill-example.yaml", "stages", "{grade_school: 0, aime: 0}"),
    ("synth", "synth-generate-example.yaml", "variants", "{cot: 0, tool: 0.0}"),
])
def test_all_education_stage_weights_zero_is_a_config_error(tmp_path, capsys, monkeypatch, stage, config, key, weights):
    monkeypatch.chdir(tmp_path)  # the example's relative output folder must not land in the repository
    path = REPO_ROOT / "configs" / config
    argv = [stage, "generate"] if stage == "synth" else [stage]
    line = one_error_line([*argv, "--config", str(path), "--set", f"{key}={weights}"], capsys)
    assert line.startswith(f"mathsynth {stage}: error: {path}: {key}: ") and "positive weight" in line


def _synth_generate_output(folder, records):
    output = StageOutput(folder, stage="synth_generate", config={"test": 1})
    writer = output.open_shard(Shard(0, 1))
    for record in records:
        writer.write(record)
    output.finish_shard(Shard(0, 1), writer, {})
    return output.part_path(Shard(0, 1))


@pytest.mark.parametrize("field, value", [("problem", 42), ("solution", ["a", "list"]), ("final_answer", {"x": 1})])
def test_synth_filter_names_file_line_and_field_of_a_wrong_type(tmp_path, capsys, field, value):
    good = {"id": "a", "item_key": "w1", "problem": "What is two plus two, said in full words here?",
            "solution": "Two plus two is four, as anyone can count on their fingers. \\boxed{4}",
            "final_answer": "4", "variant": "cot", "stage": "grade_school"}
    part = _synth_generate_output(tmp_path / "generated", [good, {**good, "id": "b", field: value}])
    line = one_error_line(["synth", "filter", "--config", str(REPO_ROOT / "configs" / "synth-filter-example.yaml"),
                           "--set", f"input={tmp_path / 'generated'}", "--set", f"output={tmp_path / 'filtered'}",
                           "--set", "decontamination.enabled=false", "--set", "code_check.enabled=false"], capsys)
    assert line == (f"mathsynth synth: error: {part}:2: field {field!r} must be a string or null, "
                    f"got {type(value).__name__}")


def test_a_corpus_row_whose_text_is_not_a_string_names_file_and_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": "fine"}, {"text": ["a", "list"]}])
    line = one_error_line(["distill", "--config", str(REPO_ROOT / "configs" / "distill-example.yaml"),
                           "--set", f"input.paths=[{tmp_path / 'corpus.jsonl'}]", "--set", f"output={tmp_path / 'out'}",
                           "--dry-run"], capsys)
    assert line == f"mathsynth distill: error: {tmp_path / 'corpus.jsonl'}:2: text not a string ('text' is an array)"


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a disk that really fills up, rather than a mocked write."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small disk")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_one_line_and_a_rerun_after_freeing_space_completes(tmp_path, capsys, tiny_model, small_disk):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": text} for text in sample_texts(40)])
    output = small_disk / "out"
    config = _generate_config(tmp_path, "\n".join([
        f"input: {{paths: [{corpus}]}}",
        'prompt: {template: "Q: {{ text }}"}',
        f"engine: {{kind: hf, model: {tiny_model}}}",
        "sampling: {max_tokens: 32}",
        f"output: {output}",
    ]))
    filler = small_disk / "filler"
    filler.write_bytes(bytes(224 * 1024))  # 32 KiB left: room for about 20 of the 40 records (~1.5 KB each)
    part = output / "part-00000-of-00001.jsonl"

    line = one_error_line(["generate", "--config", str(config)], capsys)
    assert line == (f"mathsynth generate: error: {part}: no space left on device; "
                    "free space and rerun: finished work is kept")
    assert 0 < part.read_bytes().count(b"\n") < 40

    filler.unlink()
    assert main(["--log-level", "ERROR", "generate", "--config", str(config)]) == 0
    ids = [json.loads(row)["id"] for row in part.read_text(encoding="utf-8").splitlines()]
    assert len(ids) == 40 == len(set(ids))  # the torn record was redone; none lost, none twice
    assert not [p.name for p in output.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("stage, key", [
    (["distill"], "validation.min_problem_wrods"),
    (["distill"], "self_consistency.kk"),
    (["synth", "generate"], "sampling.cot.temprature"),
    (["synth", "filter"], "length.problem_wrods"),
    (["distill"], "sandbox.wrokers"),
    (["synth", "filter"], "code_check.sandbox.memroy_mb"),
])
def test_a_misspelled_key_under_a_nested_config_is_refused_before_anything_runs(tmp_path, capsys, stage, key):
    example = {"distill": "distill-example.yaml", "generate": "synth-generate-example.yaml",
               "filter": "synth-filter-example.yaml"}[stage[-1]]
    config = Path(__file__).resolve().parent.parent / "configs" / example
    out = tmp_path / "out"
    line = one_error_line([*stage, "--config", str(config), "--set", f"{key}=3", "--set", f"output={out}"], capsys)
    assert line.endswith(f"{key}: unknown key") and not out.exists()
