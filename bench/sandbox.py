"""Executions per second of the code sandbox for short snippets, against a plain
subprocess-per-snippet baseline.

    python bench/sandbox.py [--snippets 500] [--workers 2] [--sympy-snippets 40] [--repeat 3]

Variants, each on the same snippets (small arithmetic: sums, fractions, factorials), interleaved
``--repeat`` times; the best run of each is reported (the machine is shared: slow runs measure
the neighbours):

* ``subprocess_seq``: one ``subprocess.run([python, "-c", code])`` per snippet, one at a time;
  no isolation, no limits;
* ``subprocess_2threads``: the same from a pool of 2 threads;
* ``sandbox``: ``Sandbox(workers=N).run_many`` (startup excluded, reported on its own), with
  whatever isolation ``auto`` finds here (printed);
* ``sandbox_seq``: the same sandbox, one ``run`` at a time (the latency of one execution).

Then the same for ``--sympy-snippets`` snippets that import sympy (the workers have it preloaded;
a fresh interpreter pays the import every time). Every variant's outputs are checked against
the baseline's. Target: ``sandbox`` >= 100 executions/s on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.sandbox import Sandbox  # noqa: E402


def arithmetic_snippets(n: int) -> list[str]:
    shapes = [
        "print(sum(range({k})))",
        "x = {k}\nprint(x * x % 97, x // 7)",
        "from fractions import Fraction\nprint(Fraction({k}, 7) + Fraction(1, 3))",
        "import math\nprint(math.factorial({k} % 30), math.gcd({k}, 360))",
        "total = 0\nfor i in range({k} % 200):\n    total += i * i\nprint(total)",
    ]
    return [shapes[i % len(shapes)].format(k=1000 + 37 * i) for i in range(n)]


def sympy_snippets(n: int) -> list[str]:
    return [f"import sympy\nprint(sympy.factorint({10_000 + 97 * i}), sympy.isprime({10_007 + 2 * i}))"
            for i in range(n)]


def subprocess_one(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout


def subprocess_seq(codes: list[str]) -> list[str]:
    return [subprocess_one(code) for code in codes]


def subprocess_threads(codes: list[str], threads: int = 2) -> list[str]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(subprocess_one, codes))


def timed(fn: Callable[[list[str]], list[str]], codes: list[str]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    outputs = fn(codes)
    return len(codes) / (time.perf_counter() - started), outputs


def bench(label: str, codes: list[str], box: Sandbox, repeat: int, include_seq_baseline: bool) -> None:
    def sandbox_many(batch: list[str]) -> list[str]:
        results = box.run_many(batch)
        bad = [r for r in results if r.status != "ok"]
        if bad:
            raise SystemExit(f"sandbox run failed: {bad[0]}")
        return [r.stdout for r in results]

    def sandbox_seq(batch: list[str]) -> list[str]:
        return [box.run(code).stdout for code in batch]

    variants: dict[str, Callable[[list[str]], list[str]]] = {}
    if include_seq_baseline:
        variants["subprocess_seq"] = subprocess_seq
    variants["subprocess_2threads"] = subprocess_threads
    variants["sandbox"] = sandbox_many
    variants["sandbox_seq"] = sandbox_seq
    best: dict[str, float] = {}
    expected: list[str] | None = None
    for _ in range(repeat):
        for name, fn in variants.items():
            rate, outputs = timed(fn, codes)
            if expected is None:
                expected = outputs
            elif outputs != expected:
                diff = next(i for i, (a, b) in enumerate(zip(outputs, expected)) if a != b)
                raise SystemExit(f"{label}[{name}] output differs at snippet {diff}: {outputs[diff]!r} vs "
                                 f"{expected[diff]!r}")
            best[name] = max(best.get(name, 0.0), rate)
    for name, rate in best.items():
        bases = [base for base in ("subprocess_seq", "subprocess_2threads") if base in best]
        ratios = " ".join(f"ratio_to_{base}={rate / best[base]:.2f}" for base in bases)
        print(f"{label}[{name}] snippets={len(codes)} execs/s={rate:.1f} {ratios}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snippets", type=int, default=500)
    parser.add_argument("--sympy-snippets", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, euid {os.geteuid()}", flush=True)
    started = time.perf_counter()
    with Sandbox(workers=args.workers) as box:
        print(f"sandbox: isolation={box.isolation} workers={args.workers} "
              f"startup_s={time.perf_counter() - started:.2f}", flush=True)
        box.run_many(arithmetic_snippets(2 * args.workers))  # warm
        bench("arithmetic", arithmetic_snippets(args.snippets), box, args.repeat, include_seq_baseline=True)
        if args.sympy_snippets:
            bench("sympy", sympy_snippets(args.sympy_snippets), box, 1, include_seq_baseline=False)


if __name__ == "__main__":
    main()
