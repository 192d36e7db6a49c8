"""`mathsynth rft`'s non-model cost per sample (prompting, grading, dedup, pairs, writing) against
raw generation time, at k=64 (issue #16: target <= 5% of the model time).

The model is scripted: every problem of a GSM8K-train slice gets a pass rate, and each sample is a
variant of the problem's reference solution (openers, links, fillers; a wrong final number or no
answer for the failures), about 300 characters like a real GSM8K solution, so grading, the
exact/near-duplicate tests and the pairs do their real work. One round per problem (k =
max_samples = 64), so both paths ask exactly the same requests.

1. Non-model cost: ``run_rft`` with an engine that answers instantly (in-process); the wall time
   is the stage minus the model. Grading and selection are timed apart.
2. Model time: an OpenAI-compatible endpoint of fixed latency (tests/fault_server.py in its own
   process, answering with the same texts), ``--in-flight`` calls at once. Raw = the engine's
   ``generate`` over the same requests, results dropped; rft = the whole stage on the endpoint.

    python bench/rft_overhead.py [--problems 64] [--k 64] [--latency 2.0] [--in-flight 16]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MATHSYNTH_LOG_LEVEL", "WARNING")

OPENERS = ["", "First, ", "Let's work it out. ", "We start from what we know. ", "Step by step: "]
LINKS = ["", "Then ", "Next, ", "So ", "After that, ", "Now "]
FILLERS = ["", "", "", " We keep track of the units.", " This is the key quantity.", " Let us double-check it."]
ENDINGS = ["The answer is \\boxed{{{a}}}.", "So the final answer is $\\boxed{{{a}}}$.", "Therefore, \\boxed{{{a}}}."]
POOL = 256  # variants per problem


def problems(count: int):
    from data.benchmarks.registry import EXEMPLAR_POOLS, load_benchmark

    return load_benchmark(EXEMPLAR_POOLS["gsm8k_train"].spec, limit=count)


def variants(record, rng: random.Random) -> list[str]:
    """POOL solutions of one problem; a share (its pass rate) right, the rest wrong or unanswered."""
    lines = [line for line in (record.reference_solution or record.question).splitlines() if line.strip()]
    pass_rate = rng.choice([0.0, 0.05, 0.2, 0.5, 0.8, 1.0])
    out = []
    for _ in range(POOL):
        text = "\n".join(rng.choice(OPENERS if j == 0 else LINKS) + line + rng.choice(FILLERS)
                         for j, line in enumerate(lines))
        roll = rng.random()
        if roll < pass_rate:
            answer = record.gold
        elif roll < pass_rate + (1 - pass_rate) * 0.1:
            out.append(text + "\nI am not sure what the question asks in the end.")
            continue
        else:
            answer = str(int(float(record.gold)) + rng.randint(1, 9))
        out.append(text + "\n" + rng.choice(ENDINGS).format(a=answer))
    return out


class Script:
    def __init__(self, count: int) -> None:
        self.records = problems(count)
        self.texts = {r.id: variants(r, random.Random(r.id)) for r in self.records}

    def answers(self, prompt: str, seed, n: int) -> list[str]:
        record = next(r for r in self.records if r.question.strip() in prompt)
        pool = self.texts[record.id]
        return [pool[int(hashlib.md5(f"{seed}/{i}".encode()).hexdigest()[:8], 16) % POOL] for i in range(n)]


def serve(count: int, latency: float) -> None:
    """The endpoint process: fault_server answering with the script's texts."""
    import fault_server

    script = Script(count)
    original = fault_server.FaultApp._completion

    def completion(body, prompt):
        payload = original(body, prompt)
        for choice, text in zip(payload["choices"], script.answers(prompt, body.get("seed"), len(payload["choices"]))):
            choice["text"] = text
        return payload

    fault_server.FaultApp._completion = staticmethod(completion)
    sys.argv = [sys.argv[0], "--latency", str(latency)]
    fault_server.main()


def config(workdir: Path, name: str, args, engine: dict):
    from eval.rft import RftConfig

    return RftConfig.model_validate({
        "input": {"benchmarks": ["gsm8k_train"], "limit": args.problems}, "engine": engine, "prompt": "zero_shot",
        "k": args.k, "wanted_correct": args.k, "max_samples": args.k, "max_per_problem": 4, "similarity": 0.9,
        "sampling": {"max_tokens": 512}, "output": str(workdir / name)})


