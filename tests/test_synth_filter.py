"""`mathsynth synth filter`: per-record filters on crafted cases, cross-shard dedup, the output
formats, resume after kill -9, and N shards giving the dataset of one."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_when_written

from data.benchmarks.registry import load_benchmark
from data.shards import Shard
from data.storage import StageOutput
from synth.filter_run import SynthFilterConfig, run_synth_filter
from synth.filters import (
    CodeCheckFilter,
    ConsistencyFilter,
    DecontaminationFilter,
    FormatFilter,
    LengthFilter,
    RecordFilters,
)
from synth.text_format import pretraining_text

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING"}
WORDS = ("apple river copper lantern meadow violin harbor pepper glacier saddle orchid marble canyon thimble falcon "
         "velvet quarry ribbon walnut beacon tunnel cobalt prairie kettle lemon anchor summit pebble cedar mosaic "
         "window garden silver bridge forest candle rocket spider castle pirate jungle wizard").split()
SANDBOX = {"workers": 1, "wall_timeout_s": 5}


def problem_text(seed: str) -> str:
    words = " ".join(random.Random(seed).sample(WORDS, 14))
    return f"A collector sorts {words} into boxes of 4. How many boxes hold 12 items?"


def record(key: str, index: int = 0, *, problem: str | None = None, answer: str = "3", variant: str = "cot",
           code: str | None = None, finish_reason: str = "stop", **extra) -> dict:
    """A synth generate record with a well-formed problem and solution unless told otherwise."""
    problem = problem if problem is not None else problem_text(key)
    solution = ("We divide the number of items by the capacity of one box, because every box is filled "
                "completely before the next one is started.")
    if variant == "tool":
        code = code if code is not None else f"print(12 // 4 if {answer!r} == '3' else {answer})"
        solution += f"\n```python\n{code}\n```\n"
    solution += f" So the answer is $\\boxed{{{answer}}}$."
    found = {
        "id": f"{key}-{index}", "item_key": key, "source_id": f"doc-{key}", "window": [0, 100], "stage": "college",
        "variant": variant, "prompt_id": "p1", "sample_index": index, "completion": f"{problem}\n\n## Solution\n{solution}",
        "finish_reason": finish_reason, "model": "synth", "problem": problem, "solution": solution,
        "final_answer": answer, "code": code if variant == "tool" else None, "parse_error": None,
        "text": pretraining_text(problem, solution, variant),
    }
    return {**found, **extra}


def without_code(found: dict) -> dict:
    solution = found["solution"]
    return {**found, "solution": solution[:solution.index("```python")] + solution[solution.rindex("```") + 3:],
            "code": None}


def make_generated(folder: Path, parts: list[list[dict]]) -> Path:
    """A sealed synth generate folder with these records in its parts."""
    output = StageOutput(folder, stage="synth_generate", config={"made_by": "test"}, num_shards=len(parts))
    for index, rows in enumerate(parts):
        shard = Shard(index, len(parts))
        writer = output.open_shard(shard)
        for row in rows:
            writer.write(row)
        output.finish_shard(shard, writer, {})
    return folder


def filters(**overrides) -> RecordFilters:
    settings = {"format": FormatFilter(), "length": LengthFilter(), "decontamination": DecontaminationFilter(),
                "code_check": CodeCheckFilter(sandbox=SANDBOX), "consistency": ConsistencyFilter(enabled=True)}
    return RecordFilters(**{**settings, **overrides})


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def dataset(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("part-*.jsonl")) for row in read_rows(part)]


def rejects(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("rejects-*.jsonl")) for row in read_rows(part)]


def test_crafted_records_get_the_reason_of_their_first_failing_filter():
    gsm8k = next(iter(load_benchmark("gsm8k"))).question
    cases = {
        "clean": record("clean"),
        "contaminated": record("contaminated", problem=f"Here is a question for you. {gsm8k}"),
        "contaminated_solution": record("sol"),
        "tool_ok": record("tool_ok", variant="tool"),
        "tool_mismatch": record("tool_mismatch", variant="tool", code="print(12 // 3)"),
        "tool_fails": record("tool_fails", variant="tool", code="raise SystemExit(3)"),
        "tool_no_code": without_code(record("tool_no_code", variant="tool")),
        "no_box": record("no_box") | {"solution": "We divide the items among the boxes, filling each before the "
                                                  "next one, and count the boxes that end up holding twelve."},
        "truncated": record("truncated", finish_reason="length"),
        "unparsed": record("unparsed") | {"problem": None, "solution": None, "parse_error": "no_solution"},
        "leaked": record("leaked", problem="What is 1+2? \\boxed{3} is what we want, since it is asked here."),
        "short": record("short", problem="Add them."),
    }
    cases["contaminated_solution"]["solution"] = f"Recall: {gsm8k} " + cases["contaminated_solution"]["solution"]
    expected = {
        "clean": None, "contaminated": "contaminated", "contaminated_solution": "contaminated", "tool_ok": None,
        "tool_mismatch": "code_answer_mismatch", "tool_fails": "code_failed", "tool_no_code": "no_code",
        "no_box": "no_answer", "truncated": "truncated", "unparsed": "no_solution", "leaked": "no_problem",
        "short": "problem_too_short",
    }
    checker = filters()
    try:
        outcomes = checker.check(list(cases.values()))
    finally:
        checker.close()
    got = {name: outcome.reason for name, outcome in zip(cases, outcomes)}
    assert got == expected
    details = dict(zip(cases, outcomes))
    assert details["contaminated"].details["contamination"]["record_id"] == "gsm8k/test/0"
    assert details["contaminated_solution"].details["contamination"]["field"] == "solution"
    assert details["tool_mismatch"].details["printed_answer"] == "4"
    assert details["tool_ok"].details["printed_answer"] == "3"


def test_every_filter_can_be_turned_off():
    gsm8k = next(iter(load_benchmark("gsm8k"))).question
    rows = [record("contaminated", problem=f"Here is a question for you. {gsm8k}"),
            record("tool_mismatch", variant="tool", code="print(12 // 3)"),
            record("short", problem="What is 12 / 4?"), record("truncated", finish_reason="length")]
    checker = filters(format=FormatFilter(enabled=False), length=LengthFilter(enabled=False),
                      decontamination=DecontaminationFilter(enabled=False),
                      code_check=CodeCheckFilter(enabled=False), consistency=ConsistencyFilter(enabled=False))
    assert [o.reason for o in checker.check(rows)] == [None] * 4
    assert checker._sandbox is None and checker._grader is None  # nothing started that is not used
    # A completion that does not parse has nothing to filter on, with or without the format filter.
    unparsed = record("u") | {"problem": None, "solution": None, "parse_error": "empty"}
    assert checker.check([unparsed])[0].reason == "empty"


def test_samples_posing_the_same_problem_must_agree_on_its_answer():
    same = problem_text("shared")
    rows = [record("w1", 0, problem=same, answer="3"), record("w1", 1, problem=same, answer="3.0"),
            record("w1", 2, problem=same, answer="4"),
            record("w1", 3, problem=problem_text("other"), answer="7"),  # a different problem: alone
            record("w2", 0, problem=same, answer="5"), record("w2", 1, problem=same, answer="6")]  # no majority
    checker = filters(decontamination=DecontaminationFilter(enabled=False))
    try:
        outcomes = checker.check(rows)
    finally:
        checker.close()
    assert [o.reason for o in outcomes] == [None, None, "inconsistent", None, "inconsistent", "inconsistent"]
    assert outcomes[0].details["consistency"] == {"group": 3, "agree": 2}
    assert outcomes[3].details["consistency"] == "single"


def planted_parts() -> tuple[list[list[dict]], dict]:
    """Three generate parts with planted duplicates across and within them, and a contaminated
    and a broken tool record; returns the parts and what should be dropped, by id and reason."""
    gsm8k = next(iter(load_benchmark("gsm8k"))).question
    parts = [[record(f"a{i}", variant="tool" if i % 3 == 0 else "cot") for i in range(12)],
             [record(f"b{i}", variant="tool" if i % 3 == 0 else "cot") for i in range(12)],
             [record(f"c{i}") for i in range(12)]]
    near = problem_text("a1") + " Explain."
    parts[1][4] = record("b4", problem=problem_text("a1"))  # exact copy of a problem in part 0
    parts[2][5] = record("c5", problem=near)  # near copy of a problem in part 0
    parts[2][7] = record("c7", problem=problem_text("b2"))  # exact copy across parts 1 -> 2
    parts[0][9] = record("a9", problem=problem_text("a2") + " Answer in boxes.")  # near copy within part 0
    parts[1][8] = record("b8", problem=f"Consider this. {gsm8k}")
    parts[2][2] = record("c2", variant="tool", code="print(5)")
    dropped = {"b4-0": "exact_duplicate", "c5-0": "near_duplicate", "c7-0": "exact_duplicate",
               "a9-0": "near_duplicate", "b8-0": "contaminated", "c2-0": "code_answer_mismatch"}
    return parts, dropped


def filter_config(tmp_path: Path, generated: Path, output: str, **extra) -> SynthFilterConfig:
    return SynthFilterConfig.model_validate({"input": str(generated), "output": str(tmp_path / output),
                                             "code_check": {"sandbox": SANDBOX}, "batch_size": 5, **extra})


def test_the_stage_removes_planted_duplicates_across_shards_and_keeps_every_reject(tmp_path):
    parts, dropped = planted_parts()
    generated = make_generated(tmp_path / "generated", parts)
    manifest = run_synth_filter(filter_config(tmp_path, generated, "filtered"), Shard(0, 1))

    kept, rejected = dataset(tmp_path / "filtered"), rejects(tmp_path / "filtered")
    assert {r["id"]: r["reject_reason"] for r in rejected} == dropped
    assert len(kept) + len(rejected) == 36 and not {r["id"] for r in kept} & set(dropped)
    duplicates = {r["id"]: r["duplicate_of"] for r in rejected if r["reject_reason"].endswith("duplicate")}
    assert duplicates == {"b4-0": "a1-0", "c5-0": "a1-0", "c7-0": "b2-0", "a9-0": "a2-0"}  # the first copy stays
    assert manifest["complete"] and manifest["counts"]["kept"] == 30
    assert manifest["counts"]["rejected_by_reason"] == {
        "exact_duplicate": 2, "near_duplicate": 2, "contaminated": 1, "code_answer_mismatch": 1}
    assert manifest["counts"]["input_records"] == 36 and manifest["counts"]["rejected"] == 6

    # The JiuZhang3.0 text, and the records trace back to their source and prompt.
    tool = next(r for r in kept if r["variant"] == "tool")
    assert tool["text"].startswith("## Question\n") and "\n\n## Code Solution\n" in tool["text"]
    cot = next(r for r in kept if r["variant"] == "cot")
    assert cot["text"] == f"## Question\n{cot['problem']}\n\n## Solution\n{cot['solution']}\n"
    assert all(r["source_id"] and r["prompt_id"] and r["item_key"] for r in kept)

    from datasets import load_dataset

    loaded = load_dataset("json", data_files=[str(p) for p in sorted((tmp_path / "filtered").glob("part-*.jsonl"))],
                          split="train")
    assert sorted(loaded["id"]) == sorted(r["id"] for r in kept)

    # A rerun of a finished folder is a no-op.
    before = {p.name: p.read_bytes() for p in (tmp_path / "filtered").glob("*.jsonl")}
    run_synth_filter(filter_config(tmp_path, generated, "filtered"), Shard(0, 1))
    assert {p.name: p.read_bytes() for p in (tmp_path / "filtered").glob("*.jsonl")} == before


def test_two_shards_as_two_processes_give_the_dataset_of_one(tmp_path):
    parts, _ = planted_parts()
    generated = make_generated(tmp_path / "generated", parts)
    run_synth_filter(filter_config(tmp_path, generated, "one"), Shard(0, 1))
    config = tmp_path / "two.yaml"
    config.write_text(json.dumps(filter_config(tmp_path, generated, "two").model_dump(mode="json")))
    processes = [subprocess.Popen([sys.executable, "-m", "synth", "filter", "--config", str(config), "--shard", f"{i}/2"],
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["shards_done"] == [0, 1]

    def by_id(rows):
        return {r["id"]: r for r in rows}

    assert by_id(dataset(tmp_path / "two")) == by_id(dataset(tmp_path / "one"))
    assert {r["id"]: r["reject_reason"] for r in rejects(tmp_path / "two")} == \
           {r["id"]: r["reject_reason"] for r in rejects(tmp_path / "one")}


def test_kill_9_mid_filter_then_rerun_finishes_with_nothing_lost_or_doubled(tmp_path):
    parts = [[record(f"k{p}-{i}", variant="tool") for i in range(150)] for p in range(2)]
    generated = make_generated(tmp_path / "generated", parts)
    run_synth_filter(filter_config(tmp_path, generated, "clean"), Shard(0, 1))
    config = tmp_path / "kill.yaml"
    config.write_text(json.dumps(filter_config(tmp_path, generated, "killed").model_dump(mode="json")))
    command = [sys.executable, "-m", "synth", "filter", "--config", str(config)]
    work = tmp_path / "killed" / "work" / "part-00000-of-00002.kept.jsonl"
    written = kill_when_written(command, work, at_least=10, env=ENV)
    assert 10 <= written < 150  # killed mid-part
    assert not list((tmp_path / "killed").glob("part-*.done"))
    finished = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    killed, clean = dataset(tmp_path / "killed"), dataset(tmp_path / "clean")
    assert len(killed) == len({r["id"] for r in killed}) == 300
    assert killed == clean


def test_bad_input_is_a_one_line_error_naming_file_and_line(tmp_path):
    generated = make_generated(tmp_path / "generated", [[record("x0"), record("x1")]])
    part = tmp_path / "generated" / "part-00000-of-00001.jsonl"
    part.write_text(part.read_text() + "{not json\n")
    config = tmp_path / "bad.yaml"
    config.write_text(json.dumps({"input": str(generated), "output": str(tmp_path / "out")}))
    result = subprocess.run([sys.executable, "-m", "synth", "filter", "--config", str(config)],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"{part}:3: malformed JSON" in last and "Traceback" not in result.stderr

    unfinished = tmp_path / "unfinished"
    StageOutput(unfinished, stage="synth_generate", config={}, num_shards=2)
    with pytest.raises(Exception, match="not every shard is sealed"):
        run_synth_filter(filter_config(tmp_path, unfinished, "out2"), Shard(0, 1))
    with pytest.raises(Exception, match="bad2.yaml: length: problem_words must be"):
        from runner.config import load_config

        bad = tmp_path / "bad2.yaml"
        bad.write_text(json.dumps({"input": str(generated), "output": "x", "length": {"problem_words": [9, 2]}}))
        load_config(SynthFilterConfig, str(bad), [])


def test_embedding_similarity_catches_a_short_benchmark_question_the_ngram_check_cannot(tiny_model, tmp_path):
    short = next(r for r in load_benchmark("math500") if r.id == "math500/test/31").question  # "Simplify $\sqrt{242}$."
    near = short.replace("$.", "$ now.")  # one word more: no whole-problem match, and too short for n-grams
    rows = [record("copied", problem=near), record("clean")]
    decontamination = {"benchmarks": ["math500"], "embedding": {"enabled": True, "model": str(tiny_model),
                                                                  "threshold": 0.97, "max_length": 64}}
    checker = RecordFilters(FormatFilter(), LengthFilter(enabled=False),
                            DecontaminationFilter.model_validate(decontamination), CodeCheckFilter(enabled=False),
                            ConsistencyFilter(), cache_dir=tmp_path)
    assert checker.decontaminator.check(short).rule == "exact"  # the copy itself: a whole-problem match
    assert checker.decontaminator.check(near).contaminated is False
    outcomes = checker.check(rows)
    assert outcomes[0].reason == "contaminated"
    assert outcomes[0].details["contamination"]["record_id"] == "math500/test/31"
    assert outcomes[0].details["contamination"]["cosine"] >= 0.97
    assert outcomes[1].reason is None and outcomes[1].details["benchmark_cosine"] < 0.97
    assert len(list(tmp_path.glob("benchmark-embeddings-*.npy"))) == 1  # computed once, reused by every shard
    with pytest.raises(ValueError, match="model: give a checkpoint folder"):
        DecontaminationFilter.model_validate({"embedding": {"enabled": True}})


def test_the_example_config_is_valid():
    from runner.config import load_config

    config = load_config(SynthFilterConfig, str(Path(__file__).parents[1] / "configs" / "synth-filter-example.yaml"), [])
    assert config.dedup.enabled and config.decontamination.ngram == 13 and not config.consistency.enabled


def test_a_folder_of_another_stage_is_refused_not_rejected_row_by_row(tmp_path):
    """A distill or generate folder has records too, but none a filter can judge."""
    other = StageOutput(tmp_path / "generic", stage="generate", config={"made_by": "test"})
    writer = other.open_shard(Shard(0, 1))
    writer.write({"id": "a", "completion": "text"})
    other.finish_shard(Shard(0, 1), writer, {})
    with pytest.raises(Exception, match=r"is a generate output; synth filter reads a synth generate output or a dataset of problems"):
        run_synth_filter(filter_config(tmp_path, tmp_path / "generic", "out"), Shard(0, 1))
    assert not (tmp_path / "out").exists()


def test_a_second_process_on_the_same_filter_shard_is_refused(tmp_path):
    """Two processes on one shard used to seal it from a half-written dataset."""
    import fcntl

    parts, _ = planted_parts()
    generated = make_generated(tmp_path / "generated", parts)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".part-00000-of-00001.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Exception, match="shard 0/1 is being run by another process"):
            run_synth_filter(filter_config(tmp_path, generated, "out"), Shard(0, 1))
    assert dataset(out) == [] and not (out / "work").exists()
    run_synth_filter(filter_config(tmp_path, generated, "out"), Shard(0, 1))
    run_synth_filter(filter_config(tmp_path, generated, "one"), Shard(0, 1))
    assert dataset(out) == dataset(tmp_path / "one")


def jiuzhang_text(problem: str, solution: str, header: str = "## Solution") -> str:
    return f"## Question\n{problem}\n\n{header}\n{solution}\n"


def foreign_rows() -> list[dict]:
    """A small existing synthetic set in the JiuZhang3.0 layout and as problem/solution fields."""
    tool = ("We count with a short program, one block to set up and one to print.\n```python\nboxes = 12\n```\n"
            "Then:\n```python\nper_box = 4\nboxes // per_box\n```\n```output\n3\n```\nSo there are $\\boxed{3}$ boxes.")
    return [
        {"id": "jz-1", "text": jiuzhang_text(problem_text("f1"), "Twelve items fill boxes of four, so "
                                                                 "twelve divided by four is three. The answer is: $3$")},
        {"id": "jz-2", "text": jiuzhang_text(problem_text("f2"), tool, "## Code Solution")},
        {"id": 3, "problem": problem_text("f3"), "solution": "Divide twelve by four to get three, "
                                                              "one box at a time. $\\boxed{3}$"},
        {"text": jiuzhang_text("Evaluate $\\binom{7}{3}$.", "By the formula, $\\binom{7}{3} = \\frac{7 \\cdot 6 "
                                                            "\\cdot 5}{3!} = \\boxed{35}$.")},
        {"text": jiuzhang_text(problem_text("f5"), "Wrong: the program prints five.\n```python\nprint(5)\n```\n"
                                                   "So $\\boxed{3}$.", "## Code Solution")},
        {"text": "no headers at all, just chatter"},
        {"text": jiuzhang_text(problem_text("f1"), "A different solution that also says $\\boxed{3}$ here.")},
    ]


def test_an_existing_dataset_of_problems_is_filtered_like_generated_records(tmp_path):
    data = tmp_path / "existing"
    data.mkdir()
    rows = foreign_rows()
    (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (data / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    config = filter_config(tmp_path, data, "out")
    for index in range(2):
        run_synth_filter(config, Shard(index, 2))
    kept = {r["id"]: r for r in dataset(tmp_path / "out")}
    rejected = {r["id"]: r["reject_reason"] for r in rejects(tmp_path / "out")}
    hashed = [r["id"] for r in [*kept.values()] if r["problem"].startswith("Evaluate")]
    assert set(kept) == {"jz-1", "jz-2", "3", *hashed} and len(hashed) == 1
    assert kept["jz-1"]["final_answer"] == "3"  # "The answer is: $3$" is an answer, as eval reads it
    assert kept["jz-2"]["variant"] == "tool" and kept["jz-2"]["text"] == rows[1]["text"]  # two blocks, a notebook
    assert kept["3"]["variant"] == "cot"
    assert sorted(rejected.values()) == ["code_answer_mismatch", "exact_duplicate", "no_solution"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["records"] == 7 and report["kept"] == 4
    assert report["by_variant"]["tool"] == {"kept": 1, "code_answer_mismatch": 1}
    assert set(report["examples"]) == {"code_answer_mismatch", "exact_duplicate", "no_solution"}
    assert "## By variant" in (tmp_path / "out" / "report.md").read_text()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"id": "x", "question": "no text"}) + "\n")
    quick = {"decontamination": {"enabled": False}, "code_check": {"enabled": False}}  # only reading is tested here
    with pytest.raises(Exception, match=r"bad.jsonl:2: neither a string 'text' nor"):
        run_synth_filter(filter_config(tmp_path, bad, "out-bad", **quick), Shard(0, 1))
    run_synth_filter(filter_config(tmp_path, bad, "out-skip", rows={"policy": "skip"}, **quick), Shard(0, 1))
    assert [r["id"] for r in dataset(tmp_path / "out-skip")] == ["jz-1"]


def test_answer_rule_boxed_only_or_any_stated_answer(tmp_path):
    stated = record("stated") | {"solution": "We divide the items among the boxes, filling each before the next. "
                                             "The answer is: $3$"}
    proof = record("proof") | {"solution": "Every box is filled before the next, so the count is the quotient of "
                                           "the items by the capacity, as claimed."}
    outcomes = {}
    for rule in ("boxed", "stated", "optional"):
        checker = filters(format=FormatFilter(answer=rule), consistency=ConsistencyFilter(),
                          decontamination=DecontaminationFilter(enabled=False))  # (no index build: 4 s each)
        try:
            outcomes[rule] = [o.reason for o in checker.check([dict(stated), dict(proof)])]
        finally:
            checker.close()
    assert outcomes == {"boxed": ["no_answer", "no_answer"], "stated": [None, "no_answer"], "optional": [None, None]}


def test_the_report_and_the_audit_file_show_each_reason(tmp_path):
    parts, dropped = planted_parts()
    generated = make_generated(tmp_path / "generated", parts)
    config = tmp_path / "filter.yaml"
    config.write_text(json.dumps({"input": str(generated), "output": str(tmp_path / "out"),
                                  "code_check": {"sandbox": SANDBOX}}))
    result = subprocess.run([sys.executable, "-m", "synth", "filter", "--config", str(config)],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "by variant: cot: kept" in result.stdout and "report.md" in result.stdout
    audit = subprocess.run([sys.executable, "-m", "synth", "audit", "--input", str(tmp_path / "out"), "--per-reason",
                            "1", "--output", str(tmp_path / "audit.md")], env=ENV, capture_output=True, text=True,
                           timeout=120)
    assert audit.returncode == 0, audit.stderr
    text = (tmp_path / "audit.md").read_text()
    for reason in set(dropped.values()):
        assert f"## {reason}: 1 of" in text
    assert text.count("Verdict: ") == len(set(dropped.values()))
    refused = subprocess.run([sys.executable, "-m", "synth", "audit", "--input", str(generated)], env=ENV,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "is not a finished synth filter output" in refused.stderr.strip().splitlines()[-1]
