"""`mathsynth judge` against a scripted judge endpoint, and synth filter's judge filter."""
import json
import os
import re
import sys
from pathlib import Path

import fault_server
import pytest
from conftest import kill_when_written, write_jsonl
from fault_server import FaultPlan, FaultServer

from eval.judge_parse import parse_verdict
from pipeline.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING", "OPENAI_API_KEY": "none"}
KINDS = ("good", "fenced", "repair", "malformed", "refusal", "range")
ERROR_OF = {"malformed": "bad_json", "refusal": "no_json", "range": "out_of_range"}


def verdict_json(score, **extra) -> str:
    return json.dumps({"solvable": True, "correct": score >= 5, "clarity": 6, "difficulty": 4, "score": score,
                       "rationale": f"scored {score}", **extra})


def judge_answer(prompt: str) -> str:
    """What the scripted judge says about a record whose problem holds SCORE:<n> or CASE:<kind>:<i>."""
    if match := re.search(r"SCORE:(\d+)", prompt):
        return verdict_json(int(match.group(1)))
    match = re.search(r"CASE:(\w+):(\d+)", prompt)
    if match is None:
        return "I cannot see a record."
    kind, index = match.group(1), int(match.group(2))
    return {
        "good": verdict_json(index % 10 + 1),
        "fenced": f"Here is my assessment.\n```json\n{verdict_json(7)}\n```\nThe problem is fine, I think.",
        "repair": "{'solvable': True, 'correct': 'false', 'clarity': '7', 'difficulty': 3, 'score': '5', "
                  "'rationale': \"it's a bit vague\",}",
        "malformed": '{"solvable": true, "score": 8, "rationale": "the answer was cut',
        "refusal": "I'm sorry, but I can't help with evaluating this content.",
        "range": verdict_json(12),
    }[kind]


def expected(kind: str, index: int) -> dict:
    if kind in ERROR_OF:
        return {"score": None, "error": ERROR_OF[kind]}
    if kind == "good":
        score = index % 10 + 1
        return {"score": score, "correct": score >= 5, "clarity": 6, "difficulty": 4, "solvable": True, "error": None}
    if kind == "fenced":
        return {"score": 7, "correct": True, "clarity": 6, "error": None}
    return {"score": 5, "solvable": True, "correct": False, "clarity": 7, "difficulty": 3,
            "rationale": "it's a bit vague", "error": None}


@pytest.fixture
def scripted_judge(monkeypatch):
    original = fault_server.FaultApp._completion

    def completion(body, prompt):
        payload = original(body, prompt)
        text = judge_answer(prompt)
        for choice in payload["choices"]:
            choice["message"]["content"] = text
        payload["usage"]["completion_tokens"] = len(text) // 4
        payload["usage"]["total_tokens"] = payload["usage"]["prompt_tokens"] + len(text) // 4
        return payload

    monkeypatch.setattr(fault_server.FaultApp, "_completion", staticmethod(completion))


def case_rows(count: int) -> list[dict]:
    rows = []
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        rows.append({"id": f"r{index:03d}", "kind": kind, "source_id": f"s{index % 3}",
                     "problem": f"CASE:{kind}:{index} A box holds {index + 2} apples. How many apples are in 3 boxes?",
                     "solution": f"Three boxes hold 3 times {index + 2} apples, so the answer is $\\boxed{{{3 * (index + 2)}}}$."})
    return rows


def config_file(tmp_path: Path, inputs: list[str], url: str, output: str, **extra) -> Path:
    config = {
        "input": {"paths": inputs},
        "engine": {"kind": "openai", "model": "judge", "base_url": url, "max_in_flight": 4, "timeout_s": 5,
                   "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "cache_path": str(tmp_path / "judge-cache.sqlite"),
                   **extra.pop("engine", {})},
        "pricing": {"input_per_million": 1.0, "output_per_million": 4.0},
        "output": str(tmp_path / output),
        **extra,
    }
    path = tmp_path / f"{output}.yaml"
    path.write_text(json.dumps(config))
    return path


