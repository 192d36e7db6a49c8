"""The ``openai`` engine against a local faulty endpoint (tests/fault_server.py); only the
last test (marked slow) starts a real vLLM server.

What must hold under faults: every request answered exactly once with the right content, no
request paid twice, calls in flight bounded, budget never exceeded (kill -9 included), reruns
served from the cache, clear one-line errors, and an endpoint that lies about usage or never
stops answering costs no more than its worst case.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fault_server import FAULT_KINDS, FaultPlan, FaultServer, expected_text, prompt_text

from llm.config import BudgetConfig, OpenAIEngineConfig
from llm.errors import BudgetExceeded, EngineError
from llm.factory import make_engine
from llm.openai_engine import OpenAIEngine
from llm.openai_http import HTTPStatusError
from llm.openai_ledger import worst_case_tokens
from llm.openai_protocol import cache_key, request_body
from llm.openai_retry import backoff_delay, classify_error, never_reached_server, retry_after_s
from llm.types import GenerationRequest, SamplingParams

os.environ.setdefault("OMP_NUM_THREADS", "1")

SP = SamplingParams(max_tokens=16, temperature=0.7)


def make_cfg(url: str, tmp_path: Path | None, **kw) -> OpenAIEngineConfig:
    base = dict(
        model="tiny",
        base_url=url,
        max_in_flight=16,
        timeout_s=0.3,  # "slow" faults take 1 s: they always time out
        max_retries=6,
        backoff_initial_s=0.005,
        backoff_max_s=0.05,
        cache_path=str(tmp_path / "cache.sqlite") if tmp_path is not None else None,
    )
    base.update(kw)
    return OpenAIEngineConfig(**base)


def make_requests(n: int, prefix: str = "q", sampling: SamplingParams = SP) -> list[GenerationRequest]:
    out = []
    for i in range(n):
        if i % 2:  # half chat messages, half raw prompts (sent as one user message)
            msgs = ({"role": "system", "content": "be brief"}, {"role": "user", "content": f"{prefix} {i}?"})
            out.append(GenerationRequest(id=f"{prefix}-{i}", sampling=sampling, messages=msgs))
        else:
            out.append(GenerationRequest(id=f"{prefix}-{i}", sampling=sampling, prompt=f"{prefix} {i}?"))
    return out


def expected_for(req: GenerationRequest, index: int = 0) -> str:
    body = request_body("tiny", "chat", req)
    return expected_text(prompt_text(body), index, req.sampling.seed)


def server_key(req: GenerationRequest, cfg: OpenAIEngineConfig) -> str:
    from fault_server import request_key

    return request_key(request_body(cfg.model, cfg.api, req))


@pytest.fixture
def server():
    with FaultServer(FaultPlan(rate=0.34, max_faults=3, slow_s=1.0), latency_s=0.005) as srv:
        yield srv


def collect(gen) -> tuple[list, BaseException | None]:
    """Results yielded before any error, and the error."""
    got = []
    try:
        for r in gen:
            got.append(r)
    except EngineError as err:
        return got, err
    return got, None


# --------------------------------------------------------------------------------------
# (a) faults on a third of attempts, 200 requests, 16 in flight
# --------------------------------------------------------------------------------------


def test_faults_every_request_once_none_paid_twice(server, tmp_path):
    cfg = make_cfg(server.url, tmp_path)
    reqs = make_requests(200)
    with make_engine(cfg) as eng:
        results = list(eng.generate(iter(reqs)))
        stats = eng.stats()
    st = server.stats()

    assert sorted(r.request_id for r in results) == sorted(r.id for r in reqs)  # each exactly once
    by_id = {r.id: r for r in reqs}
    for res in results:
        assert [c.text for c in res.completions] == [expected_for(by_id[res.request_id])]
        assert res.completions[0].finish_reason == "stop" and not res.cached
        assert res.usage.completion_tokens == 5
    # No request paid twice, every one paid once.
    assert st["total_billed"] == 200 and set(st["billed"].values()) == {1}
    # Every fault kind actually happened, and the client saw every attempt the server saw.
    assert set(st["faults"]) == set(FAULT_KINDS), st["faults"]
    # Attempts that never reached the server (a connect timeout on a loaded machine) are made
    # but refunded: the server saw no more than the ledger charged, and that no more than was tried.
    assert st["total_received"] <= stats["budget"]["spent_calls"] <= stats["calls"] and st["total_received"] > 200
    assert stats["retries"] == stats["calls"] - 200
    assert st["max_active"] <= cfg.max_in_flight and stats["peak_in_flight"] <= cfg.max_in_flight
    assert st["max_active"] >= cfg.max_in_flight // 2  # and the bound was actually used
    assert stats["completion_tokens"] == 5 * 200


# --------------------------------------------------------------------------------------
# (b) budgets: never exceeded, rerun with a larger one resumes without repeating
# --------------------------------------------------------------------------------------


def test_call_budget_never_exceeded_and_rerun_resumes(server, tmp_path):
    server.configure(rate=0.6)
    reqs = make_requests(40)
    cfg = make_cfg(server.url, tmp_path, max_in_flight=8, budget=BudgetConfig(max_calls=30))
    with OpenAIEngine(cfg) as eng:
        got1, err = collect(eng.generate(reqs))
    st1 = server.stats()
    assert isinstance(err, BudgetExceeded)
    msg = str(err)
    assert "\n" not in msg and "budget exhausted: 30/30 calls" in msg and "rerun with a larger budget" in msg
    assert st1["total_received"] <= 30
    assert 0 < len(got1) < 40
    by_id = {r.id: r for r in reqs}
    assert all(r.completions[0].text == expected_for(by_id[r.request_id]) for r in got1)
    # Every response the server gave was handed over (in-flight calls finished before the raise).
    assert len(got1) == st1["total_billed"]

    cfg2 = cfg.model_copy(update={"budget": BudgetConfig(max_calls=500)})
    with OpenAIEngine(cfg2) as eng:
        got2 = list(eng.generate(reqs))
        assert eng.cache_hits == len(got1)
        assert eng.stats()["budget"]["spent_calls"] <= 500
    st2 = server.stats()
    assert sorted(r.request_id for r in got2) == sorted(by_id)
    assert set(st2["billed"].values()) == {1}  # nothing answered in run 1 was asked again
    for r in got1:
        key = server_key(by_id[r.request_id], cfg)
        assert st2["received"][key] == st1["received"][key]


def test_token_budget_never_exceeded(server, tmp_path):
    reqs = make_requests(60)
    budget = 1500
    cfg = make_cfg(server.url, tmp_path, max_in_flight=8, budget=BudgetConfig(max_tokens=budget))
    with OpenAIEngine(cfg) as eng:
        got, err = collect(eng.generate(reqs))
        spent_calls, spent_tokens = eng.store.spent()
    st = server.stats()
    assert isinstance(err, BudgetExceeded) and "tokens" in str(err)
    assert st["billed_tokens"] <= spent_tokens <= budget
    assert len(got) == st["total_billed"] > 0


def test_without_cache_the_budget_holds_per_process(server):
    # (the in-memory ledger is per process and model: a model of this test's own)
    cfg = make_cfg(server.url, None, model="memory-ledger", budget=BudgetConfig(max_calls=40))
    server.configure(rate=0.0)
    with OpenAIEngine(cfg) as eng:
        assert len(list(eng.generate(make_requests(30)))) == 30
    with OpenAIEngine(cfg) as eng:  # a second engine in the same process: 10 calls left
        got, err = collect(eng.generate(make_requests(30, prefix="more")))
        assert isinstance(err, BudgetExceeded) and "40/40 calls" in str(err) and "no cache_path" in str(err)
    assert len(got) == 10 and server.stats()["total_received"] == 40
    assert eng.stats()["budget"]["spent_calls"] == 40  # stats still readable after close


def test_request_larger_than_token_budget_is_not_sent(server, tmp_path):
    cfg = make_cfg(server.url, tmp_path, budget=BudgetConfig(max_tokens=50))  # worst case ~90
    with OpenAIEngine(cfg) as eng:
        got, err = collect(eng.generate(make_requests(3)))
    assert isinstance(err, BudgetExceeded) and got == []
    assert server.stats()["total_received"] == 0


# --------------------------------------------------------------------------------------
# (c) a rerun after a complete run is free
# --------------------------------------------------------------------------------------


def test_rerun_after_complete_run_makes_no_calls(server, tmp_path):
    cfg = make_cfg(server.url, tmp_path)
    reqs = make_requests(50)
    with OpenAIEngine(cfg) as eng:
        first = {r.request_id: r for r in eng.generate(reqs)}
    before = server.stats()["total_received"]
    with OpenAIEngine(cfg) as eng:
        second = list(eng.generate(reqs))
        assert eng.calls == 0 and eng.cache_hits == 50 and eng.stats()["calls"] == 0
    assert server.stats()["total_received"] == before
    assert all(r.cached for r in second)
    for r in second:
        assert r.completions == first[r.request_id].completions
        assert r.usage == first[r.request_id].usage


def test_cache_key_covers_all_sampling_params():
    base = GenerationRequest(id="a", sampling=SP, prompt="x")
    k = cache_key("m", "chat", base)
    variants = [
        GenerationRequest(id="b", sampling=SP.model_copy(update={"n": 2}), prompt="x"),
        GenerationRequest(id="b", sampling=SP.with_seed(1), prompt="x"),
        GenerationRequest(id="b", sampling=SP.model_copy(update={"stop": ("\n",)}), prompt="x"),
        GenerationRequest(id="b", sampling=SP.model_copy(update={"top_p": 0.9}), prompt="x"),
        GenerationRequest(id="b", sampling=SP, prompt="y"),
    ]
    assert len({k, *(cache_key("m", "chat", v) for v in variants)}) == 6
    assert cache_key("m2", "chat", base) != k and cache_key("m", "completions", base) != k
    assert cache_key("m", "chat", GenerationRequest(id="zzz", sampling=SP, prompt="x")) == k  # id is not content
    # A prompt is sent as one user message in chat mode: the same body, the same key.
    same = GenerationRequest(id="c", sampling=SP, messages=({"role": "user", "content": "x"},))
    assert cache_key("m", "chat", same) == k


# --------------------------------------------------------------------------------------
# (d) kill -9 mid-run: the ledger still bounds what the server received
# --------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_openai_engine import make_cfg, make_requests
    from llm.config import BudgetConfig
    from llm.errors import BudgetExceeded
    from llm.openai_engine import OpenAIEngine
    from pathlib import Path

    cfg = make_cfg({url!r}, Path({tmp!r}), max_in_flight=8, budget=BudgetConfig(max_calls={k}))
    with OpenAIEngine(cfg) as eng:
        try:
            for r in eng.generate(make_requests(60)):
                print(r.request_id, flush=True)
        except BudgetExceeded as err:
            print("BUDGET", err, flush=True)
            sys.exit(3)
    """
)


