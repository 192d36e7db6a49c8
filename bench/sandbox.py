"""Executions per second of the code sandbox for short snippets, with every protection on, and
what each protection costs, against a plain subprocess-per-snippet baseline.

    python bench/sandbox.py [--snippets 500] [--workers 2] [--sympy-snippets 40] [--repeat 3]

Variants, each on the same snippets (small arithmetic: sums, fractions, factorials), interleaved
``--repeat`` times; the best run of each is reported (the machine is shared: slow runs measure
the neighbours):

* ``subprocess_seq``: one ``subprocess.run([python, "-c", code])`` per snippet, one at a time;
  no isolation, no limits (the baseline);
* ``subprocess_2threads``: the same from a pool of 2 threads;
* ``sandbox_full``: ``Sandbox(workers=N).run_many`` (startup excluded, reported on its own) with
  every protection this machine allows (printed);
* ``sandbox_without_X``: the same with protection X left off, one at a time (``pid`` takes
  ``proc`` along: a private /proc needs the pid namespace); ``cost_ms`` is what X adds to one
  execution's share of the pool's time, ``1/full - 1/without``;
* ``sandbox_without_all``: every per-execution protection off (the launcher's namespaces, the uid
  and the rlimits remain): what the per-execution isolation costs in all;
* ``sandbox_full_seq``: the full sandbox, one ``run`` at a time (the latency of one execution);
* ``sandbox_full_notebook``: the full sandbox running each snippet as program checks do
  (``sandbox.notebook.notebook_program``: parsed and run as a notebook cell, its last expression
  echoed); ``cost_ms`` is what that adds to one execution.

Then ``--sympy-snippets`` snippets that import sympy (the workers have it preloaded; a fresh
interpreter pays the import every time). Every variant's outputs are checked against the
baseline's. Target: ``sandbox_full`` >= 200 executions/s on 2 workers.
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

from sandbox import Sandbox  # noqa: E402
from sandbox.notebook import notebook_program  # noqa: E402

LEFT_OFF = {"pid": ["pid", "proc"], "proc": ["proc"], "tmp": ["tmp", "proc"], "ipc": ["ipc"], "seccomp": ["seccomp"],
            "memcg": ["memcg"], "all": ["pid", "proc", "tmp", "ipc", "seccomp", "memcg"]}


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


def in_sandbox(box: Sandbox) -> Callable[[list[str]], list[str]]:
    def run(batch: list[str]) -> list[str]:
        results = box.run_many(batch)
        bad = [r for r in results if r.status != "ok"]
        if bad:
            raise SystemExit(f"sandbox run failed: {bad[0]}")
        return [r.stdout for r in results]

    return run


def as_notebook(box: Sandbox) -> Callable[[list[str]], list[str]]:
    run = in_sandbox(box)
    return lambda batch: run([notebook_program([code]) for code in batch])


def one_at_a_time(box: Sandbox) -> Callable[[list[str]], list[str]]:
    return lambda batch: [box.run(code).stdout for code in batch]


def best_rates(label: str, codes: list[str], variants: dict[str, Callable[[list[str]], list[str]]],
               repeat: int) -> dict[str, float]:
    best: dict[str, float] = {}
    expected: list[str] | None = None
    for _ in range(repeat):
        for name, fn in variants.items():
            started = time.perf_counter()
            outputs = fn(codes)
            rate = len(codes) / (time.perf_counter() - started)
            if expected is None:
                expected = outputs
            elif outputs != expected:
                diff = next(i for i, (a, b) in enumerate(zip(outputs, expected)) if a != b)
                raise SystemExit(f"{label}[{name}] output differs at snippet {diff}: {outputs[diff]!r} vs "
                                 f"{expected[diff]!r}")
            best[name] = max(best.get(name, 0.0), rate)
    return best


def report(label: str, codes: list[str], best: dict[str, float]) -> None:
    bases = [base for base in ("subprocess_seq", "subprocess_2threads") if base in best]
    full = best.get("sandbox_full")
    for name, rate in best.items():
        ratios = " ".join(f"ratio_to_{base}={rate / best[base]:.2f}" for base in bases)
        cost = ""
        if full and name.startswith("sandbox_without_"):
            cost = f" cost_ms={1e3 * (1 / full - 1 / rate):.2f} full_vs_this={full / rate:.2f}"
        if full and name == "sandbox_full_notebook":
            cost = f" cost_ms={1e3 * (1 / rate - 1 / full):.2f} full_vs_this={full / rate:.2f}"
        print(f"{label}[{name}] snippets={len(codes)} execs/s={rate:.1f} {ratios}{cost}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snippets", type=int, default=500)
    parser.add_argument("--sympy-snippets", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, euid {os.geteuid()}", flush=True)
    started = time.perf_counter()
    full = Sandbox(workers=args.workers)
    print(f"sandbox: isolation={full.isolation} workers={args.workers} startup_s={time.perf_counter() - started:.2f}",
          flush=True)
    boxes = {"sandbox_full": full}
    for name, left_off in LEFT_OFF.items():
        if name == "all" or name in full.protections:  # (what is not in force here costs nothing)
            boxes[f"sandbox_without_{name}"] = Sandbox(workers=args.workers, without=left_off)
    try:
        for box in boxes.values():
            box.run_many(arithmetic_snippets(2 * args.workers))  # warm
        variants = {"subprocess_seq": subprocess_seq, "subprocess_2threads": subprocess_threads}
        variants.update({name: in_sandbox(box) for name, box in boxes.items()})
        variants["sandbox_full_seq"] = one_at_a_time(full)
        variants["sandbox_full_notebook"] = as_notebook(full)
        codes = arithmetic_snippets(args.snippets)
        report("arithmetic", codes, best_rates("arithmetic", codes, variants, args.repeat))
        if args.sympy_snippets:
            codes = sympy_snippets(args.sympy_snippets)
            sympy_variants = {"subprocess_2threads": subprocess_threads, "sandbox_full": in_sandbox(full),
                              "sandbox_full_notebook": as_notebook(full)}
            report("sympy", codes, best_rates("sympy", codes, sympy_variants, 1))
    finally:
        for box in boxes.values():
            box.close()


if __name__ == "__main__":
    main()
