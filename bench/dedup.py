"""Cross-shard dedup + decontamination throughput: ours against datasketch.

    /work/bench-venv/bin/python bench/dedup.py [--records 1000000] [--shards 10] [--baseline-records 50000]

Records: synthetic word problems from templates and random pseudo-words (60-80 words each),
with ~5% planted near-duplicates (a copy of an earlier record, one word substituted or inserted
and case/spacing changed: shingle Jaccard >= 0.8) and ~1% planted contamination (a benchmark
question of 30+ words pasted into the text). Record i is a pure function of (seed, i), so every
worker regenerates exactly the same records without holding them all.

* ours: per shard ``ShardSketch.compute`` + ``save`` (.npy) and ``Decontaminator.check_many``,
  then one ``merge_shards`` over the memory-mapped sketches (threshold 0.8, 128 permutations,
  5-word shingles, exact Jaccard check on LSH candidates).
* baseline: datasketch ``MinHash`` (128 perms, ``update_batch`` on the same 5-word shingles) and
  ``MinHashLSH(threshold=0.8)``: query, drop when a candidate's estimated Jaccard >= 0.8, else
  insert; decontamination with a Python set of benchmark 13-gram strings.

Each variant runs in its own subprocess; peak memory is that process's ``ru_maxrss``. The
baseline runs on the first ``--baseline-records`` (a prefix: planted duplicates only point
backwards, so it is self-contained) and ours runs on that prefix too, for a like-for-like ratio
and for agreement (recall of planted near-duplicates and contamination, false positives).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED = 20261122
NEAR_RATE, CONTAMINATION_RATE = 0.05, 0.01
SYLLABLES = ["ba", "ko", "ri", "ten", "mu", "sal", "po", "ve", "dru", "ni", "zor", "la", "qua", "fe", "gi", "tho"]
NAMES = ["Ada", "Bela", "Chen", "Dario", "Esi", "Farid", "Gosia", "Hiro", "Ines", "Jonas", "Kemi", "Lior"]
TEMPLATES = [
    "{name} has {a} {x} and buys {b} more {y} at the market. {filler} How many {x} does {name} have now?",
    "A tank holds {a} liters of {x}. Every hour {b} liters leak out. {filler} After how many hours is it empty?",
    "{filler} The sum of two numbers is {a} and their difference is {b}. What is the larger number?",
    "{name} reads {a} pages of {x} each day. {filler} How many days until {name} finishes {b} pages of {y}?",
    "In a class of {a} students, {b} like {x}. {filler} What fraction of the class likes {y}?",
    "A rectangle has perimeter {a} and one side of length {b}. {filler} Find the area of the {x} {y}.",
]


def _vocabulary(size: int = 30000) -> list[str]:
    rng = random.Random(SEED)
    vocab = set()
    while len(vocab) < size:
        vocab.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(vocab)


VOCAB = _vocabulary()


def _questions() -> list[str]:
    from data.benchmarks.registry import BENCHMARKS, load_benchmark

    return [r.question for name in BENCHMARKS for r in load_benchmark(name) if len(r.question.split()) >= 30]


def _base(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    filler = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(45, 65))) + "."
    return template.format(name=rng.choice(NAMES), a=rng.randint(2, 999), b=rng.randint(2, 999),
                           x=rng.choice(VOCAB), y=rng.choice(VOCAB), filler=filler.capitalize())


def record(i: int, questions: list[str]) -> tuple[str, str, str]:
    """(id, text, kind) with kind "near:<j>" (+ "+dirty" when copying a contaminated one),
    "contaminated" or "base"."""
    rng = random.Random(SEED * 7919 + i)
    roll = rng.random()
    if i > 0 and roll < NEAR_RATE:
        j = rng.randrange(max(0, i - 200000), i)
        _, text, source = record(j, questions)
        if source.startswith("near:"):  # copy the original, so every planted copy is one edit from a kept record
            j = int(source[5:].split("+")[0])
            _, text, source = record(j, questions)
        dirty = source == "contaminated" or source.endswith("+dirty")
        tokens = text.split()
        k = rng.randrange(len(tokens))
        if rng.random() < 0.5:
            tokens[k] = rng.choice(VOCAB)
        else:
            tokens.insert(k, rng.choice(VOCAB))
        text = "  ".join(tokens)
        kind = f"near:{j}" + ("+dirty" if dirty else "")
        return f"r{i}", text.upper() if rng.random() < 0.5 else text, kind
    text = _base(rng)
    if roll > 1 - CONTAMINATION_RATE:
        sentences = text.split(". ")
        at = rng.randrange(len(sentences))
        sentences.insert(at, rng.choice(questions))
        return f"r{i}", ". ".join(sentences), "contaminated"
    return f"r{i}", text, "base"


def records(lo: int, hi: int, questions: list[str]) -> list[tuple[str, str, str]]:
    return [record(i, questions) for i in range(lo, hi)]


# ---------------------------------------------------------------- workers (one subprocess each)


def worker_ours(n: int, shards: int) -> dict:
    from data.decontamination import Decontaminator
    from data.dedup import ShardSketch, merge_shards

    questions = _questions()
    t0 = time.perf_counter()
    decontaminator = Decontaminator.from_benchmarks()
    build_s = time.perf_counter() - t0
    gen_s = sketch_s = check_s = 0.0
    contaminated: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        bounds = [n * k // shards for k in range(shards + 1)]
        for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            t = time.perf_counter()
            rows = records(lo, hi, questions)
            gen_s += time.perf_counter() - t
            ids, texts = [r[0] for r in rows], [r[1] for r in rows]
            t = time.perf_counter()
            sketch = ShardSketch.compute(ids, texts)
            sketch.save(Path(tmp) / f"shard{k}")
            sketch_s += time.perf_counter() - t
            t = time.perf_counter()
            for start in range(0, len(texts), 4096):
                found = decontaminator.check_many(texts[start : start + 4096])
                contaminated += [lo + start + i for i, c in enumerate(found) if c.contaminated]
            check_s += time.perf_counter() - t
            del rows, texts, sketch
        t = time.perf_counter()
        decisions = merge_shards([ShardSketch.load(Path(tmp) / f"shard{k}") for k in range(shards)], threshold=0.8)
        merge_s = time.perf_counter() - t
        dropped = [int(i) for i in (~decisions.keep).nonzero()[0]]
    return {"records": n, "generate_s": gen_s, "decontaminator_build_s": build_s,
            "decontaminator_mb": decontaminator.nbytes / 2**20, "sketch_s": sketch_s, "check_s": check_s,
            "merge_s": merge_s, "work_s": build_s + sketch_s + check_s + merge_s,
            "dropped": dropped, "contaminated": contaminated,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_datasketch(n: int) -> dict:
    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from data.benchmarks.registry import BENCHMARKS, load_benchmark
    from data.dedup import words

    questions = _questions()
    t = time.perf_counter()
    rows = records(0, n, questions)
    gen_s = time.perf_counter() - t
    t0 = time.perf_counter()
    grams: set[str] = set()
    for name in BENCHMARKS:
        for r in load_benchmark(name):
            for part in [r.question, " ".join(r.choices or []), r.table or ""]:
                tokens = words(part, operators=False)
                grams.update(" ".join(tokens[i : i + 13]) for i in range(len(tokens) - 12))
    build_s = time.perf_counter() - t0
    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    kept: dict[str, np.ndarray] = {}
    exact: set[str] = set()
    dropped, contaminated = [], []
    for i, (rid, text, _) in enumerate(rows):
        plain = words(text, operators=False)
        if any(" ".join(plain[k : k + 13]) in grams for k in range(len(plain) - 12)):
            contaminated.append(i)
        tokens = words(text)
        key = " ".join(tokens)
        if key in exact:
            dropped.append(i)
            continue
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(tokens[k : k + 5]).encode() for k in range(max(len(tokens) - 4, 1))])
        if any(np.mean(kept[c] == m.hashvalues) >= 0.8 for c in lsh.query(m)):
            dropped.append(i)
            continue
        exact.add(key)
        lsh.insert(rid, m)
        kept[rid] = m.hashvalues
    work_s = time.perf_counter() - t + build_s
    return {"records": n, "generate_s": gen_s, "decontaminator_build_s": build_s, "work_s": work_s,
            "dropped": dropped, "contaminated": contaminated,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---------------------------------------------------------------- driver


def run_worker(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def truth(n: int) -> tuple[set[int], set[int]]:
    questions = _questions()
    near, dirty = set(), set()
    for i in range(n):
        kind = record(i, questions)[2]
        if kind.startswith("near:"):
            near.add(i)
        if kind == "contaminated" or kind.endswith("+dirty"):
            dirty.add(i)
    return near, dirty


def quality(result: dict, near: set[int], dirty: set[int]) -> str:
    dropped, flagged = set(result["dropped"]), set(result["contaminated"])
    return (f"near-dup recall {len(dropped & near)}/{len(near)}, other drops {len(dropped - near)}; "
            f"contamination recall {len(flagged & dirty)}/{len(dirty)}, other flags {len(flagged - dirty)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--baseline-records", type=int, default=50_000)
    parser.add_argument("--worker", nargs="+")
    args = parser.parse_args()
    if args.worker:
        kind, n = args.worker[0], int(args.worker[1])
        result = worker_ours(n, int(args.worker[2])) if kind == "ours" else worker_datasketch(n)
        print(json.dumps(result))
        return

    small = args.baseline_records
    base = run_worker("datasketch", str(small))
    ours_small = run_worker("ours", str(small), str(max(1, args.shards * small // args.records)))
    near, dirty = truth(small)
    print(f"--- {small:,} records (prefix), like for like")
    for name, result in (("datasketch", base), ("ours", ours_small)):
        print(f"{name:>10}: {result['work_s']:7.1f} s work, {small / result['work_s']:9,.0f} records/s, "
              f"peak RSS {result['peak_rss_mb']:,.0f} MiB; {quality(result, near, dirty)}")
    print(f"      ours: decontaminator build {ours_small['decontaminator_build_s']:.1f} s, sketch+save "
          f"{ours_small['sketch_s']:.1f} s, check {ours_small['check_s']:.1f} s, merge {ours_small['merge_s']:.1f} s; "
          f"datasketch: 13-gram set build {base['decontaminator_build_s']:.1f} s")
    print(f"   speed ratio ours/datasketch: {base['work_s'] / ours_small['work_s']:.1f}x")
    agree_drop = len(set(base["dropped"]) & set(ours_small["dropped"]))
    print(f"   drops: both {agree_drop}, only datasketch {len(set(base['dropped']) - set(ours_small['dropped']))}, "
          f"only ours {len(set(ours_small['dropped']) - set(base['dropped']))}")

    if args.records > small:
        ours = run_worker("ours", str(args.records), str(args.shards))
        near, dirty = truth(args.records)
        per_record = base["work_s"] / small
        print(f"--- {args.records:,} records, {args.shards} shards")
        print(f"      ours: {ours['work_s']:7.1f} s work ({args.records / ours['work_s']:,.0f} records/s): "
              f"decontaminator build {ours['decontaminator_build_s']:.1f} s ({ours['decontaminator_mb']:.1f} MiB), "
              f"sketch+save {ours['sketch_s']:.1f} s, check {ours['check_s']:.1f} s, merge {ours['merge_s']:.1f} s; "
              f"peak RSS {ours['peak_rss_mb']:,.0f} MiB (record generation {ours['generate_s']:.0f} s not counted)")
        print(f"            {quality(ours, near, dirty)}")
        print(f"datasketch: extrapolated linearly from {small:,}: {per_record * args.records:,.0f} s "
              f"(ratio {per_record * args.records / ours['work_s']:.1f}x; its LSH grows with the records, "
              f"so this flatters it)")


if __name__ == "__main__":
    main()
