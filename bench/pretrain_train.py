"""``pretrain train`` against ``transformers.Trainer``: training tokens/s on CPU, same model, same rows.

In one process, for ``--rounds`` rounds (which of the two goes first alternates):

* ours: ``pretrain.train.run_pretrain`` on a tokenized folder (``pretrain tokenize`` of a JSONL
  of JiuZhang3.0 ``## Question ... ## Solution`` texts and plain texts from the sample corpus);
* Trainer: ``transformers.Trainer`` on the SAME packed rows (a torch Dataset over our plan's rows:
  input ids, labels with the same ignored positions, position ids restarting at every document),
  sequential sampler, so step s trains exactly the rows our step s trains, in the same
  micro-batches.

Same model folder (a random-init Llama, ``--hidden``/``--layers``, the vocabulary of a small BPE
tokenizer), fp32, ``--threads`` torch threads for both, the same per-device batch, accumulation,
AdamW hyper-parameters, constant learning rate, gradient clipping at 1.0, no evaluation, no
checkpoint during the run (ours: ``save_steps`` past the end; Trainer: ``save_strategy="no"``),
Trainer with ``dataloader_num_workers=0``, ``report_to=[]`` and its default optimizer (fused AdamW).
The corpus is cut so that the plan has exactly ``--warmup + --steps`` optimizer steps. Both
train the same tokens from the same weights: the mean loss of the steps printed for each agrees.

Tokens/s is the wall time of the ``--steps`` steps after ``--warmup`` warm-up steps, everything in
them included: ours from the training log's line at the end of step ``warmup`` to the one at the
end of the last step (logging every step), Trainer from ``on_step_end`` to ``on_step_end``. The
final model save of both is outside the window. Our data-loading share is the part file's
``data_fraction`` (per step).

    python bench/pretrain_train.py [--rounds 4] [--threads 1] [--core 1] [--profile]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from pretrain_tokenize import question_solution, sample_texts  # noqa: E402


def build_model_folder(folder: Path, args) -> int:
    """A random-init Llama with the tiny BPE tokenizer; returns the parameter count."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llm.tiny import train_tokenizer

    tokenizer = train_tokenizer(sample_texts(), vocab_size=args.vocab)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, max_position_embeddings=max(2048, args.max_length),
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="float32")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def write_corpus(path: Path, tokenizer, steps: int, rows_per_step: int, width: int) -> int:
    """Alternating question/solution and plain texts, as many as make exactly ``steps`` global
    batches of packed ``width``-token rows (the tokenize pass appends an EOS to each text)."""
    texts = sample_texts()
    total, rows = 0, []
    for i in range(100_000):
        text = texts[(i * 7) % len(texts)]
        row = {"id": f"d{i}", "text": question_solution(text, i) if i % 2 == 0 else f"Note {i}.\n{text}"}
        tokens = len(tokenizer(row["text"])["input_ids"]) + 1
        if math.ceil((total + tokens) / width) // rows_per_step > steps:
            continue  # a long text that would overshoot: a shorter one comes
        total += tokens
        rows.append(row)
        if math.ceil(total / width) // rows_per_step == steps:
            break
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return len(rows)


def pretrain_config(work: Path, model: Path, corpus: Path, args, output: str):
    from pretrain.config import PretrainConfig

    return PretrainConfig.model_validate({
        "model": str(model), "output": str(work / output), "tokenized": str(work / "tok"),
        "sources": [{"paths": [str(corpus)], "name": "corpus"}],
        "max_length": args.max_length, "per_device_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.accumulation, "learning_rate": args.lr,
        "schedule": {"kind": "constant"}, "weight_decay": 0.0, "max_grad_norm": 1.0, "dtype": "float32",
        "save_steps": 10**6, "keep_checkpoints": 0, "logging_steps": 1,
    })


