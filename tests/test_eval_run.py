"""`mathsynth eval run|score|grade` end to end, as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_when_written
from test_tool_loop import ScriptedEngine

from data.shards import Shard
from eval.run import EvalConfig, run_eval

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING"}


def mathsynth(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=ENV, **kwargs)


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for part in sorted(folder.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


@pytest.mark.slow
def test_eval_run_with_the_tiny_model_through_vllm(tmp_path, tiny_model):
    out = tmp_path / "eval"
    result = mathsynth(
        "eval", "run", "--model", str(tiny_model), "--engine", "vllm", "--benchmarks", "gsm8k,math500",
        "--setting", "nl", "--limit", "6", "--output", str(out),
        "--set", "engine.dtype=float32", "--set", "engine.max_model_len=2048", "--set", "engine.enforce_eager=true",
        "--set", "sampling.max_tokens=24",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| gsm8k | 6 | 1 |" in result.stdout and "| math500 | 6 | 1 |" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["benchmarks"]["gsm8k"]["overall"]["problems"] == 6
    assert report["model"] == str(tiny_model) and report["setting"] == "nl"
    assert set(report["benchmarks"]["math500"]["by_group"]) == {"level", "subject"}
    rows = rows_of(out)
    assert len(rows) == 12
    for row in rows:  # every number traces back to its rows
        assert row["prompt"].startswith("## Question\n") and row["prompt"].endswith("## Solution\n")
        assert {"completion", "extracted", "correct", "verdict", "gold", "problem_id"} <= set(row)
        assert row["correct"] is False  # a random tiny model does not solve GSM8K


def test_tool_setting_runs_model_code_in_the_sandbox(tmp_path):
    """A scripted model writes code for the first GSM8K problem (gold 18), answers the second
    directly, and writes failing code for the third: rows keep every execution."""
    config = EvalConfig.model_validate({
        "benchmarks": ["gsm8k"], "limit": 3, "setting": "tool", "prompt": "zero_shot",
        "engine": {"kind": "hf", "model": "scripted"}, "output": str(tmp_path / "tool"),
    })
    from eval.run import PromptMaker, item_key, load_records

    records = load_records(config)
    prompt_id = PromptMaker(config).prompt_id()
    keys = [f"{item_key(r, prompt_id)}#0" for r in records]
    engine = ScriptedEngine({
        keys[0]: ["```python\neggs = 16 - 3 - 4\nprint(eggs * 2)\n```", "The answer is \\boxed{18}."],
        keys[1]: ["It takes 2 + 1 = 3 bolts. The answer is 3."],
        keys[2]: ["```python\nprint(1/0)\n```", "I could not compute it. The answer is 5."],
    })
    manifest = run_eval(config, Shard(0, 1), engine=engine)
    assert manifest["complete"]
    rows = {r["problem_id"]: r for r in rows_of(tmp_path / "tool")}
    first, second, third = (rows[r.id] for r in records)
    assert first["correct"] and first["executions"][0]["status"] == "ok" and first["executions"][0]["stdout"].strip() == "18"
    assert "```output\n18\n```" in first["completion"] and first["executions"][0]["isolation"]
    assert second["correct"] and second["executions"] == []
    assert not third["correct"] and third["executions"][0]["status"] == "error"
    report = json.loads((tmp_path / "tool" / "report.json").read_text())
    assert report["benchmarks"]["gsm8k"]["overall"]["correct"] == 2


def test_kill_minus_9_then_rerun_gives_the_same_report(tmp_path, tiny_model):
    def command(output):
        return [sys.executable, "-m", "pipeline", "eval", "run", "--model", str(tiny_model), "--engine", "hf",
                "--benchmarks", "gsm8k,svamp", "--limit", "60", "--output", str(output),
                "--set", "engine.batch_size=1", "--set", "sampling.max_tokens=16"]  # batch 1: greedy is exact

    killed = tmp_path / "killed"
    part = killed / "part-00000-of-00001.jsonl"
    kill_when_written(command(killed), part, 25, ENV)
    assert 25 <= part.read_text().count("\n") < 120, "the kill must land in the middle of the run"

    assert subprocess.run(command(killed), env=ENV, capture_output=True).returncode == 0
    clean = tmp_path / "clean"
    assert subprocess.run(command(clean), env=ENV, capture_output=True).returncode == 0
    killed_rows, clean_rows = rows_of(killed), rows_of(clean)
    assert len(killed_rows) == len({r["id"] for r in killed_rows}) == 120
    report = json.loads((killed / "report.json").read_text())
    assert report["benchmarks"] == json.loads((clean / "report.json").read_text())["benchmarks"]
    key = lambda r: r["id"]  # noqa: E731
    assert [(r["id"], r["completion"], r["correct"]) for r in sorted(killed_rows, key=key)] == \
           [(r["id"], r["completion"], r["correct"]) for r in sorted(clean_rows, key=key)]


def test_eval_score_grades_predictions_made_elsewhere(tmp_path):
    from data.benchmarks import load_benchmark

    records = load_benchmark("gsm8k")
    predictions = tmp_path / "preds.jsonl"
    with open(predictions, "w") as handle:
        for index, record in enumerate(records):
            answer = record.gold if index % 4 else "-1"  # a quarter wrong
            handle.write(json.dumps({"idx": index, "output": f"Some reasoning.\nThe answer is {answer}."}) + "\n")
    result = mathsynth("eval", "score", "--benchmark", "gsm8k", "--predictions", str(predictions), "--field", "output",
                       "--out", str(tmp_path / "graded.jsonl"))
    assert result.returncode == 0, result.stderr
    wrong = len(range(0, len(records), 4))
    right = len(records) - wrong
    assert result.stdout.strip().splitlines()[-1] == f"gsm8k accuracy {100 * right / len(records):.2f} ({right}/{len(records)})"
    by_id = mathsynth("eval", "score", "--benchmark", "gsm8k", "--predictions", str(predictions), "--field", "output", "--id-field", "idx")
    assert by_id.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"output": "1"}\n{"output": \n')
    failing = mathsynth("eval", "score", "--benchmark", "gsm8k", "--predictions", str(bad), "--field", "output")
    assert failing.returncode == 2 and f"{bad}:2: malformed JSON" in failing.stderr


def test_eval_score_takes_a_custom_benchmark_yaml(tmp_path):
    """--benchmark may be a custom benchmark YAML; its relative data path is read from the
    YAML's folder (not the working directory), and a bad YAML is one line naming key or line."""
    folder = tmp_path / "my_bench"
    (folder / "data").mkdir(parents=True)
    problems = [{"q": "1+1?", "a": 2}, {"q": "2+3?", "a": 5}, {"q": "3+4?", "a": 7}]
    (folder / "data" / "rows.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    config = folder / "bench.yaml"
    config.write_text("name: tiny_custom\npath: data/rows.jsonl\nquestion_field: q\nanswer_field: a\nanswer_type: number\n")
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("".join(json.dumps({"out": text}) + "\n" for text in ["The answer is 2.", "答案是 5", "The answer is 8."]))
    result = mathsynth("eval", "score", "--benchmark", str(config), "--predictions", str(predictions), "--field", "out")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "tiny_custom accuracy 66.67 (2/3)"

    config.write_text("name: tiny_custom\npath: data/rows.jsonl\nquestion_feild: q\nanswer_field: a\nanswer_type: number\n")
    typo = mathsynth("eval", "score", "--benchmark", str(config), "--predictions", str(predictions), "--field", "out")
    assert typo.returncode == 2 and len(typo.stderr.strip().splitlines()) == 1
    assert f"{config}: question_feild: unknown key" in typo.stderr
    config.write_text("name: tiny_custom\npath: data/rows.jsonl\nquestion_field: [q\n")
    broken = mathsynth("eval", "score", "--benchmark", str(config), "--predictions", str(predictions), "--field", "out")
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert f"{config}:4: invalid YAML" in broken.stderr  # the stream ends with the list still open


def test_eval_grade_prints_one_verdict_per_pair(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in [
        {"gold": "\\frac{1}{2}", "pred": "The answer is $0.5$."},
        {"gold": "16", "pred": "so we get \\boxed{016}"},
        {"gold": "3", "pred": "The answer is 4."},
    ]) + "\n")
    result = mathsynth("eval", "grade", "--pairs", str(pairs))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [v["equal"] for v in verdicts] == [True, True, False]


