"""synth on a GPU: training tokens/s and MFU, and generation tokens/s with the ``hf`` engine, for a
random-init Qwen2-0.5B-sized synthesizer (no weights can be downloaded), each against its baseline
in the same process:

* training: ``synth.train.run_train`` (packing, bf16 autocast, gradient checkpointing, accelerate)
  against a plain PyTorch loop (forward, backward, AdamW step) on the same packed rows;
* generation: ``mathsynth``'s ``hf`` engine against ``model.generate`` called directly on the same
  batches.

    python bench/synth_gpu.py                                   # on a GPU machine
    python bench/synth_gpu.py --preset tiny --device cpu        # smoke run on CPU (minutes)

MFU = (6 x parameters + 12 x layers x hidden x row length) x tokens/s / peak FLOP/s (``--peak-tflops``,
989 for an H100's dense bf16).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

PRESETS = {
    # Qwen2-0.5B's shape.
    "qwen2-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                   "num_key_value_heads": 2},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}
VOCAB = 151936


def build_model_folder(folder: Path, preset: str) -> int:
    """A random-init checkpoint with a small BPE tokenizer (ids past its vocabulary are still valid
    model ids); returns the parameter count."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from llm.tiny import default_training_texts, train_tokenizer

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=4096, tie_word_embeddings=True, **PRESETS[preset])
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    train_tokenizer(default_training_texts(), vocab_size=2000).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def sft_rows(path: Path, examples: int, words: int) -> Path:
    rng = random.Random(0)
    vocab = "the a of to number sum product triangle circle angle area root equation solve find value".split()
    with open(path, "w") as handle:
        for i in range(examples):
            prompt = " ".join(rng.choices(vocab, k=words // 2))
            completion = " ".join(rng.choices(vocab, k=words // 2))
            handle.write(json.dumps({"id": f"ex{i}", "prompt": prompt, "completion": completion}) + "\n")
    return path


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_ours(config) -> float:
    """tokens/s of run_train's logged windows after the first (the first holds compilation and warm-up)."""
    from synth.train import TRAIN_LOG, run_train

    run_train(config)
    windows = [json.loads(line) for line in (Path(config.output) / TRAIN_LOG).read_text().splitlines()]
    rates = [w["tokens_per_s"] for w in windows[1:]] or [w["tokens_per_s"] for w in windows]
    return sum(rates) / len(rates)


def train_plain(config, device: str, steps: int) -> float:
    """The same rows through forward, backward and AdamW, nothing else."""
    from llm.loading import load_model, load_tokenizer
    from synth.train import build_rows

    tokenizer = load_tokenizer(config.model)
    rows, _ = build_rows(config, tokenizer)
    model = load_model(config.model, dtype="float32", device=device).train()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    batch = config.per_device_batch_size
    tokens, started = 0, None
    for step in range(steps + 1):
        chosen = [rows[(step * batch + k) % len(rows)] for k in range(batch)]
        width = max(len(r.input_ids) for r in chosen)
        ids = torch.tensor([list(r.input_ids) + [0] * (width - len(r.input_ids)) for r in chosen], device=device)
        positions = torch.tensor([list(r.position_ids) + [0] * (width - len(r.position_ids)) for r in chosen], device=device)
        labels = torch.tensor([list(r.labels) + [-100] * (width - len(r.labels)) for r in chosen], device=device)
        with autocast:
            loss = model(input_ids=ids, position_ids=positions, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step == 0:
            started = time.perf_counter()  # step 0 is warm-up
        else:
            tokens += sum(len(r.input_ids) for r in chosen)
    return tokens / (time.perf_counter() - started)


def generation(folder: Path, device: str, prompts: int, batch: int, max_tokens: int) -> tuple[float, float]:
    """(ours, raw) completion tokens/s on the same prompts and batches."""
    from llm.config import HfEngineConfig
    from llm.hf_engine import HfEngine
    from llm.types import GenerationRequest, SamplingParams

    engine = HfEngine(HfEngineConfig(kind="hf", model=str(folder), batch_size=batch, device=device))
    texts = [f"Problem {i}: find the sum of the first {i + 3} odd numbers." for i in range(prompts)]
    sampling = SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=0)
    requests = [GenerationRequest.single_turn(f"r{i}", sampling, t, chat=False) for i, t in enumerate(texts)]
    list(engine.generate(requests[:batch]))  # warm-up
    synchronize(device)
    started = time.perf_counter()
    ours_tokens = sum(c.num_tokens for r in engine.generate(requests) for c in r.completions)
    synchronize(device)
    ours = ours_tokens / (time.perf_counter() - started)

    tokenizer, model = engine.tokenizer, engine.model
    ordered = sorted(texts, key=len)  # as the engine batches them
    started, raw_tokens = time.perf_counter(), 0
    for lo in range(0, len(ordered), batch):
        encoded = tokenizer(ordered[lo : lo + batch], return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            out = model.generate(**encoded, do_sample=True, temperature=1.0, max_new_tokens=max_tokens,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, encoded["input_ids"].shape[1]:]
        raw_tokens += int((new != tokenizer.pad_token_id).sum())
    synchronize(device)
    raw = raw_tokens / (time.perf_counter() - started)
    engine.close()
    return ours, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="rows per training step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--words", type=int, default=600, help="words per SFT example")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--gen-batch", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)

    from synth.config import SynthTrainConfig

    work = Path(tempfile.mkdtemp(prefix="bench-synth-gpu-"))
    params = build_model_folder(work / "model", args.preset)
    data = sft_rows(work / "sft_raw.jsonl", examples=args.batch_size * (args.steps + 1) * 4, words=args.words)
    config = SynthTrainConfig.model_validate({
        "model": str(work / "model"), "data": {"path": str(data), "format": "raw"}, "output": str(work / "out"),
        "max_length": args.max_length, "epochs": 1, "per_device_batch_size": args.batch_size,
        "gradient_checkpointing": True, "save_steps": 10**6, "keep_checkpoints": 0, "logging_steps": max(1, args.steps // 4),
    })
    layers, hidden = PRESETS[args.preset]["num_hidden_layers"], PRESETS[args.preset]["hidden_size"]
    flops_per_token = 6 * params + 12 * layers * hidden * args.max_length

    plain = train_plain(config, args.device, args.steps)
    ours = train_ours(config)
    gen_ours, gen_raw = generation(work / "model", args.device, args.prompts, args.gen_batch, args.max_tokens)
    results = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "preset": args.preset, "parameters": params, "max_length": args.max_length, "batch_rows": args.batch_size,
        "train_tokens_per_s_ours": ours, "train_tokens_per_s_plain": plain, "train_ratio": ours / plain,
        "mfu_ours": flops_per_token * ours / (args.peak_tflops * 1e12),
        "mfu_plain": flops_per_token * plain / (args.peak_tflops * 1e12),
        "hf_generation_tokens_per_s_ours": gen_ours, "hf_generation_tokens_per_s_raw": gen_raw,
        "generation_ratio": gen_ours / gen_raw,
    }
    print(f"{args.preset} ({params / 1e6:.0f}M parameters) on {results['device']}")
    print(f"training tokens/s: ours {ours:,.0f}, plain loop {plain:,.0f}, ratio {ours / plain:.2f}; "
          f"MFU ours {results['mfu_ours']:.1%} (plain {results['mfu_plain']:.1%}) of {args.peak_tflops:g} TFLOP/s")
    print(f"hf generation tokens/s: ours {gen_ours:,.0f}, model.generate {gen_raw:,.0f}, ratio {gen_ours / gen_raw:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
