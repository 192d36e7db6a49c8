"""The transformers engine: batched ``generate`` on CPU or GPU, no vLLM needed.

Requests are grouped by sampling settings (one ``generate`` call takes one set) and, within a
group, by prompt length, so left padding wastes little. Each batch is seeded from its first
request's seed: reproducible for the same inputs and batch size, not per request as in vLLM.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator

from llm.config import HfEngineConfig
from llm.engine import Engine
from llm.loading import load_model, load_tokenizer, render_chat
from llm.types import (
    Completion,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    Usage,
)

# How many requests are read ahead to form length-sorted batches.
LOOKAHEAD_BATCHES = 8


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the first stop string (which is dropped, as vLLM and OpenAI do)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class HfEngine(Engine):
    def __init__(self, config: HfEngineConfig) -> None:
        super().__init__()
        self.config = config
        self.model_name = config.model
        self.tokenizer = load_tokenizer(config.tokenizer or config.model)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt
        self.model = load_model(config.model, dtype=config.dtype, device=config.device)

    def _prompt_text(self, request: GenerationRequest) -> str:
        return request.prompt if request.prompt is not None else render_chat(self.tokenizer, request.messages)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[GenerationResult]:
        requests = iter(requests)
        window = self.config.batch_size * LOOKAHEAD_BATCHES
        while chunk := list(itertools.islice(requests, window)):
            prompts = {r.id: self._prompt_text(r) for r in chunk}
            by_sampling: dict[SamplingParams, list[GenerationRequest]] = {}
            for request in chunk:
                by_sampling.setdefault(request.sampling.with_seed(None), []).append(request)
            for group in by_sampling.values():
                group.sort(key=lambda r: len(prompts[r.id]))
                for start in range(0, len(group), self.config.batch_size):
                    batch = group[start : start + self.config.batch_size]
                    yield from self._generate_batch(batch, [prompts[r.id] for r in batch])

    def _generate_batch(self, batch: list[GenerationRequest], prompts: list[str]) -> Iterator[GenerationResult]:
        import torch

        params = batch[0].sampling
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sampling = params.temperature > 0
        with torch.inference_mode():
            output = self.model.generate(
                **encoded,
                do_sample=sampling,
                temperature=params.temperature if sampling else None,
                top_p=params.top_p if sampling else None,
                max_new_tokens=params.max_tokens,
                num_return_sequences=params.n,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                # Stopping early is only a speed-up: the text is cut exactly below.
                stop_strings=list(params.stop) or None,
                tokenizer=self.tokenizer if params.stop else None,
            )
        prompt_len = encoded["input_ids"].shape[1]
        new_tokens = output[:, prompt_len:].tolist()
        for i, request in enumerate(batch):
            completions = []
            for tokens in new_tokens[i * params.n : (i + 1) * params.n]:
                completions.append(self._completion(tokens, params))
            usage = Usage(
                prompt_tokens=int(encoded["attention_mask"][i].sum()),
                completion_tokens=sum(c.num_tokens for c in completions),
            )
            self.calls += 1
            self.usage.add(usage)
            yield GenerationResult(request_id=request.id, completions=completions, usage=usage)

    def _completion(self, tokens: list[int], params: SamplingParams) -> Completion:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ended = eos in tokens
        if ended:
            tokens = tokens[: tokens.index(eos)]
        tokens = [t for t in tokens if t != pad] if pad != eos else tokens
        text, stopped = cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
        reason = "stop" if (ended or stopped) else "length"
        return Completion(text=text, finish_reason=reason, num_tokens=len(tokens))

    def close(self) -> None:
        self.__dict__.pop("model", None)
