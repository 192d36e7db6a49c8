"""The distill stage against a scripted teacher: throughput, and how close ``--dry-run`` gets.

    python bench/distill_teacher.py [--texts 640] [--in-flight 64] [--latency 2.0] [--repeat 2] [--in-thread]

The teacher is tests/fault_server.py (no faults) with ``FaultApp._completion`` patched to write
a well-formed answer for the stage named in the prompt (its title is parsed from the prompt):
``<problem>\\n\\n## Solution\\n<solution> ... $\\boxed{n}$``, with as many words as the
midpoints of the stage's ``problem_words`` / ``solution_words`` (stages.yaml). The words are
runs of real math prose from the shipped sample corpus, drawn with a seed taken from the
request, so every answer is distinct (no near-duplicate rejects) and reads like LaTeX-heavy text.
It bills like a real provider: a byte-level BPE (``llm.tiny.train_tokenizer(vocab_size=8000)``
on the sample corpus) counts the prompt as the chat template renders it and the completion
plus one end-of-sequence token. By default the endpoint runs in a separate process so it does
not share this process's GIL (``--in-thread`` puts it on a thread here, for comparison).

1. Throughput: ``run_distill`` over the first ``--texts`` texts of the sample corpus, CoT only,
   code checks off, ``teacher.max_in_flight`` calls in flight; every call takes ``--latency``
   seconds, so no client beats in_flight / latency calls/s (the "bound"). A fresh output folder
   and cache per run; the best of ``--repeat`` runs is reported.
2. Dry-run accuracy: ``dry_run(config, Shard(0, 1))`` on the same config, with the default
   heuristic (``estimate.chars_per_token`` / ``tokens_per_word``) and with ``estimate.tokenizer``
   set to a saved copy of the endpoint's tokenizer, against the tokens the endpoint billed for
   the run (manifest ``usage.prompt_tokens`` / ``usage.completion_tokens``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import fault_server  # noqa: E402  (tests/fault_server.py)

from data.samples import SAMPLE_CORPUS  # noqa: E402

_STAGE_IN_PROMPT = re.compile(r"self-contained\s+(.+?) math problem for (.+?), then solve it")
_ENDING = "Therefore the answer is $\\boxed{{{answer}}}$."  # 5 words


# --- the scripted teacher (runs in the endpoint's process) -------------------------------------

class ScriptedTeacher:
    """Answers a distill prompt with a well-formed output of the stage's midpoint word budgets,
    and counts tokens with a real BPE."""

    def __init__(self, tokenizer_dir: str) -> None:
        from transformers import AutoTokenizer

        from data.stage_prompts.library import PromptLibrary

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        library = PromptLibrary.load()
        self.budgets = {(spec.title, spec.audience): (round(sum(spec.problem_words) / 2), round(sum(spec.solution_words) / 2))
                        for spec in library.stages.values()}
        words: list[str] = []
        with open(SAMPLE_CORPUS, encoding="utf-8") as handle:
            for line in handle:
                # Prose words only: nothing that could read as a header, a code fence or a box.
                words.extend(w for w in json.loads(line)["text"].split()
                             if len(w) <= 30 and not any(bad in w for bad in ("#", "`", "boxed")))
        self.words = words
        self.unknown_stage = 0

    def prose(self, rng: random.Random, count: int) -> str:
        out: list[str] = []
        while len(out) < count:
            start = rng.randrange(len(self.words) - 12)
            out.extend(self.words[start : start + 12])
        return " ".join(out[:count])

    def answer(self, prompt: str, seed: Any, index: int) -> str:
        match = _STAGE_IN_PROMPT.search(prompt)
        budget = self.budgets.get((match.group(1), match.group(2))) if match else None
        if budget is None:
            self.unknown_stage += 1
            budget = (70, 250)
        problem_words, solution_words = budget
        rng = random.Random(hashlib.sha256(f"{prompt}|{seed}|{index}".encode()).digest())
        problem = self.prose(rng, problem_words - 3) + " Find the value."  # 3 words
        solution = self.prose(rng, solution_words - 5) + " " + _ENDING.format(answer=rng.randrange(1000))
        return f"{problem}\n\n## Solution\n{solution}"

    def completion(self, body: dict[str, Any], prompt: str) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        chat = "messages" in body
        rendered = (self.tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
                    if chat else prompt)
        prompt_tokens = len(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        choices, completion_tokens = [], 0
        for i in range(n):
            text = self.answer(prompt, body.get("seed"), i)
            completion_tokens += len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                           if chat else {"index": i, "text": text, "finish_reason": "stop"})
        return {"id": "cmpl-scripted", "object": "chat.completion" if chat else "text_completion", "created": 0,
                "model": body.get("model", ""), "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}


def install_teacher(tokenizer_dir: str) -> ScriptedTeacher:
    teacher = ScriptedTeacher(tokenizer_dir)
    fault_server.FaultApp._completion = staticmethod(teacher.completion)
    return teacher


def serve(tokenizer_dir: str, latency: float) -> None:
    import asyncio

    from aiohttp import web

    install_teacher(tokenizer_dir)

    async def main() -> None:
        app = fault_server.FaultApp(fault_server.FaultPlan(), latency)
        runner = web.AppRunner(app.make_app(), handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        print(f"PORT {runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class Endpoint:
    """The scripted teacher in a child process (default) or on a thread of this one."""

    def __init__(self, tokenizer_dir: str, latency: float, in_thread: bool) -> None:
        self.proc: subprocess.Popen | None = None
        self.server: fault_server.FaultServer | None = None
        if in_thread:
            install_teacher(tokenizer_dir)
            self.server = fault_server.FaultServer(latency_s=latency).start()
            self.url = self.server.url
        else:
            cmd = [sys.executable, __file__, "--serve", "--tokenizer", tokenizer_dir, "--latency", str(latency)]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if not line.startswith("PORT "):
                self.proc.kill()
                raise SystemExit(f"scripted teacher did not start: {line!r}")
            self.url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def cpu_s(self) -> float:
        if self.proc is None:
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        return fault_server.fetch_stats(self.url)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


# --- the benchmark -----------------------------------------------------------------------------

def save_tokenizer(folder: Path) -> Path:
    from llm.tiny import train_tokenizer

    with open(SAMPLE_CORPUS, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    tokenizer = train_tokenizer(texts, vocab_size=8000)
    tokenizer.save_pretrained(folder)
    return folder


def make_config(url: str, texts: int, in_flight: int, work: Path, tag: str):
    from distill.run import DistillConfig

    return DistillConfig.model_validate({
        "input": {"paths": [str(SAMPLE_CORPUS)], "limit": texts},
        "variants": {"cot": 1.0},
        "teacher": {"kind": "openai", "model": "teacher", "base_url": url, "max_in_flight": in_flight,
                    "timeout_s": 60, "cache_path": str(work / f"cache-{tag}.sqlite")},
        "validation": {"check_code": False},
        "output": str(work / f"out-{tag}"),
    })


def rel(estimate: float, actual: float) -> str:
    return f"{(estimate - actual) / actual * 100:+.1f}%" if actual else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=640)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--in-thread", action="store_true", help="the endpoint on a thread of this process")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.tokenizer, args.latency)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    from data.shards import Shard
    from distill.run import dry_run, run_distill

    bound = args.in_flight / args.latency
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        tokenizer_dir = save_tokenizer(work / "tokenizer")
        print(f"tokenizer: byte-level BPE, vocab 8000, trained on {SAMPLE_CORPUS.name} in {time.perf_counter() - t0:.1f}s",
              flush=True)
        endpoint = Endpoint(str(tokenizer_dir), args.latency, args.in_thread)
        try:
            print(f"endpoint {endpoint.url} ({'thread' if args.in_thread else 'separate process'}): latency "
                  f"{args.latency:g} s, {args.in_flight} in flight, bound {bound:g} calls/s; {args.texts} texts per run, "
                  f"best of {args.repeat}, {os.cpu_count()} cores", flush=True)
            runs = []
            for rep in range(args.repeat):
                config = make_config(endpoint.url, args.texts, args.in_flight, work, f"run{rep}")
                before = endpoint.stats()["total_billed"]
                c0, s0, t0 = time.process_time(), endpoint.cpu_s(), time.perf_counter()
                manifest = run_distill(config, Shard(0, 1))
                wall = time.perf_counter() - t0
                ccpu, scpu = time.process_time() - c0, endpoint.cpu_s() - s0
                served = endpoint.stats()
                calls = manifest["usage"]["engine_calls_this_run"]
                gen_s = manifest["timings"]["total_shard_seconds"]  # run_generation alone
                run = {"config": config, "manifest": manifest, "wall": wall, "calls": calls, "gen_s": gen_s,
                       "billed": served["total_billed"] - before, "max_active": served["max_active"], "client_cpu_ms": ccpu * 1e3 / max(calls, 1),
                       "server_cpu_ms": scpu * 1e3 / max(calls, 1)}
                runs.append(run)
                accepted = manifest["counts"].get("records")
                print(f"  run {rep}: {calls / wall:.1f} calls/s ({calls} calls in {wall:.1f}s, {gen_s:.1f}s generating), "
                      f"max in flight at the endpoint {served['max_active']}, accepted {accepted}, "
                      f"rejected {manifest['counts'].get('rejected')} {manifest['counts'].get('rejected_by_reason')}",
                      flush=True)
            best = max(runs, key=lambda r: r["calls"] / r["wall"])
            counts = best["manifest"]["counts"]
            rate = best["calls"] / best["wall"]
            print(f"distill[throughput] calls/s={rate:.2f} ratio_to_bound={rate / bound:.3f} calls={best['calls']} "
                  f"billed={best['billed']} seconds={best['wall']:.2f} generating={best['gen_s']:.2f} (bound {args.texts / bound:.1f}) "
                  f"max_in_flight_seen={best['max_active']} "
                  f"accepted={counts.get('records')}/{args.texts} rejected={counts.get('rejected')} "
                  f"client_cpu_ms/call={best['client_cpu_ms']:.2f} server_cpu_ms/call={best['server_cpu_ms']:.2f}",
                  flush=True)

            # 2. dry-run accuracy, against what the endpoint billed for the first run.
            usage = runs[0]["manifest"]["usage"]
            actual_p, actual_c = usage["prompt_tokens"], usage["completion_tokens"]
            config = runs[0]["config"]
            with_tokenizer = config.model_copy(update={"estimate": config.estimate.model_copy(
                update={"tokenizer": str(tokenizer_dir)})})
            print(f"billed for the run: prompt_tokens={actual_p} completion_tokens={actual_c} "
                  f"(chat template: prompt counted as the endpoint renders it; completion + 1 EOS per call)", flush=True)
            for name, cfg in (("heuristic", config), ("tokenizer", with_tokenizer)):
                t0 = time.perf_counter()
                est = dry_run(cfg, Shard(0, 1))
                took = time.perf_counter() - t0
                ep, ec = est["prompt_tokens"], est["completion_tokens"]
                print(f"distill[dry_run:{name}] calls={est['calls']} prompt est={ep} actual={actual_p} err={rel(ep, actual_p)} "
                      f"completion est={ec} actual={actual_c} err={rel(ec, actual_c)} "
                      f"total est={ep + ec} actual={actual_p + actual_c} err={rel(ep + ec, actual_p + actual_c)} "
                      f"({took:.1f}s)", flush=True)
            # What the defaults would have to be for this endpoint (a suggestion only, not applied).
            prompt_chars = sum(len(item["prompt"]) for item in _records(Path(config.output)))
            words = sum(_budget_words(r) for r in _records(Path(config.output)))
            print(f"fit: chars_per_token={prompt_chars / actual_p:.2f} (default {config.estimate.chars_per_token:g}; "
                  f"prompt text only, the chat template's tokens included in actual), "
                  f"tokens_per_word={actual_c / words:.2f} (default {config.estimate.tokens_per_word:g})", flush=True)
        finally:
            endpoint.close()


def _records(folder: Path):
    from data.storage import iter_records

    yield from iter_records(folder)
    for path in sorted(folder.glob("rejects-*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            yield from (json.loads(line) for line in handle)


_BUDGET_WORDS: dict[str, float] = {}


def _budget_words(record: dict[str, Any]) -> float:
    if not _BUDGET_WORDS:
        from data.stage_prompts.library import PromptLibrary

        for name, spec in PromptLibrary.load().stages.items():
            _BUDGET_WORDS[name] = (sum(spec.problem_words) + sum(spec.solution_words)) / 2
    return _BUDGET_WORDS[record["stage"]]


if __name__ == "__main__":
    main()