class StepClock(logging.Handler):
    """Wall time of each of our training log's step lines (one per step with logging_steps 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("step "):
            self.times[int(message.split()[1].split("/")[0])] = time.perf_counter()


def run_ours(config, args) -> dict:
    from pretrain.train import run_pretrain
    from training.stage import TRAIN_LOG

    shutil.rmtree(config.output, ignore_errors=True)
    clock = StepClock()
    logger = logging.getLogger("training.loop")
    logger.addHandler(clock)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        manifest = run_pretrain(config)
    finally:
        logger.removeHandler(clock)
    steps = manifest["stats"]["steps"]
    if steps != args.warmup + args.steps:
        raise RuntimeError(f"our run had {steps} steps, not {args.warmup + args.steps}")
    records = [json.loads(line) for line in (Path(config.output) / TRAIN_LOG).read_text().splitlines()]
    timed = [r for r in records if r["step"] > args.warmup]
    seconds = clock.times[steps] - clock.times[args.warmup]
    return {"seconds": seconds, "data_fraction_mean": sum(r["data_fraction"] for r in timed) / len(timed),
            "data_fraction_max": max(r["data_fraction"] for r in timed),
            "logged_tokens_per_s": len(timed) / sum(1 / r["tokens_per_s"] for r in timed),  # harmonic: equal steps
            "mean_loss": sum(r["loss"] for r in records) / len(records)}


def planned_rows(config):
    """Our plan's rows, as the trainer reads them."""
    from pretrain.train import PretrainStage

    return PretrainStage(config).load_data(world=1)


class PlanDataset(torch.utils.data.Dataset):
    """Our plan's packed rows for Trainer: input ids, labels (-100 where we score nothing, and at
    every document's first token), position ids restarting at every document."""

    def __init__(self, data, rows: int) -> None:
        self.data, self.rows = data, rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> dict:
        row = self.data.row(index)
        return {"input_ids": torch.as_tensor(row.input_ids), "labels": torch.as_tensor(row.labels),
                "position_ids": torch.as_tensor(row.position_ids)}


def pad_collator(pad_id: int):
    """Stacks rows, padding a short one as ours does (pad ids, ignored labels, positions from 0).
    No attention mask: the position ids mark the documents, as in our loop."""
    def collate(items: list[dict]) -> dict:
        width = max(len(item["input_ids"]) for item in items)
        batch = {"input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
                 "labels": torch.full((len(items), width), -100, dtype=torch.long),
                 "position_ids": torch.zeros((len(items), width), dtype=torch.long)}
        for b, item in enumerate(items):
            n = len(item["input_ids"])
            for key, column in batch.items():
                column[b, :n] = item[key]
            batch["position_ids"][b, n:] = torch.arange(width - n)
        return batch
    return collate