def test_kill9_never_exceeds_budget_nor_repays(tmp_path):
    budget = 90  # ~60 requests need ~85 attempts at this fault rate: tight on purpose
    with FaultServer(FaultPlan(rate=0.34, max_faults=3, slow_s=1.0), latency_s=0.05) as srv:
        script = tmp_path / "child.py"
        script.write_text(
            _CHILD.format(tests=str(Path(__file__).parent), url=srv.url, tmp=str(tmp_path), k=budget)
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        printed: set[str] = set()
        for _ in range(2):  # two kills mid-run
            proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
            seen = 0
            assert proc.stdout is not None
            for line in proc.stdout:
                rid = line.split()[0]
                seen += rid not in printed  # cache hits from the last run come first: skip them
                printed.add(rid)
                if seen == 12:
                    proc.send_signal(signal.SIGKILL)  # calls are in flight (50 ms each, 8 at once)
                    break
            proc.wait(30)
            assert proc.returncode == -signal.SIGKILL
        after_kills = srv.stats()
        final = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
        assert final.returncode in (0, 3), final.stderr[-2000:]
        st = srv.stats()

    from llm.request_cache import RequestStore

    spent_calls, _ = RequestStore(str(tmp_path / "cache.sqlite"), scope="tiny").spent()
    assert st["total_received"] <= spent_calls <= budget  # every call that went out was charged
    # Nothing the killed runs handed over was asked again (it was cached before it was
    # handed over); a paid repeat can only be a call in flight at a kill (answered by the
    # server, never received by the client): at most max_in_flight per kill.
    reqs = {r.id: r for r in make_requests(60)}
    cfg = make_cfg(srv.url, None)
    for rid in printed:
        key = server_key(reqs[rid], cfg)
        assert st["received"][key] == after_kills["received"][key], rid
    repaid = sum(v - 1 for v in st["billed"].values())
    assert repaid <= 2 * 8
    if final.returncode == 0:
        assert set(final.stdout.split()) | printed >= set(reqs)


def test_two_processes_share_one_budget(tmp_path):
    budget = 50
    with FaultServer(FaultPlan(rate=0.34, max_faults=3, slow_s=1.0), latency_s=0.02) as srv:
        script = tmp_path / "child.py"
        script.write_text(
            _CHILD.format(tests=str(Path(__file__).parent), url=srv.url, tmp=str(tmp_path), k=budget)
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        st = srv.stats()
    assert [p.returncode for p in procs] == [3, 3], outs  # 2 x 60 requests cannot fit in 50 calls
    assert st["total_received"] <= budget


_OPEN_AND_RESERVE = """
import sys, time
from llm.request_cache import RequestStore
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
store = RequestStore(sys.argv[1], scope="m")
assert store.reserve([1] * 5, 1000, None) == [True] * 5
"""


def test_store_created_by_many_processes_at_once(tmp_path):
    """A new cache file switched to WAL by several processes starting together: no
    "database is locked", and no reservation lost."""
    from llm.request_cache import RequestStore

    for trial in range(2):
        path = str(tmp_path / f"c{trial}.sqlite")
        at = str(time.time() + 1.5)
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_RESERVE, path, at]) for _ in range(6)]
        assert [p.wait(30) for p in procs] == [0] * 6
        assert RequestStore(path, scope="m").spent() == (30, 30)


