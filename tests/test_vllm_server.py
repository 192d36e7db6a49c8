"""vLLM's own OpenAI-compatible server, started on 127.0.0.1 with the tiny model, driven by the
`openai` engine directly and through `mathsynth generate`."""
import json

import pytest

pytest.importorskip("vllm")

from conftest import sample_texts, write_jsonl  # noqa: E402

from llm.config import OpenAIEngineConfig  # noqa: E402
from llm.factory import make_engine  # noqa: E402
from llm.types import GenerationRequest, SamplingParams  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_vllm_server):
    return tiny_vllm_server


def engine_config(server, tmp_path, **overrides) -> OpenAIEngineConfig:
    return OpenAIEngineConfig(model="tiny", base_url=server, max_in_flight=8, timeout_s=60,
                              cache_path=str(tmp_path / "cache.sqlite"), **overrides)


def test_chat_and_completions_through_the_real_server(server, tmp_path):
    sampling = SamplingParams(max_tokens=16, n=2, temperature=0.8, seed=3)
    chats = [GenerationRequest(id=f"c{i}", sampling=sampling, messages=({"role": "user", "content": f"Solve {i}+{i}"},)) for i in range(24)]
    with make_engine(engine_config(server, tmp_path)) as engine:
        results = {r.request_id: r for r in engine.generate(chats)}
        assert sorted(results) == sorted(r.id for r in chats)
        assert all(len(r.completions) == 2 and r.usage.completion_tokens > 0 and not r.cached for r in results.values())
        assert engine.calls == 24

    prompts = [GenerationRequest(id=f"p{i}", sampling=sampling, prompt=f"## Question\n{i} apples") for i in range(8)]
    with make_engine(engine_config(server, tmp_path, api="completions")) as engine:
        done = list(engine.generate(prompts))
        assert len(done) == 8 and all(r.completions[0].text and r.usage.completion_tokens == 32 for r in done)

    # The same requests again: every answer from the cache, no call made.
    with make_engine(engine_config(server, tmp_path)) as engine:
        again = {r.request_id: r for r in engine.generate(chats)}
        assert engine.calls == 0 and all(r.cached for r in again.values())
        assert again["c5"].completions[0].text == results["c5"].completions[0].text


def test_generate_with_the_openai_engine_resumes_from_the_cache(server, tmp_path):
    import subprocess
    import sys

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(sample_texts(20))])
    def run(output: str):
        config = {
            "input": {"paths": [str(corpus)]},
            "prompt": {"format": "chat", "system": "You write math problems.", "template": "{{ text }}", "window_chars": 300},
            "engine": {"kind": "openai", "model": "tiny", "base_url": server, "cache_path": str(tmp_path / "cache.sqlite"),
                       "budget": {"max_calls": 100}},
            "sampling": {"max_tokens": 16, "seed": 1},
            "output": str(tmp_path / output),
        }
        (tmp_path / f"{output}.yaml").write_text(json.dumps(config))
        result = subprocess.run([sys.executable, "-m", "pipeline", "generate", "--config", str(tmp_path / f"{output}.yaml")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return json.loads((tmp_path / output / "manifest.json").read_text())

    first = run("first")
    assert first["complete"] and first["counts"]["records"] == 20 and first["usage"]["engine_calls_this_run"] == 20
    second = run("second")  # a new output folder, the same cache: nothing is paid twice
    assert second["counts"]["records"] == 20 and second["usage"]["engine_calls_this_run"] == 0
