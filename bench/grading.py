"""Grading throughput: ``Grader.grade_many`` against math-verify alone.

    python bench/grading.py [--data-dir DIR] [--workers 2] [--repeat 1] [--limit N]

Pairs: the gold answers of MATH test (5,000; gold = last ``\\boxed{}`` of ``solution``) and
GSM8K test (1,319; gold = the text after ``#### ``), each with its reference solution as the
"prediction" (free text). Every pair is correct, so a False verdict is a grader false negative.

* baseline: ``verify(parse(gold), parse(solution))``, math-verify 0.9 with its defaults (its
  own signal-based timeouts), one process: what a user of math-verify alone runs. Also run with
  the gold wrapped as ``$gold$`` (``mv_wrapped``): a bare LaTeX gold such as ``\\frac{1}{2}``
  often parses to nothing, so that is the fairer math-verify number.
* ours: ``Grader(workers).grade_many(pairs)``, including the start of its worker processes.

Prints pairs/s for each, the ratio (target >= 10x), and agreement: how many verdicts differ
from each baseline, with examples. Runs are sequential, never concurrent.

Then the regression table (``tests/grader_cases/cases.jsonl``, gold/pred/expected verdict from
other graders' test suites and ours): how many rows each grader gets as expected, and whether
ours differs exactly on the rows ``tests/grader_cases/disagreements.jsonl`` explains.

On these pairs nearly every verdict comes from our fast path (the solution boxes the gold
verbatim). ``--force-slow`` measures the other end: MATH only, the prediction rewritten as
``The answer is $<gold> + 0$.``, which only math-verify can decide, so ours is math-verify plus
our process pool and its IPC.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.extraction import last_boxed
from eval.grading import Grader

REPO = Path(__file__).resolve().parent.parent
DATA_DIRS = (REPO / "data" / "benchmarks" / "data",)  # the shipped copies
CASES_DIR = REPO / "tests" / "grader_cases"


def force_slow(pairs: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    return [(b, gold, f"The answer is ${gold} + 0$.", kind) for b, gold, _, kind in pairs if b == "math"]


def load_pairs(data_dir: Path) -> list[tuple[str, str, str, str]]:
    """(benchmark, gold, solution, answer_type) for MATH test then GSM8K test."""
    pairs = []
    with open(data_dir / "math" / "test.jsonl", encoding="utf-8") as handle:
        for line in handle:
            solution = json.loads(line)["solution"]
            pairs.append(("math", last_boxed(solution) or "", solution, "expression"))
    with open(data_dir / "gsm8k" / "test.jsonl", encoding="utf-8") as handle:
        for line in handle:
            answer = json.loads(line)["answer"]
            pairs.append(("gsm8k", answer.split("#### ")[-1].strip(), answer, "number"))
    return pairs


def run_math_verify(pairs: list[tuple[str, str, str, str]], wrap: bool) -> tuple[list[bool], float]:
    from math_verify import parse, verify

    start = time.perf_counter()
    verdicts = []
    for _, gold, solution, _ in pairs:
        verdicts.append(bool(verify(parse(f"${gold}$" if wrap else gold), parse(solution))))
    return verdicts, time.perf_counter() - start


def run_ours(pairs: list[tuple[str, str, str, str]], workers: int) -> tuple[list, float, dict]:
    start = time.perf_counter()
    with Grader(workers=workers) as grader:
        verdicts = grader.grade_many([(gold, solution, kind) for _, gold, solution, kind in pairs], timeout_s=5.0)
        stats = dict(grader.stats)
    return verdicts, time.perf_counter() - start, stats


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def case_agreement(workers: int) -> None:
    """Each grader's verdicts on the regression table against the expected ones."""
    from math_verify import parse, verify

    cases = _jsonl(CASES_DIR / "cases.jsonl")
    explained = {row["id"] for row in _jsonl(CASES_DIR / "disagreements.jsonl")}
    with Grader(workers=workers) as grader:
        ours = grader.grade_many([(c["gold"], c["pred"], c["answer_type"]) for c in cases], timeout_s=5.0)
    differ = {c["id"] for c, v in zip(cases, ours) if v.equal is not c["expected_equal"]}
    mv_agree = sum(bool(verify(parse(c["gold"]), parse(c["pred"]))) is c["expected_equal"] for c in cases)
    n = len(cases)
    print(f"grading[cases] ours agree={n - len(differ)}/{n} math_verify agree={mv_agree}/{n} "
          f"(ours differs on exactly the rows disagreements.jsonl explains: {differ == explained})")
    for case_id in sorted(differ ^ explained):
        print(f"    {'UNEXPLAINED' if case_id in differ else 'STALE'} {case_id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="folder holding math/test.jsonl and gsm8k/test.jsonl")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best time is reported")
    parser.add_argument("--limit", type=int, help="first N pairs only (a quick look)")
    parser.add_argument("--examples", type=int, default=5)
    parser.add_argument("--force-slow", action="store_true", help="MATH pairs only math-verify can decide")
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    data_dir = args.data_dir or next((d for d in DATA_DIRS if (d / "math" / "test.jsonl").is_file()), None)
    if data_dir is None:
        sys.exit(f"no benchmark data in {' or '.join(map(str, DATA_DIRS))}; pass --data-dir")
    pairs = load_pairs(data_dir)
    pairs = (force_slow(pairs) if args.force_slow else pairs)[: args.limit]
    n = len(pairs)
    print(f"grading bench: {n} pairs ({sum(p[0] == 'math' for p in pairs)} MATH, "
          f"{sum(p[0] == 'gsm8k' for p in pairs)} GSM8K) from {data_dir}")

    best: dict[str, float] = {}
    results: dict[str, list] = {}
    for _ in range(args.repeat):
        for name in ("math_verify", "mv_wrapped", "ours"):
            if name == "ours":
                verdicts, seconds, stats = run_ours(pairs, args.workers)
                results[name] = [v.equal for v in verdicts]
                ours_verdicts = verdicts
            else:
                results[name], seconds = run_math_verify(pairs, wrap=name == "mv_wrapped")
            best[name] = min(best.get(name, float("inf")), seconds)

    for name in ("math_verify", "mv_wrapped", "ours"):
        per_bench = {b: sum(ok for ok, p in zip(results[name], pairs) if p[0] == b) for b in ("math", "gsm8k")}
        print(f"grading[{name}] pairs/s={n / best[name]:.0f} seconds={best[name]:.2f} "
              f"equal={sum(results[name])}/{n} (math {per_bench['math']}, gsm8k {per_bench['gsm8k']})")
    print(f"grading[ours] stats={stats} workers={args.workers}")
    for name in ("math_verify", "mv_wrapped"):
        ratio = best[name] / best["ours"]
        differ = [i for i in range(n) if results[name][i] != results["ours"][i]]
        lost = [i for i in differ if results[name][i]]  # math-verify says equal, we do not
        print(f"grading[ours vs {name}] ratio={ratio:.1f}x (target >= 10x) differ={len(differ)} "
              f"(we say equal, it does not: {len(differ) - len(lost)}; it says equal, we do not: {len(lost)})")
        for i in lost[: args.examples]:
            print(f"    LOST {pairs[i][0]} gold={pairs[i][1]!r} ours={ours_verdicts[i]}")
        for i in [i for i in differ if not results[name][i]][: args.examples]:
            print(f"    GAINED {pairs[i][0]} gold={pairs[i][1]!r} ours_pred={ours_verdicts[i].pred_extracted!r}")
    case_agreement(args.workers)


if __name__ == "__main__":
    main()