# --------------------------------------------------------------------------------------
# (e), (f) clear one-line errors
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_one_line_error(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    cfg = make_cfg(url, tmp_path, max_retries=2)
    from llm.request_cache import RequestStore

    seed = RequestStore(cfg.cache_path, scope=cfg.model)  # an earlier run's spending
    assert seed.reserve([100, 20], None, None) == [True, True]
    seed.close()
    t0 = time.monotonic()
    with OpenAIEngine(cfg) as eng:
        with pytest.raises(EngineError) as info:
            list(eng.generate(make_requests(5)))
        msg = str(info.value)
        assert "\n" not in msg and url in msg and "gave up after 3 attempts" in msg and "connection error" in msg
        assert eng.calls >= 3  # attempts were made ...
        budget = eng.stats()["budget"]
        # ... and none reached a server: every call and its tokens refunded, the ledger unchanged
        assert (budget["spent_calls"], budget["spent_tokens"]) == (2, 120)
    assert time.monotonic() - t0 < 10


# A failed attempt keeps its call charged; its worst-case tokens come back only when the server
# provably did no work: an error status. Dropped connections, cut or broken bodies and timeouts
# keep them (the provider may have generated, and billed, the answer).
_TOKENS_KEPT = {"drop": True, "truncated": True, "slow": True, "badjson": True, "500": False, "429": False}


def test_failed_attempt_charges_by_what_the_server_may_have_done(tmp_path):
    n = 6
    with FaultServer(FaultPlan(rate=1.0, max_faults=1, slow_s=1.0, retry_after="0.01")) as srv:
        for kind, kept in _TOKENS_KEPT.items():
            srv.configure(kinds=[kind])
            srv.reset()
            reqs = make_requests(n, prefix=f"charge-{kind}")
            cfg = make_cfg(srv.url, tmp_path, cache_path=str(tmp_path / f"{kind}.sqlite"))
            with OpenAIEngine(cfg) as eng:
                assert len(list(eng.generate(reqs))) == n
                calls, tokens = eng.store.spent()
            st = srv.stats()
            assert st["faults"] == {kind: n} and st["total_received"] == 2 * n
            assert calls == 2 * n, kind  # every attempt reached the server: every call stays charged
            worst = sum(worst_case_tokens(r) for r in reqs)
            assert tokens == st["billed_tokens"] + (worst if kept else 0), kind


def test_headers_and_query_reach_the_server(tmp_path, monkeypatch):
    """Authorization from api_key_env; extra_headers (a ${VAR} read from the environment) and
    default_query, as for Azure OpenAI's api-key header and api-version parameter."""
    monkeypatch.setenv("MATHSYNTH_TEST_KEY", "sk-test-123")
    monkeypatch.setenv("MATHSYNTH_AZURE_KEY", "azure-secret")
    with FaultServer() as srv:
        cfg = make_cfg(
            srv.url,
            tmp_path,
            api_key_env="MATHSYNTH_TEST_KEY",
            extra_headers={"api-key": "${MATHSYNTH_AZURE_KEY}", "X-Trace": "t1"},
            default_query={"api-version": "2024-10-21"},
        )
        with OpenAIEngine(cfg) as eng:
            assert len(list(eng.generate(make_requests(3)))) == 3
        seen = srv.stats()["last_request"]
        assert seen["headers"]["authorization"] == "Bearer sk-test-123"
        assert seen["headers"]["api-key"] == "azure-secret" and seen["headers"]["x-trace"] == "t1"
        assert seen["query"] == {"api-version": "2024-10-21"}
        assert seen["path"] == "/v1/chat/completions"

        monkeypatch.delenv("MATHSYNTH_TEST_KEY")
        with OpenAIEngine(make_cfg(srv.url, None, api_key_env="MATHSYNTH_TEST_KEY", api="completions")) as eng:
            assert len(list(eng.generate(make_requests(2, prefix="nokey")[::2]))) == 1
        seen = srv.stats()["last_request"]
        assert seen["path"] == "/v1/completions" and seen["query"] == {}
        assert "authorization" not in seen["headers"]  # no key: no Authorization header

    unset = make_cfg(srv.url, None, extra_headers={"api-key": "${MATHSYNTH_NOT_SET_ANYWHERE}"})
    with OpenAIEngine(unset) as eng, pytest.raises(EngineError, match=r"variable MATHSYNTH_NOT_SET_ANYWHERE is not set"):
        list(eng.generate(make_requests(1)))


def test_aiohttp_errors_are_classified():
    """Never reached the server (refund call and tokens) vs maybe billed (keep both), without
    needing a DNS server or a black-holed address."""
    import aiohttp

    key = type("Key", (), {"host": "api.example.invalid", "port": 443, "ssl": True})()
    dns = aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known"))
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))
    connect_timeout = aiohttp.ConnectionTimeoutError("Connection timeout to host")
    for exc in (dns, refused, connect_timeout):
        assert classify_error(exc)[0] and never_reached_server(exc), exc
    for exc in (
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        asyncio.TimeoutError(),
        aiohttp.SocketTimeoutError("read timeout"),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        ValueError("Expecting value: line 1 column 1 (char 0)"),  # a malformed JSON body
    ):
        assert classify_error(exc)[0] and not never_reached_server(exc), exc
    assert "timed out" in classify_error(asyncio.TimeoutError())[1]
    status = HTTPStatusError(429, "slow down", {"retry-after": "2"})
    assert classify_error(status) == (True, "HTTP 429: slow down", 2.0) and never_reached_server(status)
    assert classify_error(HTTPStatusError(401, "bad key", {}))[0] is False


