"""``synth train`` on the tiny model, CPU: the loss falls, only target tokens are scored, packed
examples do not see each other, LoRA is merged exactly, two processes train the same run as
one, and a run killed after a checkpoint resumes to the same weights."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO_ROOT,
    accelerate_launch,
    assert_same_weights,
    kill_after_checkpoint_4,
    model_weights,
    read_lines,
    sample_texts,
    write_jsonl,
)

from data.errors import ConfigError, UserError
from runner.config import load_config
from synth.config import SynthTrainConfig, check_train_config
from synth.packing import (
    IGNORE,
    check_isolation,
    collate,
    pack,
    per_example_losses,
    read_sft_rows,
    tokenize_sft,
)
from synth.train import BATCH_LOG, TRAIN_LOG, SynthTrainStage, lr_factor, run_train

STAGE_PROMPT = ("Inspired by the math content below, create a grade school problem and solve it step by step.\n\n"
                "Math content:\n{text}\n\n## Problem\n")


def distill_export(folder: Path, count: int = 40) -> Path:
    """A distill output folder's SFT export, as distill.run._finish_run writes it."""
    raw, chat = [], []
    for i, text in enumerate(sample_texts(count)):
        prompt = STAGE_PROMPT.format(text=text[:240])
        problem = f"Ann has {i + 2} boxes with {i + 5} pens each. How many pens does she have?"
        solution = f"She has {i + 2} x {i + 5} = {(i + 2) * (i + 5)} pens. The answer is \\boxed{{{(i + 2) * (i + 5)}}}."
        target = f"{problem.strip()}\n\n## Solution\n{solution.strip()}\n"
        raw.append({"id": f"d{i}", "prompt": prompt, "completion": target})
        chat.append({"id": f"d{i}", "messages": [{"role": "user", "content": prompt},
                                                 {"role": "assistant", "content": target}]})
    write_jsonl(folder / "sft_raw.jsonl", raw)
    write_jsonl(folder / "sft_chat.jsonl", chat)
    return folder


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> Path:
    return distill_export(tmp_path_factory.mktemp("distill"))


def make_config(model, sft, output, **overrides) -> SynthTrainConfig:
    raw = {"model": str(model), "data": {"path": str(sft)}, "output": str(output), "max_length": 384,
           "epochs": 3, "learning_rate": 1e-2, "weight_decay": 0.0, "per_device_batch_size": 2,
           "gradient_accumulation_steps": 2, "save_steps": 4, "logging_steps": 1, "seed": 1}
    raw.update(overrides)
    return SynthTrainConfig.model_validate(raw)


def without_timestamp(manifest: dict) -> dict:
    return {key: value for key, value in manifest.items() if key != "updated_at"}


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "MATHSYNTH_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def reference(tiny_model, sft, tmp_path_factory) -> tuple[SynthTrainConfig, dict]:
    """One uninterrupted single-process run that several tests compare against."""
    config = make_config(tiny_model, sft, tmp_path_factory.mktemp("ref") / "out")
    return config, run_train(config)


# ---------------------------------------------------------------------------------------------