def judge(config: Path, *more: str) -> int:
    return main(["--log-level", "WARNING", "judge", "--config", str(config), *more])


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for part in sorted(folder.glob("part-*.jsonl")) for line in part.read_text().splitlines()]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("answer, score, error", [
    ('{"score": 7, "solvable": true}', 7, None),
    ('Sure!\n```json\n{"score": "8/10", "correct": "yes"}\n```\nDone.', 8, None),
    ("{'score': 6, 'correct': False, 'rationale': 'ok',}", 6, None),
    ('{"score": 9} and a trailing {remark}', 9, None),
    ('{"score": 3, "rationale": "a } in a string"}', 3, None),
    ("As an AI I must decline.", None, "no_json"),
    ("", None, "no_json"),
    ('{"score": 7, "rationale": "torn', None, "bad_json"),
    ('{"rationale": "forgot it"}', None, "missing_field"),
    ('{"score": "high"}', None, "bad_value"),
    ('{"score": 7, "correct": "perhaps"}', None, "bad_value"),
    ('{"score": 0}', None, "out_of_range"),
    ('{"score": 5, "difficulty": 11}', None, "out_of_range"),
])
def test_verdicts_are_read_robustly(answer, score, error):
    verdict = parse_verdict(answer)
    assert (verdict.score, verdict.error) == (score, error)


def test_scores_parsed_errors_counted_faults_retried_and_a_rerun_pays_nothing(tmp_path, scripted_judge, capsys):
    rows = case_rows(24)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    with FaultServer(FaultPlan(rate=0.3, kinds=("500", "429"), max_faults=2)) as server:
        config = config_file(tmp_path, [str(data)], server.url, "judged")
        assert judge(config) == 0
        first = server.stats()
        assert first["faults"] and first["total_received"] > first["total_billed"]  # faults came, were retried
        assert len(first["billed"]) == 24 and all(n == 1 for n in first["billed"].values())
        assert "24 records judged, 12 scored" in capsys.readouterr().out

        out = records(tmp_path / "judged")
        assert sorted(r["id"] for r in out) == [r["id"] for r in rows]
        for record in out:
            index = int(record["id"][1:])
            for key, value in expected(record["kind"], index).items():
                assert record["judge"][key] == value, (record["kind"], key, record["judge"])
            assert record["judge"]["judge_model"] == "judge" and record["problem"] == rows[index]["problem"]
            if record["judge"]["error"]:
                assert record["judge"]["raw"] == judge_answer(record["problem"])
        counts = manifest(tmp_path / "judged")["counts"]
        assert counts["judge_errors_by_reason"] == {"bad_json": 4, "no_json": 4, "out_of_range": 4}
        assert counts["records"] == 24 and counts["scored"] == 12 and counts["judge_errors"] == 12
        usage = manifest(tmp_path / "judged")["usage"]
        assert usage["prompt_tokens"] > 0 and usage["engine_calls_this_run"] == first["total_received"]
        assert counts["cost_usd"] == pytest.approx((usage["prompt_tokens"] + 4 * usage["completion_tokens"]) / 1e6, abs=1e-6)

        # A rerun of the complete folder is a no-op; a new folder over the same records is
        # answered from the request cache: the endpoint sees no call in either case.
        assert judge(config) == 0
        again = config_file(tmp_path, [str(data)], server.url, "judged-again")
        assert judge(again) == 0
        assert server.stats()["total_received"] == first["total_received"]
        assert manifest(tmp_path / "judged-again")["usage"]["engine_cache_hits"] == 24
        by_id = {r["id"]: r["judge"] for r in out}
        assert {r["id"]: r["judge"] for r in records(tmp_path / "judged-again")} == by_id


