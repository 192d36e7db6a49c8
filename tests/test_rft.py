"""`mathsynth rft` against a scripted model: a GSM8K train slice whose problems the model solves
always (easy), never (wrong) or only sometimes (hard); pseudo-labels; kill -9; the sandbox."""
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import fault_server
import pytest
from conftest import kill_when_written, write_jsonl
from fault_server import FaultServer

from data.benchmarks.registry import EXEMPLAR_POOLS, load_benchmark
from data.shards import Shard
from eval.rft import RftConfig, run_rft
from eval.rft_select import majority_label, select_diverse
from llm.engine import Engine
from llm.types import Completion, GenerationResult, Usage
from training.dpo import read_pairs
from training.rows import sft_prompt_target

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING", "OPENAI_API_KEY": "none"}
PROBLEMS = load_benchmark(EXEMPLAR_POOLS["gsm8k_train"].spec, limit=6)
EASY, WRONG, HARD = (0, 1), (2,), (3, 4, 5)
K, WANTED, CAP, M = 4, 2, 12, 2

EASY_TEXTS = [  # two duplicates up to case and spaces, one near duplicate, one different solution
    "We compute the total step by step, adding each part.\nThe answer is \\boxed{{{gold}}}.",
    "We compute the  total step by step, adding each part.\n\nthe answer is \\boxed{{{gold}}}.",
    "We compute the total step by step, adding every part.\nThe answer is \\boxed{{{gold}}}.",
    "Working backwards from what is left over, everything sums to {gold}. So $\\boxed{{{gold}}}$.",
]
HARD_RIGHT = [
    "Split the quantities into groups and count each group; together that gives \\boxed{{{gold}}}.",
    "A table of the amounts per item, summed row by row, shows \\boxed{{{gold}}}.",
    "If we subtract what was spent from the starting amount we obtain {gold}, hence \\boxed{{{gold}}}.",
    "Setting up one equation for the unknown and solving it yields \\boxed{{{gold}}} in the end.",
]


def chance(seed, index) -> int:
    return hashlib.sha256(f"{seed}|{index}".encode()).digest()[0]


def student(prompt: str, seed, index: int) -> str:
    """What the scripted model writes as sample ``index`` of a request with ``seed``."""
    if "PSEUDO:agree" in prompt:
        return "Ten spiders have \\boxed{80} legs." if index % 4 != 3 else "I count \\boxed{81}."
    if "PSEUDO:split" in prompt:
        return f"Maybe \\boxed{{{seed % 1000 + index}}}."
    position = next(p for p, record in enumerate(PROBLEMS) if record.question.strip() in prompt)
    gold = PROBLEMS[position].gold
    if position in EASY:
        return EASY_TEXTS[index % 4].format(gold=gold)
    if position in WRONG:
        return f"It is \\boxed{{{int(float(gold)) + 1}}}." if index % 2 else "I am not sure how to go on."
    roll = chance(seed, index)
    if roll % 5 == 0:
        return HARD_RIGHT[roll // 5 % 4].format(gold=gold)
    return f"Roughly \\boxed{{{int(float(gold)) + 7}}}." if roll % 3 else "This one is too hard for me."


def is_right(text: str, gold: str) -> bool:
    return f"boxed{{{gold}}}" in text


@pytest.fixture
def scripted_student(monkeypatch):
    original = fault_server.FaultApp._completion

    def completion(body, prompt):
        payload = original(body, prompt)
        for choice in payload["choices"]:
            text = student(prompt, body.get("seed"), choice["index"])
            if "message" in choice:
                choice["message"]["content"] = text
            else:
                choice["text"] = text
        return payload

    monkeypatch.setattr(fault_server.FaultApp, "_completion", staticmethod(completion))


def config_dict(tmp_path: Path, url: str, output: str, **extra) -> dict:
    return {
        "input": extra.pop("input", {"benchmarks": ["gsm8k_train"], "limit": len(PROBLEMS)}),
        "engine": {"kind": "openai", "model": "student", "base_url": url, "api": "completions", "max_in_flight": 4,
                   "timeout_s": 5, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, **extra.pop("engine", {})},
        "prompt": "zero_shot", "k": K, "wanted_correct": WANTED, "max_samples": CAP, "max_per_problem": M,
        "similarity": 0.9, "min_votes": 3, "sampling": {"max_tokens": 64},
        "pricing": {"input_per_million": 1.0, "output_per_million": 2.0}, "output": str(tmp_path / output), **extra,
    }


def config_file(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / f"{Path(config['output']).name}.yaml"
    path.write_text(json.dumps(config))
    return path


def rows(folder: Path, kind: str = "part") -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob(f"{kind}-*.jsonl")) for line in path.read_text().splitlines()]