def test_program_of_thought_takes_the_printed_result_as_the_answer(tmp_path):
    config = EvalConfig.model_validate({
        "benchmarks": ["gsm8k"], "limit": 2, "setting": "pot", "prompt": "zero_shot",
        "engine": {"kind": "hf", "model": "scripted"}, "output": str(tmp_path / "pot"),
    })
    from eval.run import PromptMaker, item_key, load_records

    records = load_records(config)
    prompt_id = PromptMaker(config).prompt_id()
    engine = ScriptedEngine({
        f"{item_key(records[0], prompt_id)}#0": ["```python\nleft = 16 - 3 - 4\nprint('eggs:', left)\nprint(left * 2)\n```"],
        f"{item_key(records[1], prompt_id)}#0": ["```python\nprint(2 + 2)\n```"],  # gold is 3
    })
    run_eval(config, Shard(0, 1), engine=engine)
    rows = {r["problem_id"]: r for r in rows_of(tmp_path / "pot")}
    assert rows[records[0].id]["extracted"] == "18" and rows[records[0].id]["correct"]
    assert rows[records[1].id]["extracted"] == "4" and not rows[records[1].id]["correct"]
    assert len(rows[records[0].id]["executions"]) == 1


def test_two_shards_give_the_same_report_as_one(tmp_path, tiny_model):
    def command(output, *extra):
        return [sys.executable, "-m", "pipeline", "eval", "run", "--model", str(tiny_model), "--engine", "hf",
                "--benchmarks", "gsm8k,aqua", "--limit", "8", "--output", str(output),
                "--set", "engine.batch_size=1", "--set", "sampling.max_tokens=8", *extra]

    shards = [subprocess.Popen(command(tmp_path / "sharded", "--shard", f"{i}/2"), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    assert all(p.wait() == 0 for p in shards), [p.stderr.read()[-2000:] for p in shards]
    single = subprocess.run(command(tmp_path / "single"), env=ENV, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    sharded = json.loads((tmp_path / "sharded" / "report.json").read_text())
    assert sharded["benchmarks"] == json.loads((tmp_path / "single" / "report.json").read_text())["benchmarks"]
    assert sharded["benchmarks"]["aqua"]["overall"]["problems"] == 8
    assert sorted(r["id"] for r in rows_of(tmp_path / "sharded")) == sorted(r["id"] for r in rows_of(tmp_path / "single"))