def test_kill_minus_9_then_rerun_judges_every_record_once(tmp_path, scripted_judge):
    rows = case_rows(40)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    with FaultServer(latency_s=0.12) as server:
        config = config_file(tmp_path, [str(data)], server.url, "killed", engine={"max_in_flight": 2})
        part = tmp_path / "killed" / "part-00000-of-00001.jsonl"
        before = kill_when_written([sys.executable, "-m", "eval.judge_cli", "--config", str(config)], part, 6, ENV, 60)
        assert 6 <= before < 40
        assert judge(config) == 0
        billed = server.stats()["billed"]
    out = records(tmp_path / "killed")
    assert len(out) == len({r["id"] for r in out}) == 40  # none lost, none twice
    assert sum(billed.values()) <= 40 + 2 and len(billed) == 40  # only the calls in flight at the kill twice
    assert manifest(tmp_path / "killed")["counts"]["judge_errors_by_reason"] == {"bad_json": 7, "no_json": 6,
                                                                                 "out_of_range": 6}


def test_shards_split_the_records_and_together_hold_each_once(tmp_path, scripted_judge):
    rows = case_rows(12)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    with FaultServer() as server:
        config = config_file(tmp_path, [str(data)], server.url, "sharded", input={"paths": [str(data)], "fields": ["problem"]})
        assert judge(config, "--shard", "0/2") == 0
        assert not manifest(tmp_path / "sharded")["complete"]
        assert judge(config, "--shard", "1/2") == 0
    assert manifest(tmp_path / "sharded")["complete"]
    assert sorted(r["id"] for r in records(tmp_path / "sharded")) == [r["id"] for r in rows]


