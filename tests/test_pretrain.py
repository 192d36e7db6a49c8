"""``mathsynth pretrain``: the tokenize pass, the training order and mixture, loss masks,
packing, resume after kill -9, several processes, and the checkpoint it leaves."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO_ROOT,
    accelerate_launch,
    assert_same_weights,
    kill_after_checkpoint_4,
    kill_when_written,
    read_lines,
    sample_texts,
    write_jsonl,
)

from data.errors import InputError, UserError
from data.shards import Shard
from pretrain.config import PretrainConfig
from pretrain.examples import solution_start
from pretrain.plan import SFT_PHASE, PlannedRows, TokenArrays, build_plan
from pretrain.tokenize import INDEX_FILE, TokenizeStage, array_path
from pretrain.train import PretrainStage, run_pretrain
from runner.config import load_config
from runner.run import run_stage
from training.loop import BATCH_LOG
from training.rows import IGNORE, collate, per_example_losses
from training.stage import TRAIN_LOG

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "MATHSYNTH_LOG_LEVEL": "WARNING"}


def jiuzhang_rows(count: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + count):
        question = f"Ann has {i + 2} boxes with {i + 5} pens each. How many pens does she have?"
        solution = f"She has {i + 2} x {i + 5} = {(i + 2) * (i + 5)} pens. The answer is \\boxed{{{(i + 2) * (i + 5)}}}."
        rows.append({"id": f"q{i}", "text": f"## Question\n{question}\n\n## Solution\n{solution}\n"})
    return rows


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("datasets")
    return {
        "jiuzhang": write_jsonl(folder / "jiuzhang.jsonl", jiuzhang_rows(60)),
        "plain": write_jsonl(folder / "plain.jsonl", [{"text": t[:1500]} for t in sample_texts(40)]),
        "sft": write_jsonl(folder / "sft.jsonl", [
            {"prompt": f"## Question\nWhat is {i} + {i + 1}?\n\n## Solution\n",
             "completion": f"{i} + {i + 1} = {2 * i + 1}. The answer is \\boxed{{{2 * i + 1}}}."} for i in range(30)]),
        "chat": write_jsonl(folder / "chat.jsonl", [
            {"messages": [{"role": "user", "content": f"What is {i} times 3?"},
                          {"role": "assistant", "content": f"{i} x 3 = {3 * i}. The answer is \\boxed{{{3 * i}}}."}]}
            for i in range(20)]),
    }


def make_config(model, datasets, tmp: Path, name: str = "run", **overrides) -> PretrainConfig:
    raw = {"model": str(model), "output": str(tmp / name / "model"), "tokenized": str(tmp / name / "tokens"),
           "max_length": 256, "per_device_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 3e-3,
           "schedule": {"kind": "wsd", "warmup_ratio": 0.03, "decay_start": 0.85, "min_lr_ratio": 0.1},
           "save_steps": 4, "logging_steps": 1, "seed": 3}
    if "sources" not in overrides:
        raw["sources"] = [{"paths": str(datasets["jiuzhang"]), "name": "jiuzhang", "weight": 2},
                          {"paths": str(datasets["plain"]), "name": "plain", "weight": 0.5},
                          {"paths": str(datasets["sft"]), "name": "sft"}]
    raw.update(overrides)
    return PretrainConfig.model_validate(raw)


def write_config(config: PretrainConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def tokenize(config: PretrainConfig, shard: Shard = Shard(0, 1)) -> dict:
    return run_stage(TokenizeStage(config), shard)


def planned_rows(config: PretrainConfig) -> PlannedRows:
    tokenize(config)
    return PretrainStage(config).load_data(world=1)


def documents(folder: Path) -> list[tuple]:
    """Every document of a tokenize output as (source, file, line, kind, tokens, loss), whatever
    the shard layout that wrote it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    arrays = TokenArrays(folder, manifest["num_shards"])
    out = []
    for doc in range(len(arrays.index)):
        tokens, loss = arrays.segment(doc, 0, int(arrays.index[doc, 4]))
        source, file, line, _, _, kind, _ = arrays.index[doc].tolist()
        out.append((source, file, line, kind, tokens.tobytes(), loss.tobytes()))
    return out


