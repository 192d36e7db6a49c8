"""What ``synth filter`` costs per record, against the floor of reading and writing the records.

Synthetic ``synth generate`` records (chain-of-thought and tool, a share of planted exact and
near duplicates and of benchmark questions pasted in) are written as a sealed generate folder;
then, in one process:

* floor: read every part and write every record back out unchanged (json load + dump), which
  any filtering stage must pay;
* ours, text filters: ``run_synth_filter`` with format, length, decontamination (13 benchmark
  test sets) and cross-shard dedup, the code check off;
* ours, code check: the same on tool records only, with the sandbox running every program.

It prints records/s and microseconds per record for each, the ratio to the floor, and how many
CPU-hours a million records take, which is the number that decides whether filtering stays
negligible next to generation.

    python bench/synth_filter.py --records 100000 --tool-records 400
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("apple river copper lantern meadow violin harbor pepper glacier saddle orchid marble canyon thimble falcon "
         "velvet quarry ribbon walnut beacon tunnel cobalt prairie kettle lemon anchor summit pebble cedar mosaic "
         "window garden silver bridge forest candle rocket spider castle pirate jungle wizard number triangle "
         "circle square sum product ratio fraction percent distance speed hour minute price coin").split()


def synthetic_records(count: int, variant: str, seed: int) -> list[dict]:
    from data.benchmarks.registry import load_benchmark
    from synth.text_format import pretraining_text

    rng = random.Random(seed)
    questions = [r.question for r in load_benchmark("gsm8k")][:200]
    problems: list[str] = []
    rows = []
    for i in range(count):
        roll = rng.random()
        if problems and roll < 0.05:
            problem = rng.choice(problems)  # exact copy
        elif problems and roll < 0.10:
            problem = rng.choice(problems) + " Explain briefly."  # near copy
        elif roll < 0.11:
            problem = "Consider this. " + rng.choice(questions)  # contaminated
        else:
            problem = " ".join(rng.choices(WORDS, k=rng.randint(25, 60))) + f" What is {i} plus {i % 7}?"
        problems.append(problem)
        answer = str(i + i % 7)
        solution = " ".join(rng.choices(WORDS, k=rng.randint(40, 120)))
        code = None
        if variant == "tool":
            code = f"x = {i}\ny = {i % 7}\nprint(x + y)"
            solution += f"\n```python\n{code}\n```\n"
        solution += f" The answer is $\\boxed{{{answer}}}$."
        key = f"{variant}-{seed}-{i}"
        rows.append({
            "id": key, "item_key": key, "source_id": f"doc{i}", "window": [0, 1000], "stage": "college",
            "variant": variant, "prompt_id": "p", "sample_index": 0, "completion": "...", "finish_reason": "stop",
            "model": "synth", "problem": problem, "solution": solution, "final_answer": answer, "code": code,
            "parse_error": None, "text": pretraining_text(problem, solution, variant),
            "usage": {"prompt_tokens": 500, "completion_tokens": 300},
        })
    return rows


def make_generated(folder: Path, rows: list[dict], shards: int) -> None:
    from data.shards import Shard
    from data.storage import StageOutput

    output = StageOutput(folder, stage="synth_generate", config={"bench": True}, num_shards=shards)
    for index in range(shards):
        shard = Shard(index, shards)
        writer = output.open_shard(shard)
        for row in rows[index::shards]:
            writer.write(row)
        output.finish_shard(shard, writer, {})


def floor_seconds(folder: Path, out: Path) -> float:
    """Read every record and write it back: the I/O any filter pays."""
    started = time.perf_counter()
    with open(out, "w", encoding="utf-8") as sink:
        for part in sorted(folder.glob("part-*.jsonl")):
            with open(part, encoding="utf-8") as handle:
                for line in handle:
                    sink.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n")
    return time.perf_counter() - started


def filter_seconds(generated: Path, output: Path, *, code_check: bool, workers: int) -> tuple[float, dict]:
    from data.shards import Shard
    from synth.filter_run import SynthFilterConfig, run_synth_filter

    config = SynthFilterConfig.model_validate({
        "input": str(generated), "output": str(output),
        "code_check": {"enabled": code_check, "sandbox": {"workers": workers}},
    })
    started = time.perf_counter()
    manifest = run_synth_filter(config, Shard(0, 1))
    return time.perf_counter() - started, manifest["counts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="chain-of-thought records (text filters)")
    parser.add_argument("--tool-records", type=int, default=400, help="tool records (sandbox code check)")
    parser.add_argument("--shards", type=int, default=4, help="generate parts")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    os.environ.setdefault("MATHSYNTH_LOG_LEVEL", "WARNING")
    import logging

    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bench-synth-filter-"))
    try:
        text = workdir / "generated-text"
        make_generated(text, synthetic_records(args.records, "cot", 1), args.shards)
        tool = workdir / "generated-tool"
        make_generated(tool, synthetic_records(args.tool_records, "tool", 2), args.shards)

        floor = floor_seconds(text, workdir / "floor.jsonl")
        ours, counts = filter_seconds(text, workdir / "filtered-text", code_check=False, workers=args.workers)
        tool_s, tool_counts = filter_seconds(tool, workdir / "filtered-tool", code_check=True, workers=args.workers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results = {
        "records": args.records, "tool_records": args.tool_records, "cpus": os.cpu_count(),
        "floor_records_per_s": args.records / floor, "ours_records_per_s": args.records / ours,
        "ours_us_per_record": 1e6 * ours / args.records, "floor_us_per_record": 1e6 * floor / args.records,
        "ratio_to_floor": (args.records / ours) / (args.records / floor),
        "cpu_hours_per_million_text": ours / args.records * 1e6 / 3600,
        "tool_records_per_s": args.tool_records / tool_s, "tool_ms_per_record": 1e3 * tool_s / args.tool_records,
        "cpu_hours_per_million_tool": tool_s / args.tool_records * 1e6 / 3600,
        "kept": counts.get("kept"), "rejected_by_reason": counts.get("rejected_by_reason"),
        "tool_kept": tool_counts.get("kept"), "tool_rejected_by_reason": tool_counts.get("rejected_by_reason"),
    }
    print(f"{'':34}{'records/s':>12}{'us/record':>12}")
    print(f"{'floor (read + write json)':34}{results['floor_records_per_s']:12.0f}{results['floor_us_per_record']:12.1f}")
    print(f"{'synth filter, text filters+dedup':34}{results['ours_records_per_s']:12.0f}{results['ours_us_per_record']:12.1f}")
    print(f"{'synth filter, tool + sandbox':34}{results['tool_records_per_s']:12.1f}{1e3 * results['tool_ms_per_record']:12.0f}")
    print(f"ratio ours/floor (text filters): {results['ratio_to_floor']:.2f}")
    print(f"1M chain-of-thought records: {results['cpu_hours_per_million_text']:.2f} h on one process; "
          f"1M tool records: {results['cpu_hours_per_million_tool']:.1f} h with {args.workers} sandbox workers")
    print(f"kept {results['kept']} of {args.records}; rejected {results['rejected_by_reason']}")
    print(f"tool: kept {results['tool_kept']} of {args.tool_records}; rejected {results['tool_rejected_by_reason']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