def test_non_retryable_400_names_the_request(server, tmp_path):
    reqs = make_requests(20)
    bad = GenerationRequest(id="the-bad-one", sampling=SP, prompt="please __400__")
    reqs.insert(7, bad)
    cfg = make_cfg(server.url, tmp_path)
    with OpenAIEngine(cfg) as eng:
        got, err = collect(eng.generate(reqs))
    assert isinstance(err, EngineError) and not isinstance(err, BudgetExceeded)
    msg = str(err)
    assert "\n" not in msg and "the-bad-one" in msg and "HTTP 400" in msg and "not retried" in msg
    assert server.stats()["received"][server_key(bad, cfg)] == 1
    assert "the-bad-one" not in {r.request_id for r in got}


def test_messages_in_completions_mode_is_a_clear_error(server, tmp_path):
    cfg = make_cfg(server.url, tmp_path, api="completions")
    reqs = [GenerationRequest(id="m1", sampling=SP, messages=({"role": "user", "content": "hi"},))]
    with OpenAIEngine(cfg) as eng:
        with pytest.raises(EngineError, match=r"request m1: chat messages given but engine.api is 'completions'"):
            list(eng.generate(reqs))
    assert server.stats()["total_received"] == 0


def test_removed_sdk_transport_is_a_one_line_config_error():
    from data.config_files import validate_model
    from data.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate_model(OpenAIEngineConfig, {"model": "m", "transport": "sdk"}, "run.yaml")
    assert str(info.value) == "run.yaml: transport: Input should be 'aiohttp' (got 'sdk')"