def test_loss_falls_and_the_result_is_a_normal_checkpoint_with_a_model_card(reference, sft):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, manifest = reference
    out = Path(config.output)
    log = read_lines(out / TRAIN_LOG)
    stats = manifest["stats"]
    assert stats["rows"] < stats["examples"] == 40  # packed
    assert len(log) == stats["steps"] == 3 * (stats["rows"] // 4)
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert all(row["tokens_per_s"] > 0 for row in log)

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("## Problem\n", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tokenizer)
    card = (out / "README.md").read_text()
    sha = manifest["inputs"][1]["sha256"]
    assert sha in card and str(sft / "sft_raw.jsonl") in card and "learning_rate: 0.01" in card
    assert manifest["complete"] and manifest["stats"]["examples"] == 40
    assert not (out / ".final-tmp").exists()
    saved_at = (out / "model.safetensors").stat().st_mtime_ns
    again = run_train(config)  # a finished run is a no-op (the runner only stamps the manifest's updated_at)
    assert without_timestamp(again) == without_timestamp(manifest)
    assert (out / "model.safetensors").stat().st_mtime_ns == saved_at
    assert SynthTrainStage(config).summary(manifest).startswith(f"{stats['steps']} steps on 40 examples")


def test_only_target_tokens_are_scored_raw_and_chat(tiny_model, sft):
    from llm.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    for fmt in ("raw", "chat"):
        rows = list(read_sft_rows(sft / f"sft_{fmt}.jsonl", fmt, limit=6))
        examples = [tokenize_sft(tokenizer, i, p, t, 384) for i, p, t in rows]
        packed = pack(examples, 1024)
        assert len(packed) < len(examples)  # several examples per row
        for row in packed:
            ends = list(row.starts[1:]) + [len(row.input_ids)]
            for start in row.starts:
                assert row.labels[start] == IGNORE  # never predicted from the previous example
            for example_id, start, end in zip(row.example_ids, row.starts, ends):
                target = next(t for i, _, t in rows if i == example_id)
                scored = [t for t in row.labels[start:end] if t != IGNORE]
                text = tokenizer.decode(scored)
                prompt_part = tokenizer.decode(row.input_ids[start:end][: end - start - len(scored)])
                assert all(t == IGNORE for t in row.labels[start:end - len(scored)])
                assert text.startswith(target) and text.endswith(tokenizer.eos_token)
                assert "Math content" in prompt_part and "Math content" not in text
                if fmt == "chat":
                    assert "<|im_end|>" in text and prompt_part.endswith("<|im_start|>assistant\n")
                assert row.position_ids[start:end] == tuple(range(end - start))


def test_packed_rows_give_the_same_per_example_losses_as_unpacked(tiny_model, sft):
    from llm.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    model = load_model(str(tiny_model), dtype="float32", device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():  # untrained weights are too uniform to show leaks: perturb them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    examples = [tokenize_sft(tokenizer, i, p, t, 384) for i, p, t in read_sft_rows(sft / "sft_raw.jsonl", "raw", 7)]
    packed_rows = pack(examples, 900)
    assert max(len(r.example_ids) for r in packed_rows) >= 3
    with torch.no_grad():
        packed = per_example_losses(model, collate(packed_rows, tokenizer.pad_token_id))
        # one example per row, padded to the longest: padding is isolated the same way
        single_rows = pack(examples, 900, packing=False)
        alone = per_example_losses(model, collate(single_rows, tokenizer.pad_token_id))
    by_id_packed = {row.example_ids[k]: loss for (b, k), loss in packed.items() for row in [packed_rows[b]]}
    by_id_alone = {single_rows[b].example_ids[k]: loss for (b, k), loss in alone.items()}
    assert by_id_packed.keys() == by_id_alone.keys() == {e.id for e in examples}
    for example_id, loss in by_id_alone.items():
        assert by_id_packed[example_id] == pytest.approx(loss, abs=1e-4)
    assert check_isolation(model, len(tokenizer)) < 1e-4

    # The control: continuous position ids (no restart) let examples see each other.
    leaky = collate(packed_rows, tokenizer.pad_token_id)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1]).expand_as(leaky["input_ids"]).clone()
    with torch.no_grad():
        leaked = per_example_losses(model, leaky)
    assert max(abs(leaked[key] - packed[key]) for key in packed) > 1e-3


