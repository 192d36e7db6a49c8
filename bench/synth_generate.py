"""`mathsynth synth generate` end to end vs raw `vllm.LLM.generate` on the same prompts, and the
per-record cost of everything that is not the model.

1. End to end. Both paths run in this process on ONE vLLM engine (built once with
   `make_engine(config.engine)`, the tiny model unless --model is given; ours gets it through
   `run_synth_generate(..., engine=engine)`), so both have the same engine settings (dtype,
   max_model_len, max_num_seqs, enforce_eager, chunked prefill off on CPU) and the same warm
   engine. Raw gets the exact prompt strings and `vllm.SamplingParams` ours sends: the requests
   come from `synth.generate.build_items` on the same corpus and config (education-stage
   prompts, per-variant sampling, `n`, per-request seeds derived from the item keys), converted
   with the engine's own `to_vllm_sampling`. Both do the same model work (asserted: the same
   completion tokens). Ours adds corpus reading, prompting, streaming, parsing, record writing,
   the manifest.
2. Non-model cost. The completions the raw run produced are replayed through the same
   `run_synth_generate` by an engine that answers instantly (as tests/test_synth_generate.py's
   ScriptedEngine does), over --replay-records records (the corpus texts repeated with new
   ids), once with the tiny model's completions (which mostly fail to parse) and once with
   well-formed problem/solution completions (the parse-and-format path a trained synthesizer
   takes). That is the whole stage minus the model: microseconds and records/s per record.

    python bench/synth_generate.py [--texts 1000] [--n 2] [--max-tokens 64] [--replay-records 50000]
                                   [--model DIR] [--max-num-seqs N] [--threads 1] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_corpus(path: Path, texts: list[str], count: int, prefix: str) -> Path:
    """``count`` rows cycling through ``texts``, each with its own id (so its own prompt key)."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": f"{prefix}{i}", "text": texts[i % len(texts)]}) + "\n")
    return path


