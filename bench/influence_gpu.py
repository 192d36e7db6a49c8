"""Candidate featurize on a Qwen2-0.5B-sized model (random init: no weights can be downloaded).

Ours (batched per-example LoRA gradients, Adam direction, 8192-dim sketch) against the limit: a
plain batched forward+backward of the same model on the same batches. Prints examples/s, peak
GPU memory and the projected hours to score 1M texts at the given number of checkpoints.

    python bench/influence_gpu.py                       # on a GPU machine
    python bench/influence_gpu.py --device cpu --examples 8 --layers 2   # smoke run on CPU
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from influence.config import LoraSettings, ProjectionSettings
from influence.examples import TokenizedExample, collate
from influence.featurizer import Featurizer
from influence.gradients import AdamDirection, per_example_losses
from influence.lora import AdamState, attach_lora, lora_parameters


def qwen2_half_billion(layers: int):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    return AutoModelForCausalLM.from_config(config)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--checkpoints", type=int, default=4, help="for the 1M-text projection")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = qwen2_half_billion(args.layers).to(args.device, dtype=getattr(torch, args.dtype))
    model = attach_lora(model, LoraSettings(), for_training=False)
    with torch.no_grad():
        for _, p in lora_parameters(model):
            p.normal_(0.0, 0.02)
    state = AdamState(exp_avg={n: torch.randn_like(p, dtype=torch.float32) * 1e-4 for n, p in lora_parameters(model)},
                      exp_avg_sq={n: torch.rand_like(p, dtype=torch.float32) * 1e-8 for n, p in lora_parameters(model)},
                      step=100, betas=(0.9, 0.999), eps=1e-8)
    generator = torch.Generator().manual_seed(0)
    examples = [TokenizedExample(str(i), tuple(torch.randint(0, 151936, (args.tokens,), generator=generator).tolist()), 1)
                for i in range(args.examples)]
    featurizer = Featurizer(model, 0, ProjectionSettings(dim=args.dim), args.batch_size)
    direction = AdamDirection(state, args.device)
    featurizer.featurize(examples[: args.batch_size], adam=direction)  # warm-up: kernels, projection tables

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronize(args.device)
    started = time.perf_counter()
    featurizer.featurize(examples, adam=direction)
    synchronize(args.device)
    ours_s = time.perf_counter() - started
    ours_peak = peak_memory_gb(args.device)

    params = [p for _, p in lora_parameters(model)]
    for p in params:
        p.requires_grad_(True)

    def forward_backward(batch) -> None:
        input_ids, attention_mask, scored = collate(batch, 0, args.device)
        per_example_losses(model, input_ids, attention_mask, scored).sum().backward()

    forward_backward(examples[: args.batch_size])  # warm-up, as for ours
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    synchronize(args.device)
    started = time.perf_counter()
    for start in range(0, len(examples), args.batch_size):
        forward_backward(examples[start:start + args.batch_size])
    synchronize(args.device)
    limit_s = time.perf_counter() - started
    limit_peak = peak_memory_gb(args.device)

    ours_rate, limit_rate = len(examples) / ours_s, len(examples) / limit_s
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "model": f"Qwen2-0.5B-sized ({args.layers} layers), {args.dtype}, LoRA r=128 q/k/v/o "
                 f"({featurizer.num_parameters:,} LoRA weights)",
        "tokens": args.tokens, "batch_size": args.batch_size, "examples": len(examples), "dim": args.dim,
        "ours_examples_per_s": round(ours_rate, 2), "limit_examples_per_s": round(limit_rate, 2),
        "ratio_to_limit": round(ours_rate / limit_rate, 3),
        "ours_peak_gb": ours_peak and round(ours_peak, 2), "limit_peak_gb": limit_peak and round(limit_peak, 2),
        "hours_for_1M_texts": round(1e6 * args.checkpoints / ours_rate / 3600, 2),
        "checkpoints": args.checkpoints,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
