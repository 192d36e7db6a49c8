"""Throughput of the ``openai`` engine against a local endpoint with fixed latency.

    python bench/openai_engine.py [--requests 3000] [--in-flight 64] [--latency 0.05] [--repeat 3] [--profile]

The endpoint (tests/fault_server.py, no faults) runs in a separate process so it does not
share the client's GIL. With L seconds per call and C calls in flight no client can beat
C / L calls/s (the "bound"). Variants, each on fresh requests, interleaved ``--repeat``
times (the best run of each is reported: this machine is shared, so slow runs measure the
neighbours):

* ``raw_client``: a bare ``AsyncOpenAI`` (``chat.completions.create``) under an
  ``asyncio.Semaphore(C)``, no cache, budget or retries: what the SDK does out of the box;
* ``aiohttp_floor``: a bare aiohttp client, no SDK at all: what this machine allows;
* ``engine_nocache``: OpenAIEngine, ledger in memory;
* ``engine_sqlite``: the same with the sqlite cache + ledger (a fresh file);
* ``engine_sqlite_rerun``: the requests of engine_sqlite again: all cache hits, no calls.

(The engine's openai-SDK transport, measured here until it was dropped, is in bench/RESULTS.md.)

Each line reads ``openai_engine[variant] calls/s=... ratio_to_bound=... ratio_to_raw_client=...``
plus the CPU milliseconds per call spent by this process and by the server process.
``--profile`` adds a cProfile of one engine run.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import openai

from llm.config import BudgetConfig, OpenAIEngineConfig
from llm.openai_engine import OpenAIEngine
from llm.types import GenerationRequest, SamplingParams

ROOT = Path(__file__).resolve().parents[1]


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, str(ROOT / "tests" / "fault_server.py"), "--latency", str(latency)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"fault server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def make_requests(n: int, tag: str) -> list[GenerationRequest]:
    sp = SamplingParams(max_tokens=32, temperature=0.0)
    return [
        GenerationRequest(id=f"{tag}-{i}", sampling=sp, messages=({"role": "user", "content": f"{tag} problem {i}: 2+2?"},))
        for i in range(n)
    ]


async def raw_client(url: str, reqs: list[GenerationRequest], in_flight: int) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=30)
    sem = asyncio.Semaphore(in_flight)

    async def one(r: GenerationRequest) -> str:
        async with sem:
            resp = await client.chat.completions.create(
                model="bench",
                messages=list(r.messages or ()),  # type: ignore[arg-type]  # plain dicts, as users pass them
                max_tokens=r.sampling.max_tokens,
                temperature=0.0,
            )
            return resp.choices[0].message.content or ""

    out = await asyncio.gather(*(one(r) for r in reqs))
    await client.close()
    assert len(out) == len(reqs)


async def aiohttp_floor(url: str, reqs: list[GenerationRequest], in_flight: int) -> None:
    sem = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(r: GenerationRequest) -> None:
            async with sem:
                body = {"model": "bench", "messages": list(r.messages or ()), "max_tokens": 32, "temperature": 0.0}
                async with session.post(url + "/chat/completions", json=body) as resp:
                    (await resp.json())["choices"][0]

        await asyncio.gather(*(one(r) for r in reqs))


def engine_cfg(url: str, in_flight: int, cache: str | None) -> OpenAIEngineConfig:
    return OpenAIEngineConfig(
        model="bench", base_url=url, max_in_flight=in_flight, timeout_s=30, max_retries=3,
        cache_path=cache, budget=BudgetConfig(max_calls=10_000_000),
    )


def run_engine(url: str, reqs: list[GenerationRequest], in_flight: int, cache: str | None) -> OpenAIEngine:
    eng = OpenAIEngine(engine_cfg(url, in_flight, cache))
    assert sum(1 for _ in eng.generate(iter(reqs))) == len(reqs)
    eng.close()
    return eng


def profile_engine(url: str, reqs: list[GenerationRequest], in_flight: int, cache: str) -> str:
    """cProfile only sees the thread it runs in, so profile agenerate (the same run on the
    caller's loop, minus the thread hop of generate)."""
    eng = OpenAIEngine(engine_cfg(url, in_flight, cache))

    async def go() -> int:
        return sum([1 async for _ in eng.agenerate(reqs)])

    prof = cProfile.Profile()
    prof.enable()
    n = asyncio.run(go())
    prof.disable()
    assert n == len(reqs)
    eng.close()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    return out.getvalue()


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def measure(fn: Callable[[], object], n: int, server_pid: int) -> tuple[float, float, float]:
    """(calls/s, client CPU ms per call, server CPU ms per call)."""
    c0, s0, t0 = time.process_time(), server_cpu(server_pid), time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return n / dt, (time.process_time() - c0) * 1e3 / n, (server_cpu(server_pid) - s0) * 1e3 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bound = args.in_flight / args.latency
    n, c = args.requests, args.in_flight
    server, url = start_server(args.latency)
    tmp = tempfile.TemporaryDirectory()
    try:
        print(f"endpoint {url}: latency {args.latency * 1000:.0f} ms, {c} in flight, bound {bound:.0f} calls/s, "
              f"{n} requests per variant, best of {args.repeat}, {os.cpu_count()} cores", flush=True)
        asyncio.run(raw_client(url, make_requests(c, "warm"), c))  # imports, first connections
        best: dict[str, tuple[float, float, float]] = {}
        for rep in range(args.repeat):
            cache = os.path.join(tmp.name, f"cache{rep}.sqlite")
            sq = make_requests(n, f"sqlite{rep}")
            variants: dict[str, Callable[[], object]] = {
                "raw_client": lambda: asyncio.run(raw_client(url, make_requests(n, f"raw{rep}"), c)),
                "aiohttp_floor": lambda: asyncio.run(aiohttp_floor(url, make_requests(n, f"aio{rep}"), c)),
                "engine_nocache": lambda: run_engine(url, make_requests(n, f"nocache{rep}"), c, None),
                "engine_sqlite": lambda: run_engine(url, sq, c, cache),
                "engine_sqlite_rerun": lambda: run_engine(url, sq, c, cache),
            }
            for name, fn in variants.items():
                m = measure(fn, n, server.pid)
                print(f"  run {rep} {name}: {m[0]:.0f}/s", flush=True)
                if name not in best or m[0] > best[name][0]:
                    best[name] = m
        raw = best["raw_client"][0]
        for name, (rate, ccpu, scpu) in best.items():
            unit = "results/s (all cache hits, 0 calls)" if name.endswith("rerun") else "calls/s"
            print(f"openai_engine[{name}] {unit.split()[0]}={rate:.0f} ratio_to_bound={rate / bound:.2f} "
                  f"ratio_to_raw_client={rate / raw:.2f} client_cpu_ms/call={ccpu:.2f} server_cpu_ms/call={scpu:.2f}"
                  + (" " + unit.split(" ", 1)[1] if " " in unit else ""), flush=True)
        if args.profile:
            print(profile_engine(url, make_requests(n, "profile"), c, os.path.join(tmp.name, "p.sqlite")))
    finally:
        server.kill()
        server.wait()
        tmp.cleanup()


if __name__ == "__main__":
    main()
