"""Typed engine configs: ``engine: {kind: vllm|hf|openai, model: PATH_OR_NAME, ...}``.

Each kind is its own model so a key that makes no sense for that kind is rejected at start.
Keys marked ``operational`` change how a run goes, never what it produces: a stage leaves them
out of its config hash, so a rerun may raise a budget or change concurrency on the same folder.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from data.config_base import StrictConfig, operational


class _EngineConfigBase(StrictConfig):
    model: str = Field(..., min_length=1, description="local checkpoint folder, or a hub name when online")
    # Chat requests are rendered with the tokenizer's chat template by local engines.
    tokenizer: str | None = None


class VllmEngineConfig(_EngineConfigBase):
    kind: Literal["vllm"] = "vllm"
    dtype: str = "auto"  # use float32 for the tiny model on CPU (bf16 AMX path crashes there)
    max_model_len: int | None = Field(None, ge=16)
    tensor_parallel_size: int = operational(1, ge=1)
    gpu_memory_utilization: float = operational(0.9, gt=0.0, le=1.0)
    max_num_seqs: int | None = operational(None, ge=1)
    enforce_eager: bool = operational(False)
    # Requests handed to vLLM ahead of completion: enough to keep its batch full while
    # finished ones stream out to disk.
    queue_depth: int = operational(1024, ge=1)
    engine_kwargs: dict = Field(default_factory=dict, description="passed to vllm.LLM as is")


class HfEngineConfig(_EngineConfigBase):
    kind: Literal["hf"] = "hf"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = operational("auto")  # "auto": cuda if available, else cpu
    batch_size: int = Field(16, ge=1)


class BudgetConfig(StrictConfig):
    max_calls: int | None = Field(None, ge=0, description="HTTP calls, retries included")
    max_tokens: int | None = Field(None, ge=0, description="prompt + completion tokens")


class OpenAIEngineConfig(_EngineConfigBase):
    kind: Literal["openai"] = "openai"
    base_url: str | None = operational(None)  # None: the OpenAI API (or OPENAI_BASE_URL)
    api_key_env: str = operational("OPENAI_API_KEY")
    api: Literal["chat", "completions"] = "chat"
    # How the HTTP calls are made: our own aiohttp client, the only transport. The openai SDK's
    # client was dropped: it cost several times the client CPU per call and could do nothing
    # aiohttp cannot (bench/RESULTS.md). The key stays: a config naming aiohttp still validates.
    transport: Literal["aiohttp"] = operational("aiohttp")
    # Sent with every call, e.g. Azure OpenAI: {"api-key": "${AZURE_OPENAI_API_KEY}"} and
    # {"api-version": "2024-10-21"}. "${NAME}" in a value is read from the environment at run
    # time: run manifests record this config, so a key must not be written into it.
    extra_headers: dict[str, str] = operational(default_factory=dict)
    default_query: dict[str, str] = operational(default_factory=dict)
    max_in_flight: int = operational(16, ge=1, description="HTTP calls in flight, not items")
    timeout_s: float = operational(120.0, gt=0, description="per attempt, reading the whole body included")
    # A 200 body larger than this is an error (charged at the worst case, not retried), so an
    # endpoint streaming without end cannot fill the memory; far above any n x max_tokens answer.
    max_response_bytes: int = operational(16 * 2**20, ge=1024)
    max_retries: int = operational(8, ge=0)
    backoff_initial_s: float = operational(1.0, ge=0)
    backoff_max_s: float = operational(60.0, ge=0)
    cache_path: str | None = operational(None, description="sqlite request cache; None disables it")
    budget: BudgetConfig = operational(default_factory=BudgetConfig)


EngineConfig = Annotated[
    Union[VllmEngineConfig, HfEngineConfig, OpenAIEngineConfig], Field(discriminator="kind")
]
