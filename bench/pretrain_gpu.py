"""pretrain on a GPU: training tokens/s, MFU and peak memory of our training core for random-init
Qwen2-0.5B- and Llama-3.2-1B-sized models (configs with the published sizes; nothing is
downloaded), 2048-token packed rows, bf16 autocast over fp32 master weights (``dtype: auto``),
with and without gradient checkpointing.

Each run is ``training.loop.train_model`` (what ``pretrain train`` runs) on ``pretrain``'s own
rows: a synthetic tokenized corpus (random token ids, documents of log-normal lengths, half of
them with a question/solution loss mask) planned by ``pretrain.plan.build_plan`` (shuffled,
packed end to end, positions restarting at every document) and read by ``PlannedRows``, as
``pretrain train`` reads the memory-mapped arrays of ``pretrain tokenize``. Logging every step;
no checkpoint during the run.

Tokens/s: wall time from the end of step ``--warmup`` to the end of the last step (the training
log's step lines), everything in the steps included. MFU = tokens/s x FLOPs per token
(``training.throughput``: 6 x matmul parameters + 12 x layers x hidden x row length) / peak
(``--peak-tflops``, else the detected GPU's dense bf16 peak: 989 for an H100/H200).

    python bench/pretrain_gpu.py                 # the GPU machine: 4 runs, about 3-4 minutes
    python bench/pretrain_gpu.py --smoke         # CPU, tiny models, a few steps: checks the script

Two checks of parts of our step, on each model's sizes, follow the runs (they are what the CPU
benchmark's profile pointed at; bench/RESULTS.md):

* the loss: ``training.rows.token_losses`` (which shifts the labels, not the logits, since the
  CPU profile below) against a plain shifted-labels cross-entropy written here, on the lm head of
  one micro-batch: forward + backward time and peak memory (they should match);
* the optimizer step: ``torch.optim.AdamW`` as ``training.model.build_optimizer`` builds it
  (foreach on a GPU) against ``fused=True`` (transformers.Trainer's default), on parameters of
  the model's shapes.

Writes the table's figures as JSON to ``$OUT/pretrain_gpu.json`` when OUT is set (or ``--json``).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pretrain_train import StepClock  # noqa: E402

# Published sizes (config.json of Qwen/Qwen2-0.5B and meta-llama/Llama-3.2-1B).
PRESETS = {
    "qwen2-0.5b": ("qwen2", {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                             "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                             "max_position_embeddings": 32768}),
    "llama-3.2-1b": ("llama", {"vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
                               "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                               "head_dim": 64, "tie_word_embeddings": True, "rope_theta": 500000.0,
                               "rms_norm_eps": 1e-5, "max_position_embeddings": 131072}),
    # --smoke: the same two architectures, tiny.
    "tiny-qwen2": ("qwen2", {"vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True}),
    "tiny-llama": ("llama", {"vocab_size": 4096, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                             "tie_word_embeddings": True}),
}


def build_model_folder(folder: Path, preset: str, tokenizer, device: str) -> tuple[int, object]:
    """A random-init checkpoint (bf16 on GPU, fp32 on CPU) with the small tokenizer (ids past its
    vocabulary are valid model ids). Returns (parameters, config)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    kind, sizes = PRESETS[preset]
    config = (Qwen2Config if kind == "qwen2" else LlamaConfig)(
        **sizes, bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1B parameters on the GPU takes a second, on the CPU much longer
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    release(device)
    return params, config


def release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def synthetic_data(settings, vocab: int, steps: int, seed: int = 0):
    """``pretrain``'s rows (``PlannedRows``) over random token arrays: enough documents for
    ``steps`` global batches; the plan is cut to exactly ``steps`` steps."""
    from pretrain.plan import (
        KIND,
        LENGTH,
        LINE,
        OFFSET,
        PlannedRows,
        TokenArrays,
        build_plan,
    )
    from pretrain.train import plan_stats
    from training.loop import global_batch_rows, steps_for

    class SyntheticArrays(TokenArrays):
        """The tokenize pass's arrays and index, in memory."""

        def __init__(self, lengths: np.ndarray) -> None:
            rng = np.random.default_rng(seed)
            self.index = np.zeros((len(lengths), 7), dtype=np.int64)
            self.index[:, LINE] = np.arange(len(lengths))
            self.index[:, LENGTH] = lengths
            self.index[:, OFFSET] = np.cumsum(lengths) - lengths
            self.index[:, KIND] = np.arange(len(lengths)) % 2  # plain text, question/solution
            total = int(lengths.sum())
            loss = np.ones(total, dtype=np.uint8)
            for offset, length in self.index[1::2, [OFFSET, LENGTH]]:
                loss[offset:offset + length // 3] = 0  # the question of a question/solution text
            self.tokens = [rng.integers(0, vocab, total, dtype=np.uint32)]
            self.loss = [loss]

    global_rows = global_batch_rows(settings, 1)
    wanted = (steps + 1) * global_rows * settings.max_length
    rng = np.random.default_rng(seed + 1)
    lengths = np.clip(rng.lognormal(np.log(700), 0.8, size=wanted // 300 + 16), 32, 8192).astype(np.int64)
    lengths = lengths[:int(np.searchsorted(np.cumsum(lengths), wanted)) + 1]
    arrays = SyntheticArrays(lengths)
    plan = build_plan(arrays.index, settings)
    total_steps = min(steps, steps_for(plan.rows, settings, 1))
    stats = plan_stats(plan, arrays.index, settings, total_steps * global_rows)
    return PlannedRows(plan, arrays, global_rows, total_steps, stats)


def one_run(work: Path, model_dir: Path, tokenizer, args, checkpointing: bool, flops: float, peak) -> dict:
    from data.storage import ShardWriter
    from pretrain.config import PretrainConfig
    from training.loop import train_model
    from training.stage import make_accelerator

    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    settings = PretrainConfig.model_validate({
        "model": str(model_dir), "output": str(output), "tokenized": str(work / "synthetic"),
        "sources": [{"paths": ["synthetic"], "name": "synthetic"}], "max_length": args.max_length,
        "per_device_batch_size": args.batch_size, "gradient_accumulation_steps": args.accumulation,
        "gradient_checkpointing": checkpointing, "dtype": "auto", "logging_steps": 1, "save_steps": 10**6,
        "keep_checkpoints": 0, "peak_tflops": peak,
    })
    data = synthetic_data(settings, args.vocab_ids, args.warmup + args.steps)
    if data.total_steps != args.warmup + args.steps:
        raise RuntimeError(f"the plan has {data.total_steps} steps, not {args.warmup + args.steps}")
    timed_tokens = sum(data.row_tokens(i) for i in range(args.warmup * data.global_rows,
                                                          data.total_steps * data.global_rows))
    clock = StepClock()
    logger = logging.getLogger("training.loop")
    logger.addHandler(clock)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    accelerator = make_accelerator(settings, "bench")
    writer = ShardWriter(output / "log.jsonl")
    try:
        train_model(settings, accelerator, data, tokenizer, writer)
    finally:
        logger.removeHandler(clock)
        writer.close()
        accelerator.free_memory()
        del accelerator
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["step"] > args.warmup]
    seconds = clock.times[data.total_steps] - clock.times[args.warmup]
    rate = timed_tokens / seconds
    shutil.rmtree(output, ignore_errors=True)
    return {"tokens_per_s": rate, "s_per_step": seconds / args.steps,
            "mfu": rate * flops / (peak * 1e12) if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "data_fraction": sum(r["data_fraction"] for r in timed) / len(timed),
            "final_loss": records[-1]["loss"], "timed_tokens": timed_tokens}


def describe(err: Exception) -> str:
    first = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {first}"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, repeat: int) -> tuple[float, float | None]:
    """(best seconds of ``repeat`` calls after one warm-up, peak memory above the start in GiB)."""
    fn()
    synchronize(device)
    cuda = device.startswith("cuda")
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best, ((torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None)


def loss_check(config, args) -> dict:
    """Our token losses against shifted labels, on the lm head of one micro-batch."""
    import torch.nn.functional as F

    from training.rows import IGNORE, token_losses

    device, rows, width = args.device, args.batch_size, args.max_length
    cuda = device.startswith("cuda")

    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(config.vocab_size, config.hidden_size, device=device) * 0.02)
            self.hidden = torch.randn(rows, width, config.hidden_size, device=device)

        def forward(self, input_ids=None, position_ids=None, use_cache=False):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = F.linear(self.hidden, self.weight)
            return type("Output", (), {"logits": logits})

    head = Head()
    labels = torch.randint(0, config.vocab_size, (rows, width), device=device)
    labels[:, ::3] = IGNORE
    batch = {"input_ids": labels.clamp(min=0), "position_ids": None, "labels": labels}

    def ours():
        losses, _ = token_losses(head, batch)
        losses.sum().backward()
        head.weight.grad = None

    def shifted():
        logits = head().logits
        targets = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                 ignore_index=IGNORE, reduction="none")
        losses.sum().backward()
        head.weight.grad = None

    ours_s, ours_mem = timed(device, ours, 3)
    shifted_s, shifted_mem = timed(device, shifted, 3)
    return {"loss_ours_ms": 1000 * ours_s, "loss_shifted_ms": 1000 * shifted_s,
            "loss_ours_peak_gib": ours_mem, "loss_shifted_peak_gib": shifted_mem}


def optimizer_check(config, args) -> dict:
    """One AdamW step over parameters of the model's shapes: foreach (ours) against fused."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        shapes = [p.shape for p in AutoModelForCausalLM.from_config(config).parameters()]
    params = [torch.nn.Parameter(torch.randn(shape, device=args.device) * 0.02) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    figures = {}
    for name, options in (("ours", {}), ("fused", {"fused": True})):
        optimizer = torch.optim.AdamW(params, lr=1e-5, **options)
        figures[f"adamw_{name}_ms"] = 1000 * timed(args.device, optimizer.step, 5)[0]
        del optimizer
    del params
    release(args.device)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny models, short rows, a few steps")
    parser.add_argument("--presets", nargs="+", help="default: qwen2-0.5b llama-3.2-1b (--smoke: tiny-qwen2 tiny-llama)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4, help="rows per micro-step")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, help="default: the detected GPU's dense bf16 peak")
    parser.add_argument("--budget-s", type=float, default=420, help="skip the runs that would start after this")
    parser.add_argument("--json", help="default: $OUT/pretrain_gpu.json when OUT is set")
    args = parser.parse_args()
    if args.smoke:
        args.presets = args.presets or ["tiny-qwen2", "tiny-llama"]
        args.max_length, args.batch_size, args.accumulation, args.warmup, args.steps = 256, 2, 2, 2, 3
    args.presets = args.presets or ["qwen2-0.5b", "llama-3.2-1b"]
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("accelerate", "transformers", "runner", "data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from transformers import AutoModelForCausalLM

    from llm.tiny import default_training_texts, train_tokenizer
    from training.throughput import detect_peak_tflops, flops_per_token

    started = time.perf_counter()
    peak = args.peak_tflops or detect_peak_tflops()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-gpu-"))
    tokenizer = train_tokenizer(default_training_texts(), vocab_size=2000)
    results, checks = [], []
    target = args.json or (str(Path(os.environ["OUT"]) / "pretrain_gpu.json") if os.environ.get("OUT") else None)

    def save() -> None:
        """After every run, so a run cut short by the device's time limit keeps what it measured."""
        if target:
            Path(target).write_text(json.dumps({
                "device": device_name, "torch": torch.__version__, "max_length": args.max_length,
                "batch_size": args.batch_size, "accumulation": args.accumulation, "peak_tflops": peak,
                "seconds": time.perf_counter() - started, "runs": results, "checks": checks}, indent=2))

    for preset in args.presets:
        model_dir = work / preset
        if time.perf_counter() - started > args.budget_s:
            results.append({"preset": preset, "skipped": "time budget"})
            continue
        params, config = build_model_folder(model_dir, preset, tokenizer, args.device)
        args.vocab_ids = config.vocab_size
        with torch.device("meta"):
            flops = flops_per_token(AutoModelForCausalLM.from_config(config), args.max_length)
        for checkpointing in (False, True):
            row = {"preset": preset, "parameters": params, "gradient_checkpointing": checkpointing,
                   "flops_per_token": flops}
            if time.perf_counter() - started > args.budget_s:
                results.append({**row, "skipped": "time budget"})
                continue
            try:
                row.update(one_run(work, model_dir, tokenizer, args, checkpointing, flops, peak))
            except Exception as err:  # noqa: BLE001 - an OOM of one run must not lose the others
                row["error"] = describe(err)
            release(args.device)
            results.append(row)
            save()
            print(json.dumps(row), flush=True)
        shutil.rmtree(model_dir, ignore_errors=True)
        if time.perf_counter() - started > args.budget_s:
            checks.append({"preset": preset, "skipped": "time budget"})
            continue
        check = {"preset": preset}
        for part in (loss_check, optimizer_check):
            try:
                check.update(part(config, args))
            except Exception as err:  # noqa: BLE001 - one failed check must not lose the others
                check[f"{part.__name__}_error"] = describe(err)
            release(args.device)
        checks.append(check)
        save()
        print(json.dumps(check), flush=True)

    print(f"\npretrain training on {device_name}, torch {torch.__version__}, {args.max_length}-token packed rows, "
          f"{args.batch_size} rows x {args.accumulation} accumulation per step, {args.warmup} warm-up + "
          f"{args.steps} timed steps, {'bf16 autocast' if args.device == 'cuda' else 'fp32'}, "
          f"peak {peak or 'n/a'} TFLOP/s; {time.perf_counter() - started:.0f} s in all")
    print("| model | parameters | grad. checkpointing | tokens/s | s/step | MFU | peak memory GiB | data share |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        label = f"| {row['preset']} | {row.get('parameters', 0) / 1e6:,.1f}M | {'yes' if row.get('gradient_checkpointing') else 'no'} |"
        if "tokens_per_s" not in row:
            print(f"{label} {row.get('error') or row.get('skipped')} | | | | |")
            continue
        mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
        memory = "n/a" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f}"
        print(f"{label} {row['tokens_per_s']:,.0f} | {row['s_per_step']:.3f} | {mfu} | {memory} | "
              f"{row['data_fraction']:.2%} |")
    print(f"\nparts of a step, micro-batch {args.batch_size} x {args.max_length} (best of 3 / 5):")
    print("| model | loss fwd+bwd: ours | shifted labels | peak GiB ours / shifted | AdamW step: ours (torch's default) | fused |")
    print("|---|---|---|---|---|---|")
    for check in checks:
        if "skipped" in check:
            print(f"| {check['preset']} | {check['skipped']} | | | | |")
            continue
        ms = {key: f"{check[key]:.1f} ms" if key in check else "error"
              for key in ("loss_ours_ms", "loss_shifted_ms", "adamw_ours_ms", "adamw_fused_ms")}
        gib = {key: "n/a" if check.get(key) is None else f"{check[key]:.2f}"
               for key in ("loss_ours_peak_gib", "loss_shifted_peak_gib")}
        print(f"| {check['preset']} | {ms['loss_ours_ms']} | {ms['loss_shifted_ms']} | {gib['loss_ours_peak_gib']} / "
              f"{gib['loss_shifted_peak_gib']} | {ms['adamw_ours_ms']} | {ms['adamw_fused_ms']} |")
    save()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