def test_selection_keeps_distinct_solutions_and_majority_needs_votes():
    texts = [t.format(gold=18) for t in EASY_TEXTS] + ["A third, quite different route: 9 * 2 = 18, \\boxed{18}."]
    chosen = select_diverse(texts, limit=2, similarity=0.9)
    assert chosen.kept == [0, 3] and dict(chosen.dropped) == {"duplicate": 1, "similar": 1, "over_limit": 1}
    assert select_diverse(["3 * 4 = 12 so 12", "first 3 * 4 = 12, giving 12"], 5, 0.99).kept == [0]  # same equations
    assert majority_label(["18", "18.0", "17", None], min_votes=2) == ("18", 2)
    assert majority_label(["1", "2", "1", "2"], min_votes=1) == (None, 2)  # a tie is no label
    assert majority_label(["5", "5", "6"], min_votes=3) == (None, 2)


def test_kept_are_the_correct_diverse_ones_budgets_follow_difficulty_and_pairs_are_right(tmp_path, scripted_student):
    with FaultServer() as server:
        config = RftConfig.model_validate(config_dict(tmp_path, server.url, "rft"))
        manifest = run_rft(config, Shard(0, 1))
        asked = server.stats()["total_received"]
        assert manifest["complete"]
        assert run_rft(config, Shard(0, 1))["complete"]  # a complete shard asks the engine nothing
        assert server.stats()["total_received"] == asked
    out = tmp_path / "rft"
    samples, kept, pairs = rows(out, "samples"), rows(out), rows(out, "pairs")
    problems = {row["problem_id"]: row for row in rows(out, "problems")}
    assert len(problems) == len(PROBLEMS)
    by_id = {s["id"]: s for s in samples}
    assert len(by_id) == len(samples)
    for sample in samples:  # the grader agrees with the script
        gold = next(p.gold for p in PROBLEMS if p.id == sample["problem_id"])
        assert sample["correct"] == is_right(sample["completion"], gold), sample
    for position, problem in enumerate(PROBLEMS):
        stats = problems[problem.id]
        mine = [s for s in samples if s["problem_id"] == problem.id]
        correct = [s for s in mine if s["correct"]]
        kept_here = [r for r in kept if r["problem_id"] == problem.id]
        assert stats["samples"] == len(mine) and stats["correct"] == len(correct)
        assert stats["pass_rate"] == pytest.approx(len(correct) / len(mine), abs=1e-6)
        # kept = correct minus duplicates, near duplicates and what is over the limit, at most m
        assert {r["id"] for r in kept_here} <= {s["id"] for s in correct}
        assert len(kept_here) == stats["kept"] <= M
        assert stats["kept"] + sum(stats["dropped"].values()) == len(correct)
        if position in EASY:  # one round, then enough
            assert stats["samples"] == K and stats["status"] == "enough_correct"
            assert stats["dropped"] == {"duplicate": 1, "similar": 1}
            assert sorted(r["completion"] for r in kept_here) == sorted(
                EASY_TEXTS[i].format(gold=problem.gold) for i in (0, 3))
        elif position in WRONG:  # never right: sampled up to the cap, nothing kept, no pair
            assert stats["samples"] == CAP and stats["status"] == "capped" and not kept_here
        else:  # hard: rounds until WANTED correct, or the cap
            if stats["status"] == "enough_correct":
                assert stats["correct"] >= WANTED and len([s for s in correct if s["round"] < stats["rounds"] - 1]) < WANTED
            else:
                assert stats["samples"] == CAP and stats["correct"] < WANTED
        for row in kept_here:  # an SFT row pretrain reads
            assert sft_prompt_target(row, "raw", row["id"]) == (row["prompt"], row["completion"])
            assert row["prompt"].startswith("## Question\n") and problem.question.strip() in row["prompt"]
            assert is_right(row["completion"], problem.gold)
    hard = [problems[PROBLEMS[p].id] for p in HARD]
    assert max(h["samples"] for h in hard) > K  # some hard problem needed more rounds
    assert sum(problems[PROBLEMS[p].id]["samples"] for p in HARD) > sum(problems[PROBLEMS[p].id]["samples"] for p in EASY)

    assert pairs and len({p["id"] for p in pairs}) == len(pairs)
    for pair in pairs:
        chosen, rejected = by_id[pair["chosen_id"]], by_id[pair["rejected_id"]]
        assert chosen["problem_id"] == rejected["problem_id"] == pair["problem_id"]
        assert chosen["correct"] and not rejected["correct"]
        assert (pair["chosen"], pair["rejected"]) == (chosen["completion"], rejected["completion"])
        assert pair["rejected_reason"] == ("mismatch" if "boxed" in rejected["completion"] else "no_answer")
        assert pair["prompt"] == next(r["prompt"] for r in kept if r["problem_id"] == pair["problem_id"])
    assert {p["problem_id"] for p in pairs} <= {PROBLEMS[p].id for p in HARD}
    assert read_pairs([str(out)]) == [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]  # dpo's input

    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["records"] == len(kept) and counts["pairs"] == len(pairs) and counts["samples"] == len(samples)
    assert counts["tokens"]["prompt_tokens"] > 0 and counts["cost_usd"] > 0
    assert counts["by_status"]["capped"] >= 1 and counts["pass_rate_histogram"]["0"] == 1


