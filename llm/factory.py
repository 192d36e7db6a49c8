"""Build the engine a config names.

Apart from ``llm.engine`` because every engine module imports the interface, while this module
imports every engine: in one module that would be an import cycle.
"""
from __future__ import annotations

from llm.engine import Engine
from llm.errors import EngineError


def make_engine(config) -> Engine:
    """Imports are lazy: vLLM (or transformers, or aiohttp) is only needed when used."""
    if config.kind == "vllm":
        from llm.vllm_engine import VllmEngine

        return VllmEngine(config)
    if config.kind == "hf":
        from llm.hf_engine import HfEngine

        return HfEngine(config)
    if config.kind == "openai":
        from llm.openai_engine import OpenAIEngine

        return OpenAIEngine(config)
    raise EngineError(f"engine.kind: unknown engine {config.kind!r}")