def non_model_cost(workdir: Path, args) -> dict:
    import eval.rft as rft
    from data.shards import Shard
    from llm.engine import Engine
    from llm.types import Completion, GenerationResult, Usage

    script = Script(args.problems)

    class Instant(Engine):
        model_name = "scripted"

        def generate(self, requests):
            for request in requests:
                self.calls += 1
                texts = script.answers(request.prompt, request.sampling.seed, request.sampling.n)
                yield GenerationResult(request.id, [Completion(t, "stop", len(t) // 4) for t in texts],
                                       Usage(len(request.prompt) // 4, sum(len(t) // 4 for t in texts)))

    spent = {"grading": 0.0, "selection": 0.0}

    def timed(name, function):
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[name] += time.perf_counter() - started
        return wrapper

    rft.Grading.verdicts = timed("grading", rft.Grading.verdicts)
    rft.select_diverse = timed("selection", rft.select_diverse)
    rft.run_rft(config(workdir, "warm", argparse.Namespace(problems=2, k=args.k), {"kind": "hf", "model": "x"}),
                Shard(0, 1), engine=Instant())  # imports, grader start
    spent.update(grading=0.0, selection=0.0)
    started = time.perf_counter()
    manifest = rft.run_rft(config(workdir, "instant", args, {"kind": "hf", "model": "x"}), Shard(0, 1), engine=Instant())
    wall = time.perf_counter() - started
    counts = manifest["counts"]
    return {"wall": wall, "samples": counts["samples"], "kept": counts["records"], "pairs": counts["pairs"],
            "correct": counts["correct"], **spent}


def endpoint_runs(workdir: Path, args) -> dict:
    from data.records import content_id
    from data.shards import Shard
    from eval.rft import RftPrompts, run_rft
    from llm.factory import make_engine
    from llm.generation_run import derive_seed
    from llm.types import GenerationRequest

    server = subprocess.Popen([sys.executable, __file__, "--serve", "--problems", str(args.problems),
                               "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        engine = {"kind": "openai", "model": "scripted", "base_url": f"http://127.0.0.1:{port}/v1",
                  "api": "completions", "max_in_flight": args.in_flight, "api_key_env": "RFT_BENCH_KEY"}
        os.environ["RFT_BENCH_KEY"] = "none"
        raw_config = config(workdir, "raw", args, engine)
        prompts = RftPrompts(raw_config)
        requests = []
        for record in problems(args.problems):
            key = f"{content_id(record.id, prompts.prompt_id())}#r0"
            sampling = raw_config.sampling.model_copy(update={"n": args.k, "seed": derive_seed(0, key)})
            requests.append(GenerationRequest(id=key, sampling=sampling, prompt=prompts(record)))
        with make_engine(raw_config.engine) as model:
            started = time.perf_counter()
            samples = sum(len(result.completions) for result in model.generate(requests))
            raw = time.perf_counter() - started
        started = time.perf_counter()
        manifest = run_rft(config(workdir, "endpoint", args, engine), Shard(0, 1))
        whole = time.perf_counter() - started
        assert manifest["counts"]["samples"] == samples
        return {"raw": raw, "rft": whole, "samples": samples}
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--latency", type=float, default=2.0, help="seconds per call of k samples")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.problems, args.latency)
    with tempfile.TemporaryDirectory() as tmp:
        cost = non_model_cost(Path(tmp), args)
        model = endpoint_runs(Path(tmp), args)
    per_sample = cost["wall"] / cost["samples"]
    model_per_sample = model["raw"] / model["samples"]
    print(f"{args.problems} GSM8K-train problems x k={args.k}: {cost['samples']} samples, {cost['correct']} correct, "
          f"{cost['kept']} kept, {cost['pairs']} pairs")
    print(f"non-model cost (instant engine): {cost['wall']:.2f} s = {per_sample * 1e6:.0f} us/sample "
          f"(grading {cost['grading'] / cost['samples'] * 1e6:.0f}, selection {cost['selection'] / cost['samples'] * 1e6:.0f}, "
          f"rest: prompts, sample/part/pair/problem rows, manifest)")
    print(f"endpoint {args.latency:g} s/call, {args.in_flight} calls in flight: raw generate {model['raw']:.2f} s "
          f"({model_per_sample * 1e3:.1f} ms/sample), rft end to end {model['rft']:.2f} s "
          f"(x{model['rft'] / model['raw']:.3f})")
    print(f"non-model cost / model time per sample: {per_sample / model_per_sample:.2%} (target <= 5%); "
          f"5% holds while a sample takes >= {per_sample * 20 * 1e3:.1f} ms of model time")


if __name__ == "__main__":
    main()
