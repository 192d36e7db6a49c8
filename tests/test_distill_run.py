"""`mathsynth distill` against a scripted teacher endpoint and vLLM's real server."""
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import fault_server
import pytest
from conftest import kill_when_written, write_jsonl
from fault_server import FaultServer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING"}
WORDS = ("apple river copper lantern meadow violin harbor pepper glacier saddle orchid marble "
         "canyon thimble falcon velvet quarry ribbon walnut beacon tunnel cobalt prairie kettle "
         "lemon anchor summit pebble cedar mosaic").split()


def problem_for(index: int) -> str:
    words = random.Random(index).sample(WORDS, 12)
    return f"A collector sorts {' '.join(words)} into boxes. If each box holds {index + 2} items, how many boxes are needed for {3 * (index + 2)} items?"


SOLUTION = ("We divide the number of items by the capacity of one box, because every box is filled completely "
            "before the next one is started, and the division leaves no remainder here.")


def teacher_answer(kind: str, index: int, source: str) -> str:
    """What the scripted teacher writes for a source text marked KIND:<kind>:<index>."""
    answer = 3
    code = f"```python\nprint({3 * (index + 2)} // {index + 2})\n```"
    good = f"{problem_for(index)}\n\n## Solution\n{SOLUTION}\n{code}\nSo the answer is $\\boxed{{{answer}}}$."
    return {
        "good": good,
        "dup": good.replace(problem_for(index), problem_for(0)),
        "nobox": f"{problem_for(index)}\n\n## Solution\n{SOLUTION}\n{code}\nSo the answer is three.",
        "nosol": problem_for(index),
        "copy": f"{source}\n\n## Solution\n{SOLUTION}\n{code}\nSo the answer is $\\boxed{{3}}$.",
        "cheat": f"{problem_for(index)}\n\n## Solution\nThe answer is $\\boxed{{3}}$.",
        "mismatch": good.replace(f"// {index + 2})", f"// {index + 2} + 1)"),
        "nocode": good.replace(code, "We compute the quotient directly without any program at all here."),
        "crash": good.replace(code, "```python\nprint(1 // 0)\n```"),
        "shaky": good.replace("into boxes.", "into boxes (shaky)."),
    }[kind]


EXPECTED_REASONS = {"dup": "near_duplicate", "nobox": "no_boxed_answer", "nosol": "no_solution", "copy": "copies_source",
                    "cheat": "cheating", "mismatch": "code_answer_mismatch", "nocode": "no_code", "crash": "code_failed"}


@pytest.fixture
def scripted_teacher(monkeypatch):
    original = fault_server.FaultApp._completion

    def completion(body, prompt):
        payload = original(body, prompt)
        if prompt.startswith("Solve the following problem"):  # a self-consistency solve
            answer = 4 if "(shaky)" in prompt else 3
            for choice in payload["choices"]:
                choice.setdefault("message", {})["content"] = f"{SOLUTION} Hence $\\boxed{{{answer}}}$."
            return payload
        match = re.search(r"KIND:(\w+):(\d+)", prompt)
        source = prompt.split("Math content:\n", 1)[1].split("\n\nGuidelines", 1)[0] if match else ""
        for choice in payload["choices"]:
            text = teacher_answer(match.group(1), int(match.group(2)), source) if match else "nothing"
            choice.setdefault("message", {})["content"] = text
        payload["usage"]["completion_tokens"] = len(text) // 4
        return payload

    monkeypatch.setattr(fault_server.FaultApp, "_completion", staticmethod(completion))


def corpus(tmp_path: Path, kinds: list[str]) -> Path:
    rows = []
    for index, kind in enumerate(kinds):
        text = (f"KIND:{kind}:{index} Consider the lemma on divisibility of integers by small primes, "
                f"with the worked example number {index} about remainders and boxes in a warehouse.")
        rows.append({"id": f"t{index}", "text": text})
    return write_jsonl(tmp_path / "corpus.jsonl", rows)


