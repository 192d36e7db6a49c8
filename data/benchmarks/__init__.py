"""The shipped benchmark suite (``data/``, licences in ``LICENSES.md``) and its registry:
``load_benchmark("gsm8k")`` gives canonical ``BenchmarkRecord``s; ``load_benchmark_config(yaml)``
adds a JSONL benchmark without code."""
from data.benchmarks.registry import (
    BENCHMARKS,
    DATA_DIR,
    EXEMPLAR_POOLS,
    BenchmarkSpec,
    CustomBenchmarkConfig,
    ExemplarPool,
    get_spec,
    list_benchmarks,
    load_benchmark,
    load_benchmark_config,
    load_exemplar_pool,
)

__all__ = [
    "BENCHMARKS", "DATA_DIR", "EXEMPLAR_POOLS", "BenchmarkSpec", "CustomBenchmarkConfig",
    "ExemplarPool", "get_spec", "list_benchmarks", "load_benchmark", "load_benchmark_config", "load_exemplar_pool",
]