# --------------------------------------------------------------------------------------
# (g) an endpoint that lies about usage, or never stops answering
# --------------------------------------------------------------------------------------

_USAGE_LIES = {
    "negative": {"prompt_tokens": -1_000_000, "completion_tokens": 5},
    "absurd": {"prompt_tokens": 10**15, "completion_tokens": 5},
    "string": {"prompt_tokens": "12", "completion_tokens": 5},
    "bad completion count": {"prompt_tokens": 3, "completion_tokens": "lots"},
    "negative completion count": {"prompt_tokens": 3, "completion_tokens": -50},
}


@pytest.mark.parametrize("lie", list(_USAGE_LIES))
def test_lying_usage_is_charged_at_the_worst_case(tmp_path, lie):
    """Usage that cannot be true neither lowers the ledger (which would let the run spend past
    the budget) nor blows it up: the answer is kept and charged as if usage were unknown."""
    reqs = make_requests(30)
    budget = 600  # ~6 requests at their worst case
    with FaultServer(FaultPlan(usage=_USAGE_LIES[lie])) as srv:
        cfg = make_cfg(srv.url, tmp_path, max_in_flight=4, budget=BudgetConfig(max_tokens=budget))
        with OpenAIEngine(cfg) as eng:
            got, err = collect(eng.generate(reqs))
            spent_calls, spent_tokens = eng.store.spent()
        st = srv.stats()
    assert isinstance(err, BudgetExceeded)
    assert set(st["billed"].values()) == {1} and len(got) == st["total_billed"] == spent_calls
    by_id = {r.id: r for r in reqs}
    assert spent_tokens == sum(worst_case_tokens(by_id[r.request_id]) for r in got) <= budget
    assert all(r.completions[0].text == expected_for(by_id[r.request_id]) for r in got)