def config_file(tmp_path: Path, corpus_path: Path, base_url: str, output: str, **extra) -> Path:
    config = {
        "input": {"paths": [str(corpus_path)]},
        "variants": {"tool": 1.0},
        "teacher": {"kind": "openai", "model": "teacher", "base_url": base_url, "max_in_flight": 4, "timeout_s": 5,
                    "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "cache_path": str(tmp_path / "cache.sqlite"),
                    **extra.pop("teacher", {})},
        "sandbox": {"workers": 1},
        "pricing": {"input_per_million": 2.0, "output_per_million": 8.0},
        "output": str(tmp_path / output),
        **extra,
    }
    path = tmp_path / f"{output}.yaml"
    path.write_text(json.dumps(config))
    return path


def distill(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, env=ENV)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


KINDS = ["good"] * 6 + list(EXPECTED_REASONS)


def test_accepted_and_rejected_counts_match_what_was_served(tmp_path, scripted_teacher):
    with FaultServer(fault_server.FaultPlan(rate=0.3), latency_s=0.01) as server:
        config = config_file(tmp_path, corpus(tmp_path, KINDS), server.url, "out")
        result = distill("--config", str(config))
        assert result.returncode == 0, result.stderr[-3000:]
        served = server.stats()
    out = tmp_path / "out"
    accepted, rejected = rows(out / "part-00000-of-00001.jsonl"), rows(out / "rejects-00000-of-00001.jsonl")
    assert len(accepted) == 6 and len(rejected) == len(EXPECTED_REASONS)
    reasons = sorted(r["reject_reason"] for r in rejected)
    assert reasons == sorted(EXPECTED_REASONS.values())
    for record in accepted:  # nothing invalid is kept, and every record traces back to its source
        assert record["problem"] and record["solution"] and record["final_answer"] == "3"
        assert record["source_id"].startswith("t") and record["stage"] and record["variant"] == "tool"
        assert record["validation"]["code_checked"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rejected_by_reason"] == {reason: 1 for reason in EXPECTED_REASONS.values()}
    assert manifest["usage"]["prompt_tokens"] > 0 and manifest["cost_usd"] > 0
    assert sum(served["billed"].values()) == len(KINDS)  # faults were retried, nothing paid twice
    sft = rows(out / "sft_chat.jsonl")
    assert len(sft) == 6 and sft[0]["messages"][1]["content"].count("## Solution") == 1
    assert sft[0]["messages"][0]["content"].rstrip().endswith("## Problem")

    # A rerun after completion is a no-op: no call at all.
    with FaultServer() as server:
        again = distill("--config", str(config_file(tmp_path, corpus(tmp_path, KINDS), server.url, "out")))
        assert again.returncode == 0, again.stderr[-2000:]
        assert sum(server.stats()["received"].values()) == 0


def test_dry_run_calls_nothing_and_estimates_tokens_and_cost(tmp_path, scripted_teacher):
    with FaultServer() as server:
        config = config_file(tmp_path, corpus(tmp_path, KINDS), server.url, "dry")
        result = distill("--config", str(config), "--dry-run")
        assert result.returncode == 0, result.stderr[-2000:]
        assert sum(server.stats()["received"].values()) == 0
    estimate = json.loads(result.stdout)
    assert estimate["calls"] == len(KINDS) and estimate["prompt_tokens"] > 0 and estimate["cost_usd"] > 0
    assert sum(estimate["by_stage"].values()) == len(KINDS)
    assert not (tmp_path / "dry").exists()


def test_kill_minus_9_then_rerun_loses_and_repeats_nothing(tmp_path, scripted_teacher):
    kinds = ["good"] * 40
    with FaultServer(latency_s=0.15) as server:
        config = config_file(tmp_path, corpus(tmp_path, kinds), server.url, "killed", teacher={"max_in_flight": 2})
        part = tmp_path / "killed" / "part-00000-of-00001.jsonl"
        before = kill_when_written([sys.executable, "-m", "distill", "--config", str(config)], part, 8, ENV, 60)
        assert 8 <= before < 40
        rerun = distill("--config", str(config))
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        billed = server.stats()["billed"]
    records = rows(part)
    assert len(records) == len({r["id"] for r in records}) == 40  # none lost, none twice
    # Only calls in flight at the kill (2 at most) can have been paid twice.
    assert sum(billed.values()) <= 40 + 2 and len(billed) == 40


def test_a_budget_stops_the_run_and_a_larger_one_resumes_it(tmp_path, scripted_teacher):
    with FaultServer(fault_server.FaultPlan(rate=0.5, kinds=("500", "429")), latency_s=0.01) as server:
        config = config_file(tmp_path, corpus(tmp_path, KINDS), server.url, "budget", teacher={"budget": {"max_calls": 6}})
        stopped = distill("--config", str(config))
        assert stopped.returncode == 2 and "budget exhausted" in stopped.stderr
        assert sum(server.stats()["received"].values()) <= 6  # retries count: the budget holds
        # A budget is operational, not part of what the run produces: raise it on the same folder.
        resumed = distill("--config", str(config), "--set", "teacher.budget.max_calls=200")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        billed = server.stats()["billed"]
    out = tmp_path / "budget"
    kept = rows(out / "part-00000-of-00001.jsonl") + rows(out / "rejects-00000-of-00001.jsonl")
    assert len(kept) == len({r["id"] for r in kept}) == len(KINDS)
    assert all(count == 1 for count in billed.values())  # nothing answered was asked again


@pytest.mark.slow
def test_vllm_server_as_the_teacher_rejects_nonsense_and_keeps_nothing_invalid(tmp_path, tiny_vllm_server):
    from conftest import sample_texts

    texts = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"se{i}", "text": t} for i, t in enumerate(sample_texts(12))])
    config = config_file(tmp_path, texts, tiny_vllm_server, "out", teacher={"model": "tiny"},
                         variants={"cot": 0.5, "tool": 0.5}, sampling={"max_tokens": 48})
    result = distill("--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    accepted, rejected = rows(out / "part-00000-of-00001.jsonl"), rows(out / "rejects-00000-of-00001.jsonl")
    assert len(accepted) + len(rejected) == 12
    assert accepted == []  # a random tiny model never writes a valid problem with a worked, boxed solution
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["counts"]["rejected_by_reason"].values()) == 12
    assert all(r["reject_reason"] and r["completion"] is not None for r in rejected)
    assert manifest["complete"] and (out / "sft_raw.jsonl").read_text() == ""