@pytest.fixture(scope="module")
def reference(tiny_model, datasets, tmp_path_factory) -> tuple[PretrainConfig, dict]:
    """One uninterrupted single-process run that several tests compare against."""
    config = make_config(tiny_model, datasets, tmp_path_factory.mktemp("ref"))
    tokenize(config)
    return config, run_pretrain(config)


# ---------------------------------------------------------------------------------------------
# Loss masks: the labels themselves


def test_labels_cover_the_solution_of_a_jiuzhang_text_every_token_of_plain_text_and_the_completion_of_sft(
        tiny_model, datasets, tmp_path):
    from llm.loading import load_tokenizer

    config = make_config(tiny_model, datasets, tmp_path, packing=False, shuffle=False,
                         sources=[{"paths": str(datasets[k]), "name": k} for k in ("jiuzhang", "plain", "sft", "chat")]
                         + [{"paths": str(datasets["jiuzhang"]), "name": "jiuzhang-all", "loss": "all", "limit": 3}])
    data = planned_rows(config)
    tokenizer = load_tokenizer(str(tiny_model))
    by_source: dict[int, list] = {}
    index = data.arrays.index
    for r in range(data.plan.rows):
        doc = int(data.plan.seg_doc[data.plan.row_ptr[r]])
        by_source.setdefault(int(index[doc, 0]), []).append(data.row(r))

    def scored(row) -> str:
        labels = np.asarray(row.labels)
        return tokenizer.decode([int(t) for t in labels[labels != IGNORE]])

    def unscored(row) -> str:
        labels, ids = np.asarray(row.labels), np.asarray(row.input_ids)
        return tokenizer.decode([int(t) for t in ids[labels == IGNORE]])

    eos = tokenizer.eos_token
    jiuzhang = jiuzhang_rows(60)
    for row in by_source[0]:
        question, solution = jiuzhang[int(index[int(row.example_ids[0].split("@")[0]), 2]) - 1]["text"].split("## Solution\n")
        assert scored(row) == solution + eos  # the question, its header and the solution header carry no loss
        assert unscored(row) == question + "## Solution\n"
    for row in by_source[1]:  # plain text: every token but the first (predicted from nothing)
        assert (np.asarray(row.labels)[1:] == np.asarray(row.input_ids)[1:]).all() and row.labels[0] == IGNORE
    for row in by_source[2]:
        assert scored(row).startswith(tuple(f"{i} + {i + 1} = " for i in range(30))) and scored(row).endswith(eos)
        assert "## Question" in unscored(row) and "=" not in unscored(row)
    for row in by_source[3]:  # chat: the assistant's turn only, as its template renders it
        assert "times 3" not in scored(row) and " x 3 = " in scored(row) and "times 3" in unscored(row)
    for row in by_source[4]:  # loss: all on a JiuZhang text
        assert "Question\nAnn has" in scored(row) and (np.asarray(row.labels)[1:] != IGNORE).all()
    assert [len(by_source[k]) for k in (0, 2, 3, 4)] == [60, 30, 20, 3]
    assert len(by_source[1]) > 40  # a text longer than a row goes on in the next one


@pytest.mark.parametrize("header", ["## Solution", "## Code Solution", "## Step-by-Step Solution"])
def test_every_solution_header_of_the_released_jiuzhang_data_starts_the_scored_part(header):
    text = f"## Question\nWhat is 2 + 2?\n\n{header}\n2 + 2 = 4.\n"
    assert text[solution_start(text):] == "2 + 2 = 4.\n"
    assert solution_start("What is 2 + 2?\n\n## Solution\n4") is None  # not a JiuZhang text: all tokens