def test_huge_response_is_an_error_charged_at_the_worst_case(tmp_path):
    """A 200 body past max_response_bytes (default 16 MiB) is not buffered whole, not retried,
    and keeps its worst case charged (the provider generated it)."""
    plan = FaultPlan(rate=1.0, max_faults=10, kinds=("huge",), huge_bytes=20 * 2**20)
    req = make_requests(1)
    with FaultServer(plan) as srv:
        cfg = make_cfg(srv.url, tmp_path, timeout_s=20)
        with OpenAIEngine(cfg) as eng:
            got, err = collect(eng.generate(req))
            spent = eng.store.spent()
        st = srv.stats()
    assert got == [] and isinstance(err, EngineError) and not isinstance(err, BudgetExceeded)
    msg = str(err)
    assert "\n" not in msg and "max_response_bytes" in msg and "not retried" in msg and req[0].id in msg
    assert st["total_received"] == 1
    assert spent == (1, worst_case_tokens(req[0]))


def test_endless_response_body_times_out(tmp_path):
    """timeout_s covers reading the whole body, not just the wait for its first byte: a body
    that trickles forever ends as a timeout (retried, worst case kept), and the run gives up."""
    plan = FaultPlan(rate=1.0, max_faults=10, kinds=("drip",))
    req = make_requests(1)
    with FaultServer(plan) as srv:
        cfg = make_cfg(srv.url, tmp_path, timeout_s=0.3, max_retries=2)
        t0 = time.monotonic()
        with OpenAIEngine(cfg) as eng:
            got, err = collect(eng.generate(req))
            spent = eng.store.spent()
        assert time.monotonic() - t0 < 5
        st = srv.stats()
    assert got == [] and isinstance(err, EngineError)
    assert "gave up after 3 attempts" in str(err) and "timed out" in str(err)
    assert st["total_received"] == 3 and spent == (3, 3 * worst_case_tokens(req[0]))


