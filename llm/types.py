"""The one request/response shape shared by every engine.

The teacher, the synthesizer and the evaluated model are all just engine configs, so stages
build ``GenerationRequest``s and read ``GenerationResult``s without knowing which engine runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ConfigDict, Field

from data.config_base import StrictConfig


class SamplingParams(StrictConfig):
    """Sampling settings understood by all engines. ``seed`` makes a request reproducible
    where the engine allows it (vLLM: per request; hf: per batch; openai: if the server honours it)."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    n: int = Field(1, ge=1)
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def with_seed(self, seed: int | None) -> "SamplingParams":
        return self.model_copy(update={"seed": seed})


Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class GenerationRequest:
    """A raw ``prompt`` or chat ``messages`` (exactly one), with its sampling settings.

    ``id`` is the caller's key: results come back tagged with it, possibly out of order.
    """

    id: str
    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None

    @classmethod
    def single_turn(cls, id: str, sampling: SamplingParams, text: str, *, chat: bool) -> "GenerationRequest":
        """``text`` as one user message (chat) or as the raw prompt."""
        if chat:
            return cls(id=id, sampling=sampling, messages=({"role": "user", "content": text},))
        return cls(id=id, sampling=sampling, prompt=text)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"request {self.id}: give exactly one of prompt or messages")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    text: str
    finish_reason: str | None = None  # "stop", "length", ...
    num_tokens: int | None = None


@dataclass
class GenerationResult:
    """The engine's answer to one request: ``sampling.n`` completions and the tokens used.

    ``cached`` is True when the result came from a persistent cache and cost nothing.
    """

    request_id: str
    completions: list[Completion]
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