def test_a_row_that_does_not_fit_its_source_is_one_line_naming_file_and_line(tiny_model, datasets, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [jiuzhang_rows(1)[0], {"text": 5}, {"text": "ok"}])
    config = make_config(tiny_model, datasets, tmp_path, sources=[{"paths": str(bad)}])
    with pytest.raises(UserError) as failure:
        tokenize(config)
    assert str(failure.value).startswith(f"{bad}:2: 'text' must be a non-empty string") and "\n" not in str(failure.value)
    assert not (Path(config.tokenized) / INDEX_FILE).exists()

    wrong_loss = make_config(tiny_model, datasets, tmp_path, "w", sources=[{"paths": str(datasets["plain"]), "loss": "solution"}])
    with pytest.raises(UserError, match=rf"^{datasets['plain']}:1: loss: solution needs a '## Question' text"):
        tokenize(wrong_loss)

    skipping = make_config(tiny_model, datasets, tmp_path, "s", sources=[{"paths": str(bad), "policy": "skip"}])
    manifest = tokenize(skipping)
    assert manifest["complete"] and manifest["counts"]["docs"] == 2 and manifest["counts"]["skipped"] == 1


# ---------------------------------------------------------------------------------------------
# Order, mixture, packing


def test_every_pretraining_row_comes_before_any_sft_row_and_weights_give_their_proportions(tiny_model, tmp_path):
    folder = tmp_path / "data"
    a = write_jsonl(folder / "a.jsonl", jiuzhang_rows(200))
    b = write_jsonl(folder / "b.jsonl", jiuzhang_rows(200, offset=1000))
    c = write_jsonl(folder / "c.jsonl", [{"text": t[:300]} for t in sample_texts(200)])
    sft = write_jsonl(folder / "sft.jsonl", [{"prompt": f"Q{i}?", "completion": f"A{i}."} for i in range(100)])
    config = make_config(tiny_model, {}, tmp_path, sources=[
        {"paths": str(a), "name": "a", "weight": 3}, {"paths": str(b), "name": "b", "weight": 1},
        {"paths": str(c), "name": "c", "weight": 0.5}, {"paths": str(sft), "name": "sft", "weight": 1.5}])
    data = planned_rows(config)
    plan, index = data.plan, data.arrays.index
    phases = plan.row_phase.tolist()
    assert phases == sorted(phases) and phases.count(SFT_PHASE) > 0  # one switch, pre-training first
    trained = {s["name"]: s["documents_trained"] for s in data.stats["sources"]}
    assert trained["a"] == 600 and trained["b"] == 200
    assert 80 <= trained["c"] <= 120 and 130 <= trained["sft"] <= 170  # half of 200; 1.5 x 100
    # every copy is in the plan once: documents of source a appear 3 times among the segments
    starts = plan.seg_start == 0
    per_source = np.bincount(index[plan.seg_doc[starts], 0], minlength=4)
    assert per_source.tolist() == [trained[k] for k in ("a", "b", "c", "sft")]
    # the pre-training rows hold sources a, b, c shuffled together; the SFT rows only sft
    phase_of_segment = np.repeat(plan.row_phase, np.diff(plan.row_ptr))
    assert set(index[plan.seg_doc[phase_of_segment == 0], 0].tolist()) == {0, 1, 2}
    assert set(index[plan.seg_doc[phase_of_segment == 1], 0].tolist()) == {3}
    first_rows = index[plan.seg_doc[plan.row_ptr[:20]], 0]
    assert len(set(first_rows.tolist())) > 1  # shuffled, not source after source
    # the same config gives the same plan; another seed another order
    again = build_plan(index, config)
    assert (again.seg_doc == plan.seg_doc).all()
    other = build_plan(index, config.model_copy(update={"seed": 4}))
    assert not np.array_equal(other.seg_doc, plan.seg_doc)