@pytest.mark.parametrize("change, message", [
    ({"rubrik": "x.yaml"}, "rubrik"),
    ({"engine": {"max_in_flite": 3}}, "engine.max_in_flite"),
    ({"sampling": {"n": 4}}, "sampling.n"),
    ({"input": {"paths": ["missing.jsonl"]}}, "missing.jsonl"),
    ({"input": {"paths": ["IN"], "fields": ["answer"]}}, "in.jsonl:1: no 'answer'"),
    ({"rubric": "RUBRIC"}, "shows nothing of the record"),
])
def test_bad_config_or_input_is_one_line_and_nothing_is_written(tmp_path, capsys, change, message):
    data = write_jsonl(tmp_path / "in.jsonl", case_rows(2))
    (tmp_path / "rubric.yaml").write_text("id: r\nprompt: Rate this problem.\n")
    raw = json.loads(config_file(tmp_path, [str(data)], "http://127.0.0.1:9/v1", "bad").read_text())
    for key, value in change.items():
        value = json.loads(json.dumps(value).replace('"IN"', json.dumps(str(data)))
                           .replace('"RUBRIC"', json.dumps(str(tmp_path / "rubric.yaml"))))
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key in raw else value
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(raw))
    assert judge(path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("mathsynth judge: error:")
    assert not (tmp_path / "bad").exists() or records(tmp_path / "bad") == []


def filter_config(tmp_path: Path, source: Path, output: str, judge_filter: dict) -> Path:
    config = {"input": str(source), "output": str(tmp_path / output),
              "decontamination": {"enabled": False}, "code_check": {"enabled": False}, "dedup": {"enabled": False},
              "judge": {"enabled": True, **judge_filter}}
    path = tmp_path / f"{output}.yaml"
    path.write_text(json.dumps(config))
    return path


def test_synth_filter_keeps_the_top_k_per_source_and_those_above_a_threshold(tmp_path, scripted_judge):
    scores = {"s0": [9, 7, 7, 3], "s1": [2, 8], "s2": [5], "s3": [6, 6, 6]}
    rows = []
    for source, values in scores.items():
        for k, score in enumerate(values):
            rows.append({"id": f"{source}-{9 - k}", "source_id": source,
                         "problem": f"SCORE:{score} Problem {source} {k}: how many pears are in {k + 2} bags of three?",
                         "solution": f"Each bag holds three pears, so {k + 2} bags hold $\\boxed{{{3 * (k + 2)}}}$ pears."})
    for row in rows:
        if row["source_id"] == "s3":  # as synth generate writes them: read as they are
            row.update(variant="cot", parse_error=None, item_key=row["id"], stage="grade_school")
    rows.append({"id": "s1-refused", "source_id": "s1", "problem": "CASE:refusal:0 How many pears are in two bags?",
                 "solution": "Two bags of three pears hold $\\boxed{6}$ pears in all, counting each."})
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    with FaultServer() as server:
        assert judge(config_file(tmp_path, [str(data)], server.url, "judged")) == 0
    judged = {r["id"]: r["judge"]["score"] for r in records(tmp_path / "judged")}

    def run_filter(output: str, **judge_filter) -> tuple[set, dict]:
        assert main(["--log-level", "WARNING", "synth", "filter", "--config",
                     str(filter_config(tmp_path, tmp_path / "judged", output, judge_filter))]) == 0
        kept = {r["id"] for r in records(tmp_path / output)}
        rejected = {json.loads(line)["id"]: json.loads(line)["reject_reason"]
                    for line in (tmp_path / output / "rejects-00000-of-00001.jsonl").read_text().splitlines()}
        assert all(r["judge"]["score"] == judged[r["id"]] for r in records(tmp_path / output))  # scores carried
        return kept, rejected

    kept, rejected = run_filter("top2", top_k_per_source=2)
    best = {source: sorted((r for r in rows if r["source_id"] == source and judged[r["id"]] is not None),
                           key=lambda r: (-judged[r["id"]], r["id"]))[:2] for source in scores}
    assert kept == {r["id"] for group in best.values() for r in group}
    assert "s0-7" in kept and "s0-8" not in kept  # a tie (7, 7): the smaller id wins
    assert rejected["s1-refused"] == "judge_missing"
    assert {rejected[i] for i in rejected if i != "s1-refused"} == {"judge_top_k"}
    assert manifest(tmp_path / "top2")["counts"]["rejected_by_reason"] == {"judge_missing": 1, "judge_top_k": 3}

    kept, rejected = run_filter("above6", min_score=6)
    assert kept == {i for i, s in judged.items() if s is not None and s >= 6}
    assert {rejected[i] for i, s in judged.items() if s is not None and s < 6} == {"judge_score"}

    kept, _ = run_filter("both", min_score=6, top_k_per_source=1)
    assert kept == {"s0-9", "s1-8", "s3-7"}  # s3's three 6s: the smallest id


def test_a_local_model_judges_through_the_same_stage(tmp_path, tiny_model):
    """The hf engine (what vllm would be on a GPU): the tiny model writes no JSON, so every record
    is written with judge.error no_json, counted, and the rerun is a no-op."""
    data = write_jsonl(tmp_path / "in.jsonl", case_rows(3))
    config = {"input": {"paths": [str(data)], "fields": ["problem"]}, "format": "raw",
              "engine": {"kind": "hf", "model": str(tiny_model), "dtype": "float32", "device": "cpu"},
              "sampling": {"max_tokens": 8}, "output": str(tmp_path / "local")}
    path = tmp_path / "local.yaml"
    path.write_text(json.dumps(config))
    assert judge(path) == 0
    out = records(tmp_path / "local")
    assert len(out) == 3 and all(r["judge"]["judge_model"] == str(tiny_model) for r in out)
    counts = manifest(tmp_path / "local")["counts"]
    assert counts["scored"] + counts["judge_errors"] == 3 and counts["records"] == 3
    assert judge(path) == 0 and len(records(tmp_path / "local")) == 3


def test_the_example_config_and_the_shipped_rubric_are_valid():
    from eval.judge import DEFAULT_RUBRIC, JudgeConfig, JudgeStage
    from runner.config import load_config

    config = load_config(JudgeConfig, Path(__file__).resolve().parent.parent / "configs" / "judge-example.yaml")
    stage = JudgeStage(config)
    assert stage.rubric.id and config.sampling.temperature == 0.0
    assert stage.manifest_config()["rubric_hash"] == JudgeStage(config.model_copy(update={"rubric": str(DEFAULT_RUBRIC)})).manifest_config()["rubric_hash"]
    prompt = stage.prompter.render({"problem": "What is $\\frac{1}{2}$ of {record}?", "solution": "S"})
    assert "## Problem\nWhat is $\\frac{1}{2}$ of {record}?" in prompt and '"score": <1-10>' in prompt


def test_a_budget_stops_the_run_and_a_larger_one_resumes_it(tmp_path, scripted_judge, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", case_rows(12))
    with FaultServer(FaultPlan(rate=0.4, kinds=("500", "429"), max_faults=2)) as server:
        config = config_file(tmp_path, [str(data)], server.url, "budget", engine={"budget": {"max_calls": 5}})
        assert judge(config) == 2
        assert "budget exhausted" in capsys.readouterr().err
        assert server.stats()["total_received"] <= 5  # retries count: the budget holds
        # The budget is operational: raised on the same folder, the run goes on from where it stopped.
        assert judge(config, "--set", "engine.budget.max_calls=100") == 0
        billed = server.stats()["billed"]
    out = records(tmp_path / "budget")
    assert len(out) == len({r["id"] for r in out}) == 12
    assert all(count == 1 for count in billed.values())  # nothing answered was asked again


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a scalar sequence-classification head (random, seeded): a reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("reward") / "rm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_reward_model_scores_each_record_as_transformers_does_and_the_filter_uses_it(tmp_path, tiny_reward_model):
    import torch
    from transformers import AutoModelForSequenceClassification

    from eval.judge_reward import RewardModelConfig, RewardScorer

    rows = case_rows(7)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    config = {"input": {"paths": [str(data)]}, "output": str(tmp_path / "rm-judged"),
              "reward_model": {"model": str(tiny_reward_model), "batch_size": 3, "dtype": "float32", "device": "cpu"}}
    path = tmp_path / "rm.yaml"
    path.write_text(json.dumps(config))
    assert judge(path) == 0
    out = {r["id"]: r for r in records(tmp_path / "rm-judged")}
    assert sorted(out) == sorted(r["id"] for r in rows)

    # each score is the head's logit on the record alone (batches of 3 with padding change nothing)
    scorer = RewardScorer(RewardModelConfig(model=str(tiny_reward_model), dtype="float32", device="cpu"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    for row in rows[:3]:
        encoded = scorer.tokenizer(scorer.text([row["problem"], row["solution"]]), return_tensors="pt")
        with torch.inference_mode():
            alone = model(**encoded).logits[0, 0].item()
        assert out[row["id"]]["judge"]["score"] == pytest.approx(alone, abs=1e-4)
        assert out[row["id"]]["judge"]["scorer"] == "reward_model" and out[row["id"]]["judge"]["error"] is None
    assert manifest(tmp_path / "rm-judged")["counts"]["scored"] == 7
    assert judge(path) == 0 and len(records(tmp_path / "rm-judged")) == 7  # a rerun scores nothing again

    filtered = filter_config(tmp_path, tmp_path / "rm-judged", "rm-filtered", {"top_k_per_source": 1})
    assert main(["--log-level", "WARNING", "synth", "filter", "--config", str(filtered)]) == 0
    best = {}
    for row in rows:
        score = out[row["id"]]["judge"]["score"]
        if row["source_id"] not in best or score > out[best[row["source_id"]]]["judge"]["score"]:
            best[row["source_id"]] = row["id"]
    assert sorted(r["id"] for r in records(tmp_path / "rm-filtered")) == sorted(best.values())


def test_engine_and_reward_model_together_are_one_line(tmp_path, capsys, tiny_reward_model):
    data = write_jsonl(tmp_path / "in.jsonl", case_rows(2))
    config = {"input": {"paths": [str(data)]}, "output": str(tmp_path / "both"),
              "engine": {"kind": "hf", "model": str(tiny_reward_model)}, "reward_model": {"model": str(tiny_reward_model)}}
    path = tmp_path / "both.yaml"
    path.write_text(json.dumps(config))
    assert judge(path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give engine (an LLM judge) or reward_model, not both or neither" in err[0]
    assert not (tmp_path / "both").exists()


def test_a_process_reward_model_scores_each_step_and_the_record_by_its_worst(tmp_path, tiny_model):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(1)
    prm = tmp_path / "prm"
    AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=2).save_pretrained(prm)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(prm)
    rows = [{"id": "a", "source_id": "s", "problem": "Tom has 3 boxes of 4 apples. How many apples?",
             "solution": "Each box holds 4 apples.\nThree boxes hold 3 * 4 = 12 apples.\n\nThe answer is $\\boxed{12}$."},
            {"id": "b", "source_id": "s", "problem": "What is 2 + 2?", "solution": "2 + 2 = 4, so \\boxed{4}."}]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    config = {"input": {"paths": [str(data)]}, "output": str(tmp_path / "prm-judged"),
              "reward_model": {"model": str(prm), "kind": "process", "step_tag": " ки\n", "dtype": "float32",
                               "device": "cpu"}}
    path = tmp_path / "prm.yaml"
    path.write_text(json.dumps(config))
    assert judge(path) == 0
    out = {r["id"]: r["judge"] for r in records(tmp_path / "prm-judged")}
    assert len(out["a"]["step_scores"]) == 3 and len(out["b"]["step_scores"]) == 1  # non-empty lines are steps
    assert out["a"]["score"] == pytest.approx(min(out["a"]["step_scores"]), abs=1e-6)

    # each step's score is P(label 1) at the last token of the tag after it, computed here directly
    tokenizer, model = AutoTokenizer.from_pretrained(prm), AutoModelForTokenClassification.from_pretrained(prm).eval()
    steps = ["Each box holds 4 apples.", "Three boxes hold 3 * 4 = 12 apples.", "The answer is $\\boxed{12}$."]
    text, ends = rows[0]["problem"] + "\n\n", []
    for step in steps:
        text += step + " ки\n"
        ends.append(len(text) - 1)
    encoded = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].tolist()
    with torch.inference_mode():
        probs = model(**encoded).logits.softmax(-1)[0, :, 1]
    direct = [probs[next(k for k, (a, b) in enumerate(offsets) if a <= end < b)].item() for end in ends]
    assert out["a"]["step_scores"] == pytest.approx(direct, abs=1e-5)


@pytest.mark.slow
def test_the_reward_model_on_vllm_gives_the_scores_of_transformers(tmp_path, tiny_reward_model):
    rows = case_rows(5)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    scores = {}
    for backend in ("transformers", "vllm"):
        config = {"input": {"paths": [str(data)]}, "output": str(tmp_path / backend),
                  "reward_model": {"model": str(tiny_reward_model), "backend": backend, "dtype": "float32",
                                   "device": "cpu", "max_length": 512,
                                   **({"engine_kwargs": {"enforce_eager": True}} if backend == "vllm" else {})}}
        path = tmp_path / f"{backend}.yaml"
        path.write_text(json.dumps(config))
        assert judge(path) == 0
        scores[backend] = {r["id"]: r["judge"]["score"] for r in records(tmp_path / backend)}
    assert sorted(scores["vllm"]) == sorted(r["id"] for r in rows)
    for record_id, score in scores["transformers"].items():
        assert scores["vllm"][record_id] == pytest.approx(score, abs=1e-3)


def test_a_judge_copying_the_rubrics_answer_line_gets_no_score():
    """SmolLM2-135M judging JiuZhang3.0 rows copied the rubric's example answer verbatim (a score
    of 7 for anything); the rubric shows placeholders, so a copy is unreadable, not a score."""
    import yaml

    from eval.judge import DEFAULT_RUBRIC

    answer_line = yaml.safe_load(DEFAULT_RUBRIC.read_text())["prompt"].strip().splitlines()[-1]
    verdict = parse_verdict(answer_line)
    assert verdict.score is None and verdict.error == "bad_json"
