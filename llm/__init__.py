"""Model access: checkpoint loading, the tiny-model factory, and three generation engines
(``vllm``, ``hf``, ``openai``) behind one request/response shape."""
from llm.types import (
    Completion,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    Usage,
)

__all__ = ["Completion", "GenerationRequest", "GenerationResult", "SamplingParams", "Usage"]