def test_sft_documents_whose_prompt_fills_the_row_are_counted(tiny_model, tmp_path):
    long_prompt = "Read this carefully. " * 200  # far more than 64 tokens
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": long_prompt, "completion": "The answer is 4."},
                                               {"prompt": "Short?", "completion": "The answer is 5."}])
    config = make_config(tiny_model, {}, tmp_path, max_length=64, per_device_batch_size=1, gradient_accumulation_steps=1,
                         sources=[{"paths": str(sft), "name": "sft"}])
    assert planned_rows(config).stats["sft_documents_without_loss"] == 1


def test_packed_rows_give_the_same_per_document_losses_as_unpacked(tiny_model, datasets, tmp_path):
    from llm.loading import load_model

    packed = planned_rows(make_config(tiny_model, datasets, tmp_path, "p", max_length=512))
    alone = planned_rows(make_config(tiny_model, datasets, tmp_path, "u", max_length=512, packing=False))
    model = load_model(str(tiny_model), dtype="float32", device="cpu")

    def losses(data: PlannedRows) -> dict[str, float]:
        out = {}
        for r in range(data.plan.rows):
            row = data.row(r)
            for (_, k), value in per_example_losses(model, collate([row], 0)).items():
                out[row.example_ids[k]] = value
        return out

    packed_losses, alone_losses = losses(packed), losses(alone)
    assert packed.plan.rows < alone.plan.rows  # several documents per row
    common = [name for name in alone_losses if name in packed_losses and name.endswith("@0")]
    whole = [name for name in common
             if sum(1 for other in packed_losses if other.split("@")[0] == name.split("@")[0]) == 1]
    assert len(whole) > 50
    for name in whole:
        assert packed_losses[name] == pytest.approx(alone_losses[name], abs=1e-4), name


# ---------------------------------------------------------------------------------------------
# The tokenize pass: shards, kill -9


def big_corpus(folder: Path, rows: int = 4000) -> Path:
    texts = sample_texts(200)
    return write_jsonl(folder / "big.jsonl",
                       [jiuzhang_rows(1, offset=i)[0] if i % 2 else {"text": texts[i % 200][: 200 + i % 700]}
                        for i in range(rows)])


