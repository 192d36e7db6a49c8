"""``mathsynth explore`` on a folder of a million records: first page and filtered queries, latency
and memory, against loading the same part files with pandas and filtering the DataFrame.

A synth filter output folder of ``--records`` generated records (problem/solution text of a few
hundred characters, stage, variant, source, reject reasons; 16 part files plus rejects) is
written once under ``--workdir``. Then, each in its own child process so that peak memory is its
own (``ru_maxrss``), measured in this one run:

* baseline: ``pandas.read_json(lines=True)`` of every file, then each query on the DataFrame;
* ours: the explorer's index built from nothing (once; it is cached beside the folder), then
  opened again as a user's second visit would, and each query through the same code the page
  calls (``Explorer.records``).

Queries: the first page; a filter on two columns (stage + reject reason); a full-text search of a
word in the text; a sort on a number column; a page deep in the results (offset: half the records).

    python bench/explorer_scale.py [--records 1000000] [--workdir /tmp/explorer-bench]
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("grade_school", "middle_school", "high_school", "college")
VARIANTS = ("cot", "tool")
REASONS = ("no_answer", "too_short", "truncated", "contaminated", "code_error")
WORDS = ("apples", "triangle", "integer", "probability", "circle", "train", "speed", "prime", "sum", "ratio",
         "area", "angle", "fraction", "percent", "average", "volume", "equation", "root", "digits", "remainder")
QUERIES = {
    "first page": {},
    "filter stage+reason": {"filters": [{"col": "stage", "op": "eq", "value": "college"},
                                        {"col": "reject_reason", "op": "eq", "value": "truncated"}]},
    "search a word": {"q": "hexagon"},
    "sort by tokens": {"sort": "usage.completion_tokens", "desc": "1"},
    "page in the middle": {"offset": None},  # set to half the records
}


def write_folder(folder: Path, records: int, shards: int = 16) -> None:
    if (folder / "manifest.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    handles = {}
    for k in range(shards):
        handles[("part", k)] = open(folder / f"part-{k:05d}-of-{shards:05d}.jsonl", "w")
        handles[("rejects", k)] = open(folder / f"rejects-{k:05d}-of-{shards:05d}.jsonl", "w")
    for i in range(records):
        words = rng.choices(WORDS, k=40)
        if i % 997 == 0:
            words[5] = "hexagon"  # the search term: about 0.1% of the records
        rejected = rng.random() < 0.3
        record = {"id": f"{i:016x}", "item_key": f"k{i // 4:015x}", "source_id": f"corpus:{i // 8}",
                  "stage": rng.choice(STAGES), "variant": rng.choice(VARIANTS), "sample_index": i % 4,
                  "problem": " ".join(words[:20]) + "?", "solution": " ".join(words[20:]) + " \\boxed{42}",
                  "final_answer": str(rng.randint(0, 999)), "finish_reason": "stop",
                  "usage": {"prompt_tokens": 400, "completion_tokens": rng.randint(50, 900)}}
        if rejected:
            record.update(reject_reason=rng.choice(REASONS), filter_details={})
        handles[("rejects" if rejected else "part", i % shards)].write(json.dumps(record) + "\n")
    for handle in handles.values():
        handle.close()
    manifest = {"stage": "synth_filter", "complete": True, "num_shards": shards, "shards_done": list(range(shards)),
                "counts": {"records": records}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def run_pandas(folder: str) -> dict:
    import pandas as pd

    started = time.perf_counter()
    frames = [pd.read_json(path, lines=True) for path in sorted(Path(folder).glob("*-of-*.jsonl"))]
    frame = pd.concat(frames, ignore_index=True)
    frame["completion_tokens"] = frame["usage"].map(lambda u: u["completion_tokens"])
    times = {"load": time.perf_counter() - started}
    for name, query in QUERIES.items():
        started = time.perf_counter()
        view = frame
        for item in query.get("filters", []):
            view = view[view[item["col"]] == item["value"]]
        if "q" in query:
            text = view["problem"].str.lower() + "\n" + view["solution"].str.lower()
            view = view[text.str.contains(query["q"], regex=False)]
        if "sort" in query:
            view = view.sort_values("completion_tokens", ascending=False)
        offset = int(query.get("offset", 0))
        page = view.iloc[offset : offset + 50].to_dict("records")
        times[name] = time.perf_counter() - started
        assert page
    return times


def run_ours(folder: str) -> dict:
    from pipeline.explorer.index import CACHE_NAME
    from pipeline.explorer.session import Explorer

    for leftover in Path(folder).glob(CACHE_NAME + "*"):
        leftover.unlink()
    started = time.perf_counter()
    Explorer([folder]).close()
    times = {"index (once)": time.perf_counter() - started}
    started = time.perf_counter()
    explorer = Explorer([folder])  # a second visit: the cached index
    times["load"] = time.perf_counter() - started
    name = explorer.datasets[0].name
    for query_name, query in QUERIES.items():
        params = {"dataset": name, **{k: json.dumps(v) if k == "filters" else v for k, v in query.items()}}
        started = time.perf_counter()
        page = explorer.records(params)
        times[query_name] = time.perf_counter() - started
        assert page["rows"], query_name
    return times


def child(kind: str, folder: str, records: int) -> None:
    QUERIES["page in the middle"]["offset"] = str(records // 2)
    times = (run_pandas if kind == "pandas" else run_ours)(folder)
    times["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/tmp/explorer-bench")
    parser.add_argument("--child", choices=["pandas", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.workdir) / f"filtered-{args.records}"
    if args.child:
        child(args.child, str(folder), args.records)
        return
    started = time.perf_counter()
    write_folder(folder, args.records)
    size = sum(p.stat().st_size for p in folder.glob("*.jsonl")) / 2**30
    print(f"{args.records:,} records, {size:.2f} GiB of JSONL ({time.perf_counter() - started:.0f} s to have them)")
    results = {}
    for kind in ("pandas", "ours"):
        done = subprocess.run([sys.executable, __file__, "--child", kind, "--records", str(args.records),
                               "--workdir", args.workdir], capture_output=True, text=True, check=True)
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'':24}{'pandas':>12}{'explorer':>12}{'ratio':>10}")
    for key in ("index (once)", "load", *QUERIES, "peak_rss_gb"):
        base, ours = results["pandas"].get(key), results["ours"].get(key)
        unit = "GB" if key == "peak_rss_gb" else "s"
        ratio = f"{base / ours:9.1f}x" if base and ours else ""
        print(f"{key:24}{(f'{base:.3f} {unit}' if base is not None else '-'):>12}{f'{ours:.3f} {unit}':>12}{ratio:>10}")


if __name__ == "__main__":
    main()
