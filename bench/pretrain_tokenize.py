"""The ``pretrain tokenize`` pass against ``datasets.Dataset.map(batched=True)``, per CPU core.

One process pinned to one core (``--core``), TOKENIZERS_PARALLELISM=false, the same fast
tokenizer (a byte-level BPE trained on the sample corpus, ``--vocab`` tokens) and the same rows:
a JSONL of JiuZhang3.0-style ``## Question ... ## Solution`` texts and one of plain texts, made
from the shipped sample corpus (each row numbered, so no two are equal). Timed, in one process,
alternating for ``--rounds`` rounds:

* ours: ``TokenizeStage`` through ``runner.run.run_stage`` (one shard): JSONL read, batched
  tokenization with offsets, the solution-only loss mask, the three memory-mapped arrays, the
  part file and the finish step (document index);
* ``datasets``: ``Dataset.from_json`` (JSON -> Arrow) then ``map(batched=True)`` calling the
  tokenizer with ``return_offsets_mapping=True`` (we need offsets for the loss mask: the
  like-for-like baseline), and the same map without offsets (the plain tokenization floor).

Tokens/s counts the tokenizer's tokens (the same for every path; ours also appends an EOS per
text, not counted). The tokenizer caches words, and the rows repeat the sample corpus's words,
so absolute rates are higher than on a real corpus; the ratio is what this measures.

    python bench/pretrain_tokenize.py [--rows 20000] [--rounds 2] [--vocab 8000] [--core 0]
"""
from __future__ import annotations

import argparse
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

ANSWER = "\n## Answer\n"