def test_rows_without_an_answer_get_a_majority_label_or_are_skipped(tmp_path, scripted_student):
    data = write_jsonl(tmp_path / "synthetic.jsonl", [
        {"id": "agree", "problem": "How many legs do 10 spiders have? PSEUDO:agree"},
        {"id": "split", "problem": "Pick any number you like. PSEUDO:split"},
        {"id": "given", "problem": "How many legs do 10 spiders have? PSEUDO:agree (checked)", "answer": 80},
        {"id": "empty", "question": "a row without the problem field"},
    ])
    with FaultServer() as server:
        config = RftConfig.model_validate(config_dict(tmp_path, server.url, "pseudo", input={"paths": [str(data)], "policy": "skip"},
                                                      prompt="chat", engine={"api": "chat"}))
        run_rft(config, Shard(0, 1))
    problems = {row["id"]: row for row in rows(tmp_path / "pseudo", "problems")}
    assert problems["agree"]["label_source"] == "majority" and problems["agree"]["gold"] == "80"
    assert problems["agree"]["votes"] >= 3 and problems["agree"]["samples"] == K and problems["agree"]["correct"] == 3
    assert problems["split"]["status"] == "no_majority" and problems["split"]["samples"] == CAP
    assert problems["split"]["kept"] == 0 and problems["given"]["label_source"] == "reference"
    kept = rows(tmp_path / "pseudo")  # chat prompts: SFT rows are messages ending with the solution
    assert {r["problem_id"] for r in kept} == {"agree", "given"}
    for row in kept:
        prompt, target = sft_prompt_target(row, "chat", row["id"])
        assert prompt[-1]["role"] == "user" and "spiders" in prompt[-1]["content"] and "\\boxed{80}" in target
    pairs = rows(tmp_path / "pseudo", "pairs")
    assert all(isinstance(p["prompt"], list) and p["prompt"][-1]["role"] == "user" for p in pairs)
    assert len(read_pairs([str(tmp_path / "pseudo")])) == len(pairs)
    assert pairs and all(p["rejected_reason"] == "mismatch" for p in pairs)
    for pair in pairs:  # TRL's conversational preference format
        assert pair["rejected"] == [{"role": "assistant", "content": "I count \\boxed{81}."}]
        assert pair["chosen"][0]["role"] == "assistant" and "\\boxed{80}" in pair["chosen"][0]["content"]
    counts = json.loads((tmp_path / "pseudo" / "manifest.json").read_text())["counts"]
    assert counts["by_status"]["no_majority"] == 1 and counts["corpus_skipped"] == {"missing_field": 1}