def well_formed(i: int) -> str:
    """A problem/solution completion of a few hundred characters, with code and a boxed answer."""
    a, b = 3 + i % 17, 5 + i % 11
    return (f"A gardener plants {a} rows of {b} tulips and then {a} more rows of {b + 2} daffodils in the "
            f"remaining beds of the park. How many flowers does she plant in total?\n\n## Solution\n"
            f"The tulips number {a} x {b} = {a * b} and the daffodils {a} x {b + 2} = {a * (b + 2)}, because "
            f"every row of a kind holds the same number of bulbs. Adding both gives the total.\n"
            f"```python\nprint({a} * {b} + {a} * {b + 2})\n```\n"
            f"So she plants $\\boxed{{{a * b + a * (b + 2)}}}$ flowers.")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=1000, help="corpus texts (windows) for the end-to-end run")
    parser.add_argument("--n", type=int, default=2, help="samples per text (config key n)")
    parser.add_argument("--max-tokens", type=int, default=64, help="sampling.{cot,tool}.max_tokens")
    parser.add_argument("--rounds", type=int, default=2, help="end-to-end rounds; best of them is reported")
    parser.add_argument("--warmup", type=int, default=64, help="texts each path runs before timing")
    parser.add_argument("--replay-records", type=int, default=50000, help="records for the non-model replay")
    parser.add_argument("--replay-rounds", type=int, default=2, help="replays of each kind; best is reported")
    parser.add_argument("--model", help="checkpoint folder (default: build the tiny model)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="vLLM's batch limit (default: vLLM's)")
    parser.add_argument("--no-eager", action="store_true", help="let vLLM compile / capture graphs (GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--json", dest="json_out", help="write the numbers here")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)

    from data.corpus import read_corpus
    from data.samples import SAMPLE_CORPUS
    from data.shards import Shard
    from data.stage_prompts.prompted import load_library
    from llm.engine import Engine
    from llm.factory import make_engine
    from llm.tiny import build_tiny_model
    from llm.types import Completion, GenerationResult, Usage
    from llm.vllm_engine import to_vllm_sampling
    from synth.generate import SynthGenerateConfig, build_items, run_synth_generate

    work = Path(tempfile.mkdtemp(prefix="bench-synth-generate-"))
    model = args.model or str(build_tiny_model(work / "tiny"))
    # The sample corpus has 1,298 texts; the corpus repeats it with new ids to reach --texts.
    texts = [json.loads(line)["text"] for line in open(SAMPLE_CORPUS, encoding="utf-8")]
    corpus = write_corpus(work / "corpus.jsonl", texts, args.texts, "doc")

    engine_keys = {"kind": "vllm", "model": model, "dtype": args.dtype, "max_model_len": args.max_model_len,
                   "enforce_eager": not args.no_eager}
    if args.max_num_seqs:
        engine_keys["max_num_seqs"] = args.max_num_seqs

    def config(output: str, corpus_path: Path = corpus, limit: int | None = None) -> SynthGenerateConfig:
        return SynthGenerateConfig.model_validate({
            "input": {"paths": [str(corpus_path)], **({"limit": limit} if limit else {})},
            "engine": engine_keys,
            "n": args.n,
            # The paper's per-variant sampling (cot: T=1.0; tool: T=0.1, top_p 0.95; stop at
            # "\n## Problem"), with max_tokens cut to --max-tokens so the tiny model runs on a CPU.
            "sampling": {"cot": {"max_tokens": args.max_tokens}, "tool": {"max_tokens": args.max_tokens}},
            "output": str(work / output),
        })

    def planned(cfg: SynthGenerateConfig):
        return build_items(read_corpus(cfg.input, Shard(0, 1)), load_library(cfg), cfg)

    base = config("plan")
    engine = make_engine(base.engine)
    # The exact requests ours will send, for the raw baseline.
    requests = [item.request for item in planned(base)]
    prompts = [r.prompt for r in requests]
    params = [to_vllm_sampling(r.sampling) for r in requests]
    assert all(p is not None for p in prompts), "format raw: every request is a prompt string"
    variants = {}
    for r in requests:
        key = (r.sampling.temperature, r.sampling.top_p)
        variants[key] = variants.get(key, 0) + 1

    # Warm both paths on texts outside the timed set's ids.
    warm = min(args.warmup, args.texts)
    engine.llm.generate(prompts[:warm], params[:warm], use_tqdm=False)
    warm_corpus = write_corpus(work / "warm.jsonl", texts, warm, "warm")
    run_synth_generate(config("warmup", warm_corpus), Shard(0, 1), engine=engine)

    expected_records = args.texts * args.n
    raw_times, our_times, tokens, outputs = [], [], 0, None
    for round_index in range(args.rounds):
        start = time.perf_counter()
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        raw_times.append(time.perf_counter() - start)
        tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)

        start = time.perf_counter()
        manifest = run_synth_generate(config(f"ours{round_index}"), Shard(0, 1), engine=engine)
        our_times.append(time.perf_counter() - start)
        assert manifest["counts"]["records"] == expected_records, manifest["counts"]
        assert manifest["usage"]["completion_tokens"] == tokens, "both paths must do the same work"

    # Same model work, and (seeded per request) the same text: check on the last round.
    raw_text = {(r.id, i): c.text for r, o in zip(requests, outputs) for i, c in enumerate(o.outputs)}
    ours_rows = [json.loads(line) for part in sorted((work / f"ours{args.rounds - 1}").glob("part-*.jsonl"))
                 for line in open(part, encoding="utf-8")]
    same_text = sum(raw_text.get((row["item_key"], row["sample_index"])) == row["completion"] for row in ours_rows)
    parse_errors = sum(manifest["counts"]["parse_errors"].values())

    raw, ours = min(raw_times), min(our_times)
    ratio = raw / ours

    # --- 2. the non-model part: replay precomputed completions instantly -------------------------
    # Stop vLLM first, so its engine-core and worker processes do not share the cores with the
    # replay: what is timed is this process alone.
    max_num_seqs = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    core = getattr(engine.llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    engine.close()

    class ReplayEngine(Engine):
        """Answers each request at once with the next precomputed completions from ``bank``."""

        def __init__(self, bank: list[tuple[list[Completion], int]], name: str):
            super().__init__()
            self.bank, self.model_name = bank, name

        def generate(self, requests):
            bank, size = self.bank, len(self.bank)
            for i, request in enumerate(requests):
                completions, prompt_tokens = bank[i % size]
                completions = [completions[k % len(completions)] for k in range(request.sampling.n)]
                self.calls += 1
                usage = Usage(prompt_tokens, sum(c.num_tokens or 0 for c in completions))
                self.usage.add(usage)
                yield GenerationResult(request.id, completions, usage)

    replay_texts = max(1, args.replay_records // args.n)
    replay_corpus = write_corpus(work / "replay.jsonl", texts, replay_texts, "rep")
    tiny_bank = [([Completion(c.text, c.finish_reason, len(c.token_ids)) for c in o.outputs],
                  len(o.prompt_token_ids or ())) for o in outputs]
    good_bank = [([Completion(well_formed(i * args.n + k), "stop", 120) for k in range(args.n)], 600)
                 for i in range(512)]

    start = time.perf_counter()
    planned_count = sum(1 for _ in planned(config("plan-replay", replay_corpus)))
    prompting = time.perf_counter() - start
    assert planned_count == replay_texts

    replays = {}
    for name, bank in (("tiny-model completions", tiny_bank), ("well-formed completions", good_bank)):
        best, all_seconds = None, []
        for round_index in range(args.replay_rounds):
            folder = work / f"replay-{len(replays)}-{round_index}"
            start = time.perf_counter()
            replay_manifest = run_synth_generate(config(folder.name, replay_corpus), Shard(0, 1),
                                                 engine=ReplayEngine(bank, model))
            seconds = time.perf_counter() - start
            records = replay_manifest["counts"]["records"]
            assert records == replay_texts * args.n, replay_manifest["counts"]
            if best is None or seconds < best["seconds"]:
                best = {
                    "records": records, "seconds": seconds, "us_per_record": seconds / records * 1e6,
                    "records_per_s": records / seconds,
                    "parse_errors": sum(replay_manifest["counts"]["parse_errors"].values()),
                    "bytes_per_record": next(folder.glob("part-*.jsonl")).stat().st_size / records,
                }
            all_seconds.append(seconds)
        replays[name] = {**best, "seconds_all": all_seconds}

    # --- report ------------------------------------------------------------------------------------
    raw_us_per_record = raw / expected_records * 1e6
    model_label = "tiny (random init)" if not args.model else model
    print(f"\nmodel={model_label} texts={args.texts} n={args.n} records={expected_records} max_tokens={args.max_tokens} "
          f"completion_tokens={tokens} prompts: {len(prompts)} (by (temperature, top_p): {variants})")
    print(f"engine: ONE vLLM engine built from the config (make_engine), shared: raw calls its .llm.generate, "
          f"ours gets it via run_synth_generate(engine=...); {engine_keys}; max_num_seqs "
          f"{max_num_seqs}; this process: torch threads "
          f"{torch.get_num_threads()}; VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}")
    print(f"warm-up: {warm} texts through each path; rounds alternate raw, ours; best of {args.rounds}; "
          f"replays after vLLM is shut down, best of {args.replay_rounds}")
    print(f"same completion text as raw for {same_text}/{len(ours_rows)} records; {parse_errors} of ours failed to parse")
    print()
    print("| path | seconds | records/s | tokens/s | us/record |")
    print("|---|---|---|---|---|")
    print(f"| raw vllm.LLM.generate | {raw:.2f} | {expected_records / raw:.1f} | {tokens / raw:.0f} | {raw_us_per_record:.0f} |")
    print(f"| mathsynth synth generate (end to end) | {ours:.2f} | {expected_records / ours:.1f} | {tokens / ours:.0f} "
          f"| {ours / expected_records * 1e6:.0f} |")
    print(f"| prompting only (corpus read + windows + prompts, {replay_texts} texts) | {prompting:.2f} | "
          f"{replay_texts / prompting:.0f} texts/s | | {prompting / (replay_texts * args.n) * 1e6:.1f} |")
    for name, row in replays.items():
        print(f"| replay, {name} (no model: prompting+parsing+writing+manifest) | {row['seconds']:.2f} | "
              f"{row['records_per_s']:.0f} | | {row['us_per_record']:.1f} |")
    print()
    print(f"all raw times {[round(t, 2) for t in raw_times]}; ours {[round(t, 2) for t in our_times]}")
    print(f"synth_generate_vs_vllm ratio={ratio:.3f} (ours/raw throughput, end to end; target >= 0.9)")
    for name, row in replays.items():
        print(f"non-model cost, {name}: {row['us_per_record']:.1f} us/record = {row['records_per_s']:.0f} records/s "
              f"= {row['us_per_record'] / raw_us_per_record:.3f} of raw vLLM's time per record on this model; "
              f"1M records: {row['us_per_record']:.0f} s of one core ({row['parse_errors']} parse errors, "
              f"{row['bytes_per_record']:.0f} bytes/record)")

    if args.json_out:
        result = {
            "model": model_label, "texts": args.texts, "n": args.n, "records": expected_records,
            "max_tokens": args.max_tokens, "completion_tokens": tokens, "rounds": args.rounds, "warmup": warm,
            "engine": engine_keys, "max_num_seqs": max_num_seqs, "threads": args.threads,
            "raw_seconds": raw, "ours_seconds": ours, "raw_seconds_all": raw_times, "ours_seconds_all": our_times,
            "ratio": ratio, "same_text": same_text, "parse_errors": parse_errors,
            "prompting": {"texts": replay_texts, "seconds": prompting,
                          "us_per_record": prompting / (replay_texts * args.n) * 1e6},
            "replay": replays,
        }
        Path(args.json_out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