def test_lora_saves_base_plus_delta_merged(tiny_model, sft, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_config(tiny_model, sft, tmp_path / "lora", epochs=1, learning_rate=2e-2,
                         lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    run_train(config)
    out = Path(config.output)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    assert not any("lora" in key for key in model_weights(out))
    ids = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = peft_model(ids).logits, merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the delta is not zero: training changed something


def write_config(config: SynthTrainConfig, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_accelerate_launch_two_processes_trains_the_same_run(reference, tmp_path):
    config, manifest = reference
    # the same global batch (4 rows): 1 row per process x 2 processes x 2 accumulation steps
    two = config.model_copy(update={"output": str(tmp_path / "two"), "per_device_batch_size": 1})
    done = accelerate_launch("cpu-2proc.yaml", "synth", write_config(two, tmp_path / "two.yaml"), subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert result["stats"]["processes"] == 2
    assert read_lines(tmp_path / "two" / BATCH_LOG) == read_lines(Path(config.output) / BATCH_LOG)
    assert result["stats"]["final_loss"] == pytest.approx(manifest["stats"]["final_loss"], abs=1e-4)
    assert_same_weights(tmp_path / "two", Path(config.output), atol=1e-4)


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_weights(reference, tmp_path):
    config, manifest = reference
    run = config.model_copy(update={"output": str(tmp_path / "run")})
    config_file = write_config(run, tmp_path / "run.yaml")
    command = [sys.executable, "-m", "synth", "train", "--config", str(config_file)]
    out = Path(run.output)
    killed_at = kill_after_checkpoint_4("synth", config_file, out, subprocess_env())
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    last_checkpoint = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*"))
    assert not list((out / "checkpoints").glob(".tmp-*")) or last_checkpoint >= 4  # a torn one is ignored
    assert 5 <= killed_at < manifest["stats"]["steps"]

    done = subprocess.run(command, check=False, env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "manifest.json").read_text())
    resumed = result["stats"]["resumed_from_step"]
    assert resumed == last_checkpoint
    log = read_lines(out / BATCH_LOG)
    reference_log = read_lines(Path(config.output) / BATCH_LOG)
    after_resume = log[killed_at:]  # what the rerun trained, from the checkpoint on
    assert after_resume[0]["step"] == resumed + 1
    assert after_resume == reference_log[resumed:]
    assert_same_weights(out, Path(config.output), atol=1e-6)


def test_schedules_and_config_errors(tiny_model, sft, tmp_path):
    cosine = make_config(tiny_model, sft, tmp_path / "x", schedule={"kind": "cosine", "warmup_ratio": 0.1})
    factors = [lr_factor(s, 100, cosine) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[-1] < 0.01
    wsd = make_config(tiny_model, sft, tmp_path / "x",
                      schedule={"kind": "wsd", "warmup_ratio": 0.03, "decay_start": 0.85, "min_lr_ratio": 0.1})
    factors = [lr_factor(s, 100, wsd) for s in range(100)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and set(factors[3:85]) == {1.0}
    assert factors[-1] == pytest.approx(0.1) and all(a > b for a, b in itertools.pairwise(factors[85:]))

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {tiny_model}\ndata: {{path: {sft}}}\noutput: x\nschedule: {{kind: wsd, warmup_ratio: 0.5, decay_start: 0.2}}\n")
    with pytest.raises(UserError, match=r"bad.yaml: schedule: decay_start \(0.2\) must not come before"):
        load_config(SynthTrainConfig, bad)
    bad.write_text(f"model: {tiny_model}\ndata: {{path: {sft}}}\noutput: x\nlerning_rate: 1\n")
    with pytest.raises(UserError, match="lerning_rate: unknown key"):
        load_config(SynthTrainConfig, bad)
    with pytest.raises(ConfigError, match="data.path: .*nothing not found"):
        check_train_config(make_config(tiny_model, tmp_path / "nothing", tmp_path / "x"))
    with pytest.raises(Exception, match="less than one global batch"):
        run_train(make_config(tiny_model, sft, tmp_path / "y", data={"path": str(sft), "limit": 3}))


def test_a_malformed_sft_row_is_refused_before_anything_is_written(tiny_model, tmp_path):
    bad = write_jsonl(tmp_path / "sft.jsonl", [{"id": "a", "prompt": "p", "completion": "c"}, {"id": "b", "prompt": "p"}])
    with pytest.raises(UserError) as failure:
        run_train(make_config(tiny_model, bad, tmp_path / "out"))
    assert str(failure.value).startswith(f"{bad}:2: ") and "\n" not in str(failure.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_vllm_generates_from_the_trained_checkpoint(reference):
    pytest.importorskip("vllm")
    from llm.config import VllmEngineConfig
    from llm.factory import make_engine
    from llm.types import GenerationRequest, SamplingParams

    config, _ = reference
    prompt = STAGE_PROMPT.format(text="A triangle has sides 3, 4 and 5.")
    engine_config = VllmEngineConfig(model=config.output, dtype="float32", max_model_len=512, enforce_eager=True)
    with make_engine(engine_config) as engine:
        result = next(engine.generate([GenerationRequest(id="p", sampling=SamplingParams(max_tokens=40, temperature=0.0),
                                                         prompt=prompt)]))
    assert result.completions[0].num_tokens > 0


def test_gradient_checkpointing_trains_the_same_weights(reference, tmp_path):
    config, _ = reference
    checkpointed = config.model_copy(update={"output": str(tmp_path / "gc"), "gradient_checkpointing": True})
    run_train(checkpointed)
    assert_same_weights(tmp_path / "gc", Path(config.output), atol=1e-5)


def test_the_shipped_example_config_is_valid():
    config = load_config(SynthTrainConfig, REPO_ROOT / "configs" / "synth-train-example.yaml")
    assert config.learning_rate == 1e-5 and config.packing and config.lora is None