def sample_texts() -> list[str]:
    from data.samples import SAMPLE_CORPUS

    with open(SAMPLE_CORPUS, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


def question_solution(text: str, number: int) -> str:
    """A sample text (``# title``, question, ``## Answer``, answer) as a JiuZhang3.0 text."""
    question, _, answer = text.partition(ANSWER)
    question = question.lstrip("# ").strip()
    answer = answer.strip() or "See the question."
    return f"## Question\nProblem {number}. {question}\n\n## Solution\n{answer}\n"


def write_corpus(folder: Path, rows: int, qa_share: float = 0.5) -> list[Path]:
    """``rows`` rows: ``qa.jsonl`` (JiuZhang3.0 texts) and ``plain.jsonl`` (plain texts), cycling
    through the sample corpus; returns both paths."""
    texts = sample_texts()
    folder.mkdir(parents=True, exist_ok=True)
    qa_rows = round(rows * qa_share)
    paths = [folder / "qa.jsonl", folder / "plain.jsonl"]
    with open(paths[0], "w", encoding="utf-8") as qa, open(paths[1], "w", encoding="utf-8") as plain:
        for i in range(rows):
            text = texts[(i * 7) % len(texts)]
            if i < qa_rows:
                qa.write(json.dumps({"id": f"qa{i}", "text": question_solution(text, i)}) + "\n")
            else:
                plain.write(json.dumps({"id": f"plain{i}", "text": f"Note {i}.\n{text}"}) + "\n")
    return paths


def save_tokenizer(folder: Path, vocab: int) -> Path:
    from llm.tiny import train_tokenizer

    train_tokenizer(sample_texts(), vocab_size=vocab).save_pretrained(folder)
    return folder


def run_ours(work: Path, tokenizer: Path, paths: list[Path], batch_rows: int) -> tuple[float, dict]:
    from data.shards import Shard
    from pretrain.config import PretrainConfig
    from pretrain.tokenize import TokenizeStage
    from runner.run import run_stage

    out = work / "tok"
    shutil.rmtree(out, ignore_errors=True)
    config = PretrainConfig.model_validate({
        "model": str(tokenizer), "output": str(work / "unused"), "tokenized": str(out),
        "tokenize_batch_rows": batch_rows,
        "sources": [{"paths": [str(paths[0])], "name": "qa"}, {"paths": [str(paths[1])], "name": "plain"}],
    })
    stage = TokenizeStage(config)
    assert stage.tokenizer is not None  # loaded before the clock, as datasets' side gets its tokenizer loaded
    started = time.perf_counter()
    manifest = run_stage(stage, Shard(0, 1))
    seconds = time.perf_counter() - started
    if not manifest.get("complete"):
        raise RuntimeError(f"tokenize pass did not complete: {manifest}")
    return seconds, manifest


def run_datasets(work: Path, tokenizer, paths: list[Path], batch_rows: int, offsets: bool) -> tuple[float, float, int]:
    """(seconds to load the JSON into Arrow, seconds to map, tokens)."""
    import datasets
    import pyarrow.compute as pc

    datasets.disable_progress_bars()
    cache = work / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    dataset = datasets.Dataset.from_json([str(p) for p in paths], cache_dir=str(cache))
    loaded = time.perf_counter()

    def encode(batch):
        return tokenizer(batch["text"], add_special_tokens=True, return_offsets_mapping=offsets,
                         return_attention_mask=False)

    mapped = dataset.map(encode, batched=True, batch_size=batch_rows, remove_columns=dataset.column_names,
                         load_from_cache_file=False)
    done = time.perf_counter()
    tokens = int(pc.sum(pc.list_value_length(mapped.data.column("input_ids"))).as_py())
    del mapped, dataset
    return loaded - started, done - loaded, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--qa-share", type=float, default=0.5, help="share of JiuZhang3.0 question/solution rows")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch-rows", type=int, default=512, help="rows per tokenizer call, both sides")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--core", type=int, default=0, help="the one CPU core to run on (-1: do not pin)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})

    from llm.loading import load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-tokenize-"))
    paths = write_corpus(work / "corpus", args.rows, args.qa_share)
    tokenizer_dir = save_tokenizer(work / "tokenizer", args.vocab)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{args.rows} rows ({megabytes:.0f} MB of JSONL, {args.qa_share:.0%} question/solution), "
          f"vocab {len(tokenizer)}, {args.batch_rows} rows per call, "
          f"cores {sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}")

    best: dict[str, float] = {}
    tokens = None
    for round_ in range(args.rounds):
        ours_s, manifest = run_ours(work, tokenizer_dir, paths, args.batch_rows)
        load_s, map_s, map_tokens = run_datasets(work, tokenizer, paths, args.batch_rows, offsets=True)
        plain_load_s, plain_map_s, plain_tokens = run_datasets(work, tokenizer, paths, args.batch_rows, offsets=False)
        counts = manifest["counts"]
        if counts["tokens"] - counts["docs"] != map_tokens or map_tokens != plain_tokens:
            raise RuntimeError(f"token counts differ: ours {counts['tokens']} - {counts['docs']} EOS, "
                               f"datasets {map_tokens} / {plain_tokens}")
        tokens = map_tokens
        figures = {"ours": ours_s, "datasets_offsets_total": load_s + map_s, "datasets_offsets_map": map_s,
                   "datasets_plain_total": plain_load_s + plain_map_s, "datasets_plain_map": plain_map_s,
                   "datasets_load": min(load_s, plain_load_s)}
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in figures.items()))
        for key, value in figures.items():
            best[key] = min(value, best.get(key, float("inf")))

    rate = {key: tokens / seconds for key, seconds in best.items()}
    print(f"\n{tokens:,} tokens; best of {args.rounds}, tokens/s on one core:")
    rows = [("ours: TokenizeStage (read, tokenize + offsets, loss mask, arrays, index)", "ours"),
            ("datasets: from_json + map, offsets", "datasets_offsets_total"),
            ("datasets: map alone, offsets", "datasets_offsets_map"),
            ("datasets: from_json + map, no offsets", "datasets_plain_total"),
            ("datasets: map alone, no offsets", "datasets_plain_map")]
    for label, key in rows:
        print(f"  {label:<76} {best[key]:7.2f} s  {rate[key]:>12,.0f} tok/s  ours/this {rate['ours'] / rate[key]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "tokens": tokens, "vocab": len(tokenizer),
                                               "seconds": best, "tokens_per_s": rate}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