def test_self_consistency_keeps_only_problems_the_teacher_solves_the_same_way_again(tmp_path, scripted_teacher):
    kinds = ["good"] * 4 + ["shaky", "nobox"]
    with FaultServer() as server:
        config = config_file(tmp_path, corpus(tmp_path, kinds), server.url, "sc", self_consistency={"k": 3})
        result = distill("--config", str(config))
        assert result.returncode == 0, result.stderr[-3000:]
        again = distill("--config", str(config))  # complete: a no-op, no call
        assert again.returncode == 0 and sum(server.stats()["billed"].values()) == len(kinds) + 5
    out = tmp_path / "sc"
    accepted, rejected = rows(out / "part-00000-of-00001.jsonl"), rows(out / "rejects-00000-of-00001.jsonl")
    assert len(accepted) == 4 and all(r["self_consistency"]["agree"] == 3 for r in accepted)
    assert sorted(r["reject_reason"] for r in rejected) == ["inconsistent", "no_boxed_answer"]
    shaky = next(r for r in rejected if r["reject_reason"] == "inconsistent")
    assert shaky["self_consistency"]["answers"] == ["4", "4", "4"] and shaky["final_answer"] == "3"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rejected_by_reason"] == {"inconsistent": 1, "no_boxed_answer": 1}


def test_self_consistency_with_many_more_candidates_than_calls_in_flight(tmp_path, scripted_teacher):
    """Results are popped while requests are still being drawn: a snapshot, not the live dict."""
    kinds = ["good"] * 40 + ["shaky"] * 2  # more than the 2 x 2 + 16 request tasks the engine keeps alive
    with FaultServer() as server:
        config = config_file(tmp_path, corpus(tmp_path, kinds), server.url, "many", self_consistency={"k": 3},
                             teacher={"max_in_flight": 2})
        result = distill("--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "many"
    accepted, rejected = rows(out / "part-00000-of-00001.jsonl"), rows(out / "rejects-00000-of-00001.jsonl")
    assert len(accepted) + len(rejected) == len(kinds)
    assert sorted(r["reject_reason"] for r in rejected) == ["inconsistent", "inconsistent"]
