"""``mathsynth judge`` against a 2 s endpoint with 64 calls in flight: throughput vs the bound.

    python bench/judge_throughput.py [--records 640] [--in-flight 64] [--latency 2.0] [--repeat 2]

The endpoint is tests/fault_server.py (no faults) in a separate process, its answer replaced by
a judge verdict in JSON (score, solvable, correct, clarity, difficulty, a one-sentence
rationale) that varies with the request, so every answer is parsed for real. Every call takes
``--latency`` seconds, so no client beats in_flight / latency calls/s (the "bound"; distill's
bench uses the same setup). The records are problem/solution pairs made from the shipped sample
corpus's text. A fresh output folder and cache per run; the best of ``--repeat`` is reported,
with the baseline: the raw engine (``OpenAIEngine.generate`` on the same requests, no stage).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

ENDPOINT = r"""
import hashlib, json, sys
sys.path.insert(0, %(tests)r)
import fault_server

original = fault_server.FaultApp._completion

def completion(body, prompt):
    payload = original(body, prompt)
    h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    verdict = {"solvable": True, "correct": h %% 3 != 0, "clarity": 1 + h %% 10, "difficulty": 1 + (h >> 4) %% 10,
               "score": 1 + (h >> 8) %% 10, "rationale": "The problem is well posed and the solution checks out."}
    text = "```json\n" + json.dumps(verdict) + "\n```"
    for choice in payload["choices"]:
        choice["message"]["content"] = text
    payload["usage"]["completion_tokens"] = len(text) // 4
    return payload

fault_server.FaultApp._completion = staticmethod(completion)
sys.argv = ["fault_server", "--latency", sys.argv[1]]
fault_server.main()
"""


def start_endpoint(latency: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", ENDPOINT % {"tests": str(ROOT / "tests")}, str(latency)],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        raise RuntimeError(f"endpoint did not start: {line!r}")
    return process, f"http://127.0.0.1:{line.split()[1]}/v1"


def write_records(path: Path, count: int) -> None:
    from data.samples import SAMPLE_CORPUS

    texts = [json.loads(line)["text"] for line in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = texts[i % len(texts)]
            handle.write(json.dumps({"id": f"r{i:05d}", "source_id": f"s{i // 4}", "problem": text[:400] + f" ({i})",
                                     "solution": text[400:1200] + " so the answer is $\\boxed{4}$."}) + "\n")


def run_stage(records: Path, url: str, in_flight: int, workdir: Path) -> dict:
    from data.shards import Shard
    from eval.judge import JudgeConfig, run_judge

    config = JudgeConfig.model_validate({
        "input": {"paths": [str(records)]},
        "engine": {"kind": "openai", "model": "judge", "base_url": url, "api_key_env": "BENCH_KEY",
                   "max_in_flight": in_flight, "timeout_s": 60, "cache_path": str(workdir / "cache.sqlite")},
        "output": str(workdir / "out")})
    started = time.perf_counter()
    run_judge(config, Shard(0, 1))
    seconds = time.perf_counter() - started
    manifest = json.loads((workdir / "out" / "manifest.json").read_text())
    return {"seconds": seconds, "records": manifest["counts"]["records"], "scored": manifest["counts"]["scored"]}


def run_raw(records: Path, url: str, in_flight: int, workdir: Path) -> dict:
    from eval.judge import JudgeConfig, JudgePrompter, load_rubric, shown_values
    from llm.config import OpenAIEngineConfig
    from llm.openai_engine import OpenAIEngine

    config = JudgeConfig.model_validate({"input": {"paths": [str(records)]},
                                         "engine": {"kind": "openai", "model": "judge"}, "output": "unused"})
    rubric, _ = load_rubric(config.rubric, config.input.fields)
    prompter = JudgePrompter(rubric, config)
    rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()]
    requests = [prompter.request(row["id"], shown_values(row, config.input.fields)) for row in rows]
    engine_config = OpenAIEngineConfig(model="judge", base_url=url, api_key_env="BENCH_KEY", max_in_flight=in_flight,
                                       timeout_s=60, cache_path=str(workdir / "raw-cache.sqlite"))
    started = time.perf_counter()
    with OpenAIEngine(engine_config) as engine:
        done = sum(1 for _ in engine.generate(requests))
    return {"seconds": time.perf_counter() - started, "records": done}


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=640)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    os.environ["BENCH_KEY"] = "none"
    bound = args.in_flight / args.latency
    endpoint, url = start_endpoint(args.latency)
    try:
        best: dict[str, dict] = {}
        for attempt in range(args.repeat):
            for name, runner in (("raw engine", run_raw), ("judge stage", run_stage)):
                with tempfile.TemporaryDirectory() as tmp:
                    records = Path(tmp) / "records.jsonl"
                    write_records(records, args.records)
                    result = runner(records, url, args.in_flight, Path(tmp))
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
    finally:
        endpoint.kill()
    print(f"{args.records} records, {args.in_flight} in flight, {args.latency} s per call: bound {bound:.1f} calls/s")
    for name, result in best.items():
        rate = result["records"] / result["seconds"]
        extra = f", {result['scored']} scored" if "scored" in result else ""
        print(f"{name:12} {result['seconds']:6.1f} s  {rate:5.1f} calls/s  {rate / bound:.2f} of the bound{extra}")
    ratio = best["raw engine"]["seconds"] / best["judge stage"]["seconds"]
    print(f"judge stage / raw engine throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