# --------------------------------------------------------------------------------------
# Other paths: completions api with n > 1, async use, early stop, helpers
# --------------------------------------------------------------------------------------


def test_completions_api_n_samples(server, tmp_path):
    sp = SamplingParams(max_tokens=8, n=3, seed=11, stop=("\n",))
    reqs = [GenerationRequest(id=f"p{i}", sampling=sp, prompt=f"prompt {i}") for i in range(30)]
    cfg = make_cfg(server.url, tmp_path, api="completions")
    with OpenAIEngine(cfg) as eng:
        results = {r.request_id: r for r in eng.generate(reqs)}
    assert len(results) == 30
    for req in reqs:
        texts = [c.text for c in results[req.id].completions]
        assert texts == [expected_text(req.prompt, i, 11) for i in range(3)]
        assert results[req.id].completions[0].num_tokens is None  # per-choice count unknown when n > 1
    assert set(server.stats()["billed"].values()) == {1}


def test_agenerate(server, tmp_path):
    cfg = make_cfg(server.url, tmp_path)
    reqs = make_requests(40)

    async def main() -> list:
        eng = OpenAIEngine(cfg)
        try:
            return [r async for r in eng.agenerate(reqs)]
        finally:
            eng.close()

    results = asyncio.run(main())
    assert sorted(r.request_id for r in results) == sorted(r.id for r in reqs)
    assert set(server.stats()["billed"].values()) == {1}


def test_early_stop_then_reuse(server, tmp_path):
    cfg = make_cfg(server.url, tmp_path, max_in_flight=4)
    reqs = make_requests(100)
    with OpenAIEngine(cfg) as eng:
        gen = eng.generate(iter(reqs))
        first = [next(gen) for _ in range(5)]
        gen.close()  # cancels what is in flight, and returns promptly
        # Requests are pulled lazily: far fewer than 100 were sent.
        assert server.stats()["total_received"] < 60
        rest = list(eng.generate(reqs))  # the engine is usable again; finished ones are cached
    assert len(first) == 5 and len(rest) == 100


