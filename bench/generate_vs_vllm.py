"""`mathsynth generate` end to end vs raw `vllm.LLM.generate` on the same prompts.

Both run in this process on ONE vLLM engine (the tiny model unless --model is given), with the
same prompts and the same per-request seeds, so both do exactly the same model work; the
difference is our overhead: corpus reading, templating, streaming, record writing, manifest.

    python bench/generate_vs_vllm.py [--prompts 2000] [--max-tokens 64] [--model DIR]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", help="checkpoint folder (default: build the tiny model)")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()


    from data.corpus import iter_documents
    from data.samples import SAMPLE_CORPUS
    from data.shards import Shard
    from llm.factory import make_engine
    from llm.tiny import build_tiny_model
    from llm.vllm_engine import to_vllm_sampling
    from runner.config import validate
    from pipeline.generate import (
        GenerateConfig,
        PromptRenderer,
        build_items,
        run_generate,
    )

    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model = args.model or str(build_tiny_model(work / "tiny"))
    # The sample corpus has 1,298 texts; the corpus file repeats it with new ids to reach --prompts.
    corpus = work / "corpus.jsonl"
    texts = [json.loads(line)["text"] for line in open(SAMPLE_CORPUS, encoding="utf-8")]
    with open(corpus, "w", encoding="utf-8") as handle:
        for i in range(args.prompts):
            handle.write(json.dumps({"id": f"doc{i}", "text": texts[i % len(texts)]}) + "\n")

    def config(output: str) -> GenerateConfig:
        return validate(GenerateConfig, {
            "input": {"paths": [str(corpus)]},
            "prompt": {"template": "Math content:\n{{ text }}\n\n## Question\n", "window_chars": 1000},
            "engine": {"kind": "vllm", "model": model, "dtype": args.dtype, "max_model_len": 2048, "enforce_eager": True},
            "sampling": {"max_tokens": args.max_tokens, "temperature": 1.0, "seed": 0},
            "output": str(work / output),
        })

    engine = make_engine(config("warmup").engine)
    # The exact requests ours will send, for the raw baseline.
    base = config("raw")
    renderer = PromptRenderer(base.prompt)
    requests = [item.request for item in build_items(iter_documents([str(corpus)]), renderer, base.sampling, False)]
    prompts = [r.prompt for r in requests]
    params = [to_vllm_sampling(r.sampling) for r in requests]
    engine.llm.generate(prompts[:64], params[:64], use_tqdm=False)  # warm-up

    raw_times, our_times, tokens = [], [], 0
    for round_index in range(args.rounds):
        start = time.perf_counter()
        outputs = engine.llm.generate(prompts, params, use_tqdm=False)
        raw_times.append(time.perf_counter() - start)
        tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)

        start = time.perf_counter()
        manifest = run_generate(config(f"ours{round_index}"), Shard(0, 1), engine=engine)
        our_times.append(time.perf_counter() - start)
        assert manifest["counts"]["records"] == args.prompts
        assert manifest["usage"]["completion_tokens"] == tokens, "both paths must do the same work"

    raw, ours = min(raw_times), min(our_times)
    print(f"prompts={args.prompts} max_tokens={args.max_tokens} completion_tokens={tokens} model={'tiny' if not args.model else model}")
    print(f"raw vllm.LLM.generate : {raw:7.2f} s  {args.prompts / raw:8.1f} prompts/s  {tokens / raw:9.0f} tok/s  (best of {args.rounds})")
    print(f"mathsynth generate    : {ours:7.2f} s  {args.prompts / ours:8.1f} prompts/s  {tokens / ours:9.0f} tok/s  (best of {args.rounds})")
    print(f"generate_vs_vllm ratio={raw / ours:.3f} (ours/raw throughput; target >= 0.9)")


if __name__ == "__main__":
    main()