def run_trainer(work: Path, model_dir: Path, data, args) -> dict:
    from transformers import (
        AutoModelForCausalLM,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from llm.loading import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    total = args.warmup + args.steps
    times: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            times[state.global_step] = time.perf_counter()

    out = work / "trainer"
    shutil.rmtree(out, ignore_errors=True)
    training_args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation, max_steps=total, learning_rate=args.lr,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, save_strategy="no", eval_strategy="no", report_to=[], dataloader_num_workers=0,
        dataloader_pin_memory=False, use_cpu=True, train_sampling_strategy="sequential",
        remove_unused_columns=False, disable_tqdm=True, seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    trainer = Trainer(model=model, args=training_args, train_dataset=PlanDataset(data, total * data.global_rows),
                      data_collator=pad_collator(tokenizer.pad_token_id), callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # the end-of-run metrics line
    result = trainer.train()
    if trainer.state.global_step != total:
        raise RuntimeError(f"Trainer ran {trainer.state.global_step} steps, not {total}")
    trainer.save_model()  # outside the timed window, as ours saves after its last step
    del trainer, model
    return {"seconds": times[total] - times[args.warmup], "mean_loss": result.training_loss,
            "optimizer": getattr(training_args.optim, "value", training_args.optim)}


def profile_ours(config, args) -> None:
    """cProfile of one more run of ours: where the time outside the model's forward/backward goes."""
    import cProfile
    import pstats

    shutil.rmtree(config.output, ignore_errors=True)
    profile_path = Path(config.output).parent / "ours.prof"
    cProfile.runctx("run_ours(config, args)", globals(), {"config": config, "args": args}, str(profile_path))
    stats = pstats.Stats(str(profile_path))
    print("\nprofile of one run of ours (whole run incl. start and final save), by total time:")
    stats.sort_stats("tottime").print_stats(15)
    print("our own code (training/, pretrain/), by cumulative time:")
    stats.sort_stats("cumulative").print_stats(r"(training|pretrain)/", 25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2, help="rows per micro-step")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5, help="steps before the clock starts")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both trainers")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--core", type=int, default=-1, help="pin the process to this CPU core (-1: do not)")
    parser.add_argument("--profile", action="store_true", help="then profile one more run of ours")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # a warning per save about the tied head otherwise
    torch.set_num_threads(args.threads)
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from data.shards import Shard
    from llm.loading import load_tokenizer
    from pretrain.tokenize import TokenizeStage
    from runner.run import run_stage

    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-train-"))
    model_dir = work / "model"
    params = build_model_folder(model_dir, args)
    tokenizer = load_tokenizer(str(model_dir))
    rows_per_step = args.batch_size * args.accumulation
    documents = write_corpus(work / "corpus.jsonl", tokenizer, args.warmup + args.steps, rows_per_step,
                             args.max_length)
    config = pretrain_config(work, model_dir, work / "corpus.jsonl", args, "ours")
    run_stage(TokenizeStage(config), Shard(0, 1))
    data = planned_rows(config)
    if data.total_steps != args.warmup + args.steps:
        raise RuntimeError(f"the plan has {data.total_steps} steps, not {args.warmup + args.steps}")
    step_tokens = sum(data.row_tokens(i) for i in range(args.warmup * rows_per_step,
                                                        data.total_steps * rows_per_step))
    print(f"Llama {params / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, vocab {len(tokenizer)}), "
          f"fp32, {torch.get_num_threads()} torch thread(s); {documents} documents -> {data.plan.rows} rows of "
          f"{args.max_length}; {args.batch_size} rows x {args.accumulation} accumulation per step; "
          f"{args.warmup} warm-up + {args.steps} timed steps ({step_tokens:,} tokens timed)")

    ours_runs, trainer_runs = [], []
    for round_ in range(args.rounds):
        if round_ % 2 == 0:  # alternate which goes first, so neither always runs on a warmer process
            trainer = run_trainer(work, model_dir, data, args)
            ours = run_ours(config, args)
        else:
            ours = run_ours(config, args)
            trainer = run_trainer(work, model_dir, data, args)
        trainer_runs.append(trainer)
        ours_runs.append(ours)
        print(f"round {round_ + 1}: ours {step_tokens / ours['seconds']:,.0f} tokens/s "
              f"(data {ours['data_fraction_mean']:.1%} of a step, max {ours['data_fraction_max']:.1%}), "
              f"Trainer {step_tokens / trainer['seconds']:,.0f} tokens/s; mean loss of the steps: ours "
              f"{ours['mean_loss']:.4f}, Trainer {trainer['mean_loss']:.4f}; threads now {torch.get_num_threads()}")

    median_ours = statistics.median(r["seconds"] for r in ours_runs)
    median_trainer = statistics.median(r["seconds"] for r in trainer_runs)
    best_ours = min(ours_runs, key=lambda r: r["seconds"])
    best_trainer = min(trainer_runs, key=lambda r: r["seconds"])
    ours_rate, trainer_rate = step_tokens / best_ours["seconds"], step_tokens / best_trainer["seconds"]
    print(f"\nbest of {args.rounds}: ours {ours_rate:,.0f} tokens/s ({best_ours['seconds'] / args.steps:.3f} s/step), "
          f"Trainer ({best_trainer['optimizer']}) {trainer_rate:,.0f} tokens/s "
          f"({best_trainer['seconds'] / args.steps:.3f} s/step); ratio ours/Trainer {ours_rate / trainer_rate:.2f}")
    paired = statistics.median(t["seconds"] / o["seconds"] for o, t in zip(ours_runs, trainer_runs))
    print(f"median of {args.rounds}: ours {step_tokens / median_ours:,.0f} tokens/s, Trainer "
          f"{step_tokens / median_trainer:,.0f} tokens/s; ratio {median_trainer / median_ours:.2f} "
          f"(median of the rounds' own ratios {paired:.2f})")
    print(f"ours: data loading {best_ours['data_fraction_mean']:.2%} of each step (max {best_ours['data_fraction_max']:.2%}); "
          f"the log's own tokens/s {best_ours['logged_tokens_per_s']:,.0f} (the step without its batch log line)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "parameters": params, "threads": args.threads, "timed_tokens": step_tokens, "ours": ours_runs,
            "trainer": trainer_runs, "ours_tokens_per_s": ours_rate, "trainer_tokens_per_s": trainer_rate,
            "ratio": ours_rate / trainer_rate, "median_ratio": median_trainer / median_ours,
            "median_round_ratio": paired}, indent=2))
    if args.profile:
        profile_ours(config, args)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