def test_retry_after_is_honoured(tmp_path):
    plan = FaultPlan(rate=1.0, max_faults=1, kinds=("429",), retry_after="0.4")
    with FaultServer(plan) as srv:
        cfg = make_cfg(srv.url, tmp_path, backoff_initial_s=0.001, backoff_max_s=5.0)
        t0 = time.monotonic()
        with OpenAIEngine(cfg) as eng:
            (res,) = list(eng.generate(make_requests(1)))
            assert eng.retries == 1
        assert time.monotonic() - t0 >= 0.4
        assert srv.stats()["total_received"] == 2


def test_backoff_and_retry_after():
    rng = random.Random(0)
    draws = [backoff_delay(3, 0.5, 2.0, None, rng) for _ in range(200)]
    assert 0 <= min(draws) and max(draws) <= 2.0 and max(draws) > 1.5  # full jitter, capped
    assert all(backoff_delay(0, 0.5, 60, None, rng) <= 0.5 for _ in range(50))
    assert backoff_delay(5, 0.5, 60, retry_after=7.0) == 7.0  # the server knows best
    assert backoff_delay(5, 0.5, 60, retry_after=600.0) == 60  # within reason
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_worst_case_tokens_bounds_prompt_bytes():
    req = GenerationRequest(
        id="w", sampling=SamplingParams(max_tokens=100, n=2), messages=({"role": "user", "content": "é" * 10},)
    )
    assert worst_case_tokens(req) >= 20 + 200


def test_identical_requests_in_flight_are_paid_once(server, tmp_path):
    server.configure(rate=0.0)
    twins = [GenerationRequest(id=f"twin-{i}", sampling=SP, prompt="same question") for i in range(10)]
    others = make_requests(20)
    cfg = make_cfg(server.url, tmp_path)
    with OpenAIEngine(cfg) as eng:
        results = {r.request_id: r for r in eng.generate(others[:10] + twins + others[10:])}
    assert sorted(results) == sorted(r.id for r in twins + others)
    texts = {results[t.id].completions[0].text for t in twins}
    assert texts == {expected_for(twins[0])}
    assert sum(not results[t.id].cached for t in twins) == 1  # one paid, nine shared
    assert server.stats()["billed"][server_key(twins[0], cfg)] == 1


# --------------------------------------------------------------------------------------
# The real thing: vLLM's OpenAI-compatible server (slow: ~30 s to start)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_against_vllm_server(tiny_vllm_server, tmp_path):
    url = tiny_vllm_server
    sp = SamplingParams(max_tokens=12, temperature=0.8, n=2, seed=3, stop=("\n\n",))
    chat = [
        GenerationRequest(id=f"c{i}", sampling=sp, messages=({"role": "user", "content": f"What is {i} + {i}?"},))
        for i in range(8)
    ]
    prompts = [GenerationRequest(id=f"p{i}", sampling=sp, prompt=f"Problem {i}:") for i in range(8)]
    for api, reqs in (("chat", chat), ("completions", prompts)):
        cfg = make_cfg(url, tmp_path, api=api, timeout_s=60, max_in_flight=8, budget=BudgetConfig(max_calls=100))
        with OpenAIEngine(cfg) as eng:
            results = {r.request_id: r for r in eng.generate(reqs)}
            assert eng.calls == len(reqs) and eng.retries == 0
        assert sorted(results) == sorted(r.id for r in reqs)
        for res in results.values():
            assert len(res.completions) == 2 and all(c.finish_reason in ("stop", "length") for c in res.completions)
            assert 0 < res.usage.prompt_tokens <= worst_case_tokens(reqs[0]) and 0 < res.usage.completion_tokens <= 24
        with OpenAIEngine(cfg) as eng:  # the rerun is free
            again = {r.request_id: r for r in eng.generate(reqs)}
            assert eng.calls == 0
        assert all(again[k].completions == results[k].completions for k in results)