def test_two_tokenize_shards_as_two_processes_equal_one_shard(tiny_model, datasets, tmp_path):
    corpus = big_corpus(tmp_path, 1200)
    sources = [{"paths": str(corpus), "name": "big"}, {"paths": str(datasets["sft"]), "name": "sft"}]
    one = make_config(tiny_model, datasets, tmp_path, "one", sources=sources, tokenize_batch_rows=100)
    two = make_config(tiny_model, datasets, tmp_path, "two", sources=sources, tokenize_batch_rows=100)
    tokenize(one)
    config_file = write_config(two, tmp_path / "two.yaml")
    processes = [subprocess.Popen([sys.executable, "-m", "pretrain", "tokenize", "--config", str(config_file),
                                   "--shard", f"{k}/2"], env=ENV, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
                 for k in range(2)]
    for process in processes:
        assert process.wait(timeout=180) == 0, process.stderr.read()[-2000:]
    manifest = json.loads((Path(two.tokenized) / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 2
    assert all(array_path(Path(two.tokenized), "tokens", Shard(k, 2)).stat().st_size > 0 for k in range(2))
    assert documents(Path(two.tokenized)) == documents(Path(one.tokenized))
    # the same index gives the same training plan
    plan_one = build_plan(np.load(Path(one.tokenized) / INDEX_FILE), one)
    plan_two = build_plan(np.load(Path(two.tokenized) / INDEX_FILE), two)
    assert (plan_one.seg_doc == plan_two.seg_doc).all() and (plan_one.seg_length == plan_two.seg_length).all()


def test_tokenize_killed_mid_pass_then_rerun_holds_every_document_once(tiny_model, datasets, tmp_path):
    corpus = big_corpus(tmp_path, 4000)
    sources = [{"paths": str(corpus), "name": "big"}]
    reference = make_config(tiny_model, datasets, tmp_path, "ref", sources=sources, tokenize_batch_rows=50)
    tokenize(reference)
    run = make_config(tiny_model, datasets, tmp_path, "run", sources=sources, tokenize_batch_rows=50)
    command = [sys.executable, "-m", "pretrain", "tokenize", "--config", str(write_config(run, tmp_path / "run.yaml"))]
    part = Path(run.tokenized) / "part-00000-of-00001.jsonl"
    written = kill_when_written(command, part, at_least=10, env=ENV)
    assert 10 <= written < 80
    assert not json.loads((Path(run.tokenized) / "manifest.json").read_text())["complete"]
    # a rerun with another chunk size goes on from the first row not recorded
    done = subprocess.run([*command, "--set", "tokenize_batch_rows=70"], env=ENV, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert documents(Path(run.tokenized)) == documents(Path(reference.tokenized))
    records = read_lines(part)
    assert sum(r["rows"] for r in records) == 4000 and len({r["first_row"] for r in records}) == len(records)


# ---------------------------------------------------------------------------------------------
# Training


def test_training_loss_falls_and_leaves_a_checkpoint_with_a_model_card(reference):
    from transformers import AutoModelForCausalLM

    config, manifest = reference
    out = Path(config.output)
    assert manifest["complete"] and manifest["stage"] == "pretrain"
    log = read_lines(out / TRAIN_LOG)
    first, last = np.mean([r["loss"] for r in log[:4]]), np.mean([r["loss"] for r in log[-4:]])
    assert last < first - 0.5, (first, last)
    assert all(r["tokens_per_s"] > 0 and 0 <= r["data_fraction"] < 1 for r in log)
    stats = manifest["stats"]
    assert stats["phases"]["pretrain"]["rows"] > 0 and stats["phases"]["sft"]["rows"] > 0
    # the order trained: every pre-training row before any SFT row
    steps = read_lines(out / BATCH_LOG)
    data = PretrainStage(config).load_data(world=1)
    phases = [int(data.plan.row_phase[r]) for step in steps for r in step["rows"]]
    assert phases == sorted(phases) and len(set(phases)) == 2
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.num_parameters() > 0
    card = (out / "README.md").read_text()
    assert "| `jiuzhang` | 2.0 | 60 | 120 |" in card and "tokens trained" in card
    assert not (out / "checkpoints").exists() or list((out / "checkpoints").glob("step-*"))


@pytest.mark.slow
def test_the_trained_model_generates_through_vllm_and_eval_runs_on_it(reference, tmp_path):
    pytest.importorskip("vllm")
    config, _ = reference
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "eval", "run", "--model", config.output, "--engine", "vllm",
         "--benchmarks", "gsm8k", "--setting", "nl", "--limit", "3", "--output", str(out),
         "--set", "engine.dtype=float32", "--set", "engine.max_model_len=512", "--set", "engine.enforce_eager=true",
         "--set", "sampling.max_tokens=24"], capture_output=True, text=True, env=ENV, cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for part in sorted(out.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    assert len(rows) == 3 and all(row["completion"] for row in rows)
    assert json.loads((out / "report.json").read_text())["model"] == config.output


def test_training_killed_after_a_checkpoint_resumes_to_the_same_batches_and_weights(reference, tmp_path):
    config, manifest = reference
    run = config.model_copy(update={"output": str(tmp_path / "run")})  # the same tokenized folder
    config_file = write_config(run, tmp_path / "run.yaml")
    out = Path(run.output)
    killed_at = kill_after_checkpoint_4("pretrain", config_file, out, ENV)
    assert 5 <= killed_at < manifest["stats"]["steps"]

    done = subprocess.run([sys.executable, "-m", "pretrain", "train", "--config", str(config_file)], env=ENV,
                          capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "manifest.json").read_text())
    resumed = result["stats"]["resumed_from_step"]
    assert resumed == 4
    after_resume = read_lines(out / BATCH_LOG)[killed_at:]
    assert after_resume[0]["step"] == resumed + 1  # the next batch is the one the reference trained
    assert after_resume == read_lines(Path(config.output) / BATCH_LOG)[resumed:]
    assert_same_weights(out, Path(config.output), atol=1e-6)


@pytest.mark.parametrize("launch, distributed", [("cpu-2proc.yaml", "MULTI_CPU"), ("fsdp-cpu-2proc.yaml", "FSDP")])
def test_accelerate_launch_two_processes_trains_the_same_run(reference, tmp_path, launch, distributed):
    """Data parallel and FSDP2 (FULL_SHARD, sharded checkpoints) over 2 gloo processes."""
    config, manifest = reference
    # the same global batch (4 rows): 1 row per process x 2 processes x 2 accumulation steps
    two = config.model_copy(update={"output": str(tmp_path / "two"), "per_device_batch_size": 1})
    done = accelerate_launch(launch, "pretrain", write_config(two, tmp_path / "two.yaml"), ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert result["stats"]["processes"] == 2 and result["stats"]["distributed"] == distributed
    assert read_lines(tmp_path / "two" / BATCH_LOG) == read_lines(Path(config.output) / BATCH_LOG)
    assert result["stats"]["final_loss"] == pytest.approx(manifest["stats"]["final_loss"], abs=1e-4)
    assert_same_weights(tmp_path / "two", Path(config.output), atol=1e-4)


def test_tensorboard_logs_the_run_when_asked(tiny_model, datasets, tmp_path):
    config = make_config(tiny_model, datasets, tmp_path, report_to="tensorboard", save_steps=1000,
                         sources=[{"paths": str(datasets["jiuzhang"])}])
    tokenize(config)
    run_pretrain(config)
    events = list((Path(config.output) / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Config and inputs


def test_training_needs_a_complete_tokenize_pass_of_the_same_sources(tiny_model, datasets, tmp_path):
    config = make_config(tiny_model, datasets, tmp_path)
    with pytest.raises(InputError, match=r"tokenized: .* run `mathsynth pretrain tokenize` first"):
        run_stage(PretrainStage(config), Shard(0, 1))
    tokenize(config)
    changed = config.model_copy(update={"sources": config.sources[:2]})
    with pytest.raises(InputError, match="tokenized from other sources or another tokenizer"):
        PretrainStage(changed).check()
    # a weight, a phase or a learning rate is the trainer's: no new tokenization
    reweighted = config.model_copy(update={"sources": [s.model_copy(update={"weight": 4.0}) for s in config.sources],
                                           "learning_rate": 1e-4})
    PretrainStage(reweighted).check()

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {tiny_model}\noutput: x\ntokenized: y\nsources: [{{paths: a.jsonl, wieght: 2}}]\n")
    with pytest.raises(UserError, match=r"sources.0.wieght: unknown key"):
        load_config(PretrainConfig, bad)
    bad.write_text(f"model: {tiny_model}\noutput: x\ntokenized: y\nsources: [{{paths: a.jsonl}}, {{paths: a.jsonl}}]\n")
    with pytest.raises(UserError, match="appears twice"):
        load_config(PretrainConfig, bad)


def test_the_shipped_example_config_is_valid_and_holds_the_paper_recipe():
    config = load_config(PretrainConfig, REPO_ROOT / "configs" / "pretrain-example.yaml")
    schedule = config.schedule
    assert (schedule.kind, schedule.warmup_ratio, schedule.decay_start, schedule.min_lr_ratio) == ("wsd", 0.03, 0.85, 0.1)
    assert config.learning_rate == 1e-5 and config.weight_decay == 0.0 and config.max_length == 2048