def test_kill_minus_9_then_rerun_gives_every_record_once(tmp_path, scripted_student):
    with FaultServer(latency_s=0.25) as server:
        reference = config_dict(tmp_path, server.url, "whole", engine={"max_in_flight": 1}, problems_per_batch=2)
        server.configure(latency_s=0.0)
        run_rft(RftConfig.model_validate(reference), Shard(0, 1))
        total = len(rows(tmp_path / "whole", "samples"))
        server.reset()
        server.configure(latency_s=0.25)
        killed = config_file(tmp_path, {**reference, "output": str(tmp_path / "killed")})
        samples = tmp_path / "killed" / "samples-00000-of-00001.jsonl"
        before = kill_when_written([sys.executable, "-m", "eval.rft_cli", "--config", str(killed)], samples, 10, ENV, 60)
        assert 10 <= before < total  # killed mid-run
        done = subprocess.run([sys.executable, "-m", "eval.rft_cli", "--config", str(killed)], env=ENV,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        billed = server.stats()["billed"]
    assert sum(billed.values()) <= len(billed) + 1  # only the call in flight at the kill was asked twice
    for kind in ("part", "pairs", "problems", "samples"):
        again, whole = rows(tmp_path / "killed", kind), rows(tmp_path / "whole", kind)
        assert len(again) == len({r["id"] for r in again})  # none twice
        strip = ("usage", "cached")
        assert sorted(json.dumps({k: v for k, v in r.items() if k not in strip}, sort_keys=True) for r in again) == \
            sorted(json.dumps({k: v for k, v in r.items() if k not in strip}, sort_keys=True) for r in whole), kind


def test_shards_split_the_problems_and_together_hold_each_once(tmp_path, scripted_student):
    with FaultServer() as server:
        config = RftConfig.model_validate(config_dict(tmp_path, server.url, "sharded"))
        assert not run_rft(config, Shard(0, 2))["complete"]
        manifest = run_rft(config, Shard(1, 2))
    assert manifest["complete"] and manifest["counts"]["problems"] == len(PROBLEMS)
    assert sorted(r["id"] for r in rows(tmp_path / "sharded", "problems")) == sorted(p.id for p in PROBLEMS)
    assert len(list((tmp_path / "sharded").glob("pairs-*-of-00002.jsonl"))) == 2


def test_a_bad_config_key_is_one_line(tmp_path):
    path = config_file(tmp_path, {**config_dict(tmp_path, "http://127.0.0.1:9/v1", "bad"), "max_per_problen": 3})
    done = subprocess.run([sys.executable, "-m", "eval.rft_cli", "--config", str(path)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "max_per_problen" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    path = config_file(tmp_path, {**config_dict(tmp_path, "http://127.0.0.1:9/v1", "bad"), "max_samples": 2})
    done = subprocess.run([sys.executable, "-m", "eval.rft_cli", "--config", str(path)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "max_samples" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


class ProgramWriter(Engine):
    """Writes one program per sample: the first of a request prints the gold answer, the others
    print a wrong number. pot: the printed output is the answer; tool: the model reads the
    output the sandbox gave back and boxes it."""

    model_name = "programs"

    def __init__(self, truncate: str | None = None) -> None:
        super().__init__()
        self.truncate = truncate  # this problem's right program hits max_tokens

    def generate(self, requests):
        for request in requests:
            self.calls += 1
            if request.prompt.endswith("```\n") and "```output\n" in request.prompt:
                printed = request.prompt.rsplit("```output\n", 1)[1].split("\n")[0]
                text = f"So the answer is \\boxed{{{printed}}}."
            else:
                gold = next(p.gold for p in PROBLEMS if p.question.strip() in request.prompt)
                index = int(request.id.rsplit("#", 1)[1])
                code = f"x = {gold} - 1\nprint(x + 1)" if index == 0 else f"print({gold} + {index})"
                text = f"```python\n{code}\n```"
            cut = self.truncate is not None and self.truncate in request.prompt and text.endswith("+ 1)\n```")
            yield GenerationResult(request.id, [Completion(text, "length" if cut else "stop", 9)], Usage(20, 9))


@pytest.mark.parametrize("setting", ["pot", "tool"])
def test_program_solutions_run_in_the_sandbox(tmp_path, setting):
    config = RftConfig.model_validate({
        "input": {"benchmarks": ["gsm8k_train"], "limit": 2}, "engine": {"kind": "hf", "model": "programs"},
        "setting": setting, "prompt": "zero_shot", "k": 3, "wanted_correct": 1, "max_samples": 3,
        "sandbox": {"workers": 1}, "output": str(tmp_path / "pot")})
    run_rft(config, Shard(0, 1), engine=ProgramWriter(truncate=PROBLEMS[1].question.strip() if setting == "pot" else None))
    samples = rows(tmp_path / "pot", "samples")
    assert len(samples) == 6
    for sample in samples:
        run = sample["executions"][0]
        assert run["status"] == "ok" and run["isolation"]
        gold = next(p.gold for p in PROBLEMS if p.id == sample["problem_id"])
        assert sample["correct"] == (sample["sample_index"] == 0) and sample["extracted"] == run["stdout"].strip()
        assert sample["correct"] == (run["stdout"].strip() == gold)
        if setting == "tool":  # the output was shown to the model, which answered from it
            assert f"```output\n{run['stdout'].strip()}\n```" in sample["completion"]
            assert sample["completion"].endswith(f"\\boxed{{{run['stdout'].strip()}}}.")
    kept = rows(tmp_path / "pot")
    assert all(r["completion"].startswith("```python\nx = ") for r in kept)
    problems = {r["id"]: r for r in rows(tmp_path / "pot", "problems")}
    if setting == "pot":  # a right answer in a text cut by max_tokens is not kept
        assert [r["problem_id"] for r in kept] == [PROBLEMS[0].id]
        assert problems[PROBLEMS[1].id]["correct"] == 1 and problems[PROBLEMS[1].id]["dropped"] == {"truncated": 1}
    else:
        assert len(kept) == 2
    assert all(re.match(r"```python\nprint\(", p["rejected"]) for p in rows(tmp_path / "pot", "pairs"))


class MixedWriter(Engine):
    """Setting mixed: a CoT request (n samples) gets one right boxed answer then wrong ones; each
    program trajectory prints the gold answer for the first program of a round, else a wrong one."""

    model_name = "mixed"

    def generate(self, requests):
        for request in requests:
            self.calls += 1
            gold = next(p.gold for p in PROBLEMS if p.question.strip() in request.prompt)
            program = re.search(r"#r\d+#(\d+)$", request.id)
            if program is None:
                texts = [f"Adding up, the answer is \\boxed{{{gold if i == 0 else int(gold) + 7 + i}}}."
                         for i in range(request.sampling.n)]
            else:
                index = int(program.group(1))
                texts = [f"```python\nprint({gold} + {index - 2})\n```"]  # index 2 is the round's first program
            yield GenerationResult(request.id, [Completion(t, "stop", 9) for t in texts], Usage(20, 9 * len(texts)))


def test_mixed_rounds_sample_cot_and_programs_and_keep_each_with_its_own_prompt(tmp_path):
    config = RftConfig.model_validate({
        "input": {"benchmarks": ["gsm8k_train"], "limit": 2}, "engine": {"kind": "hf", "model": "mixed"},
        "setting": "mixed", "pot_share": 0.5, "prompt": "zero_shot", "k": 4, "wanted_correct": 2, "max_samples": 4,
        "max_per_problem": 4, "sandbox": {"workers": 1}, "output": str(tmp_path / "mixed")})
    run_rft(config, Shard(0, 1), engine=MixedWriter())
    samples = rows(tmp_path / "mixed", "samples")
    assert len(samples) == 8
    for sample in samples:  # two CoT samples then two programs per round
        assert sample["setting"] == ("nl" if sample["sample_index"] < 2 else "pot")
        assert sample["correct"] == (sample["sample_index"] in (0, 2))
        assert bool(sample.get("executions")) == (sample["setting"] == "pot")
    kept = rows(tmp_path / "mixed")
    assert len(kept) == 4  # per problem: its right CoT answer and its right program
    by_id = {s["id"]: s for s in samples}
    for row in kept:
        written_as_program = row["completion"].startswith("```python")
        assert by_id[row["id"]]["setting"] == ("pot" if written_as_program else "nl")
    prompts = {(row["problem_id"], row["completion"].startswith("```python")): row["prompt"] for row in kept}
    for problem in PROBLEMS[:2]:
        assert prompts[(problem.id, True)] != prompts[(problem.id, False)]  # each answered its own prompt
    for pair in rows(tmp_path / "mixed", "pairs"):  # a pair never mixes the two kinds
        assert by_id[pair["chosen_id"]]["setting"] == by_id[pair["rejected_id"]]["setting"]
        assert pair["prompt"] == prompts[(pair["problem_id"], by_id[pair["chosen_id"]]["setting"] == "pot")]
