"""``mathsynth dpo`` (TRL's DPOTrainer) on the tiny model, CPU, with synthetic pairs (chosen: a
right solution, rejected: a wrong one): the loss falls and the reward accuracy rises, the result
reloads in transformers and generates through vLLM, LoRA is merged exactly, two processes under
``accelerate launch`` train, a run killed after a checkpoint resumes to the same end, and a bad
pair is one line naming file:line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    REPO_ROOT,
    assert_same_weights,
    free_port,
    model_weights,
    read_lines,
    write_jsonl,
)

from data.errors import UserError
from runner.config import load_config
from training.dpo import DpoConfig, DpoStage, read_pairs, run_dpo
from training.stage import TRAIN_LOG

PAIRS = 32


def pair_rows(count: int = PAIRS) -> list[dict]:
    """rft's pair rows: the same problem's correct and incorrect solution, with the grader's reason."""
    rows = []
    for i in range(count):
        a, b = i + 2, i + 5
        rows.append({"id": f"pair-{i}", "problem_id": f"q{i}", "prompt": f"Question: what is {a} + {b}?\nAnswer:",
                     "chosen": f" {a} + {b} = {a + b}. The answer is {a + b}.",
                     "rejected": f" I think it is {a * b + 7}, maybe.", "rejected_reason": "wrong_answer"})
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """An rft-like folder: two pairs files."""
    folder = tmp_path_factory.mktemp("rft")
    rows = pair_rows()
    write_jsonl(folder / "pairs-00000-of-00002.jsonl", rows[:20])
    write_jsonl(folder / "pairs-00001-of-00002.jsonl", rows[20:])
    write_jsonl(folder / "part-00000-of-00001.jsonl", [{"id": "sft-row", "text": "not a pair"}])  # pairs-* win
    return folder


def make_config(model, pairs, output, **overrides) -> DpoConfig:
    raw = {"model": str(model), "data": {"paths": [str(pairs)]}, "output": str(output), "learning_rate": 1e-3,
           "epochs": 2, "per_device_batch_size": 4, "max_length": 128, "save_steps": 4, "logging_steps": 1, "seed": 1}
    raw.update(overrides)
    return DpoConfig.model_validate(raw)


def write_config(config: DpoConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "MATHSYNTH_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def reference(tiny_model, pairs, tmp_path_factory) -> tuple[DpoConfig, dict]:
    """One uninterrupted single-process full fine-tuning run that several tests compare against."""
    config = make_config(tiny_model, pairs, tmp_path_factory.mktemp("ref") / "out")
    return config, run_dpo(config)[1]


# ---------------------------------------------------------------------------------------------


def test_loss_falls_reward_accuracy_rises_and_the_result_is_a_normal_checkpoint(reference, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, manifest = reference
    out = Path(config.output)
    stats = manifest["stats"]
    assert manifest["complete"] and manifest["stage"] == "dpo"
    assert stats["pairs"] == stats["pairs_trained"] == PAIRS and stats["steps"] == 2 * PAIRS // 4 and stats["processes"] == 1
    log = read_lines(out / TRAIN_LOG)
    assert [row["step"] for row in log] == list(range(1, stats["steps"] + 1))
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start: log 2
    assert stats["final_loss"] == log[-1]["loss"] < 0.5 * stats["first_loss"]
    assert stats["first_reward_accuracy"] == 0.0 and stats["final_reward_accuracy"] >= 0.9
    assert stats["final_reward_margin"] > 1.0 and stats["train_seconds"] > 0
    assert len(manifest["inputs"]) == 3  # the model and the two pairs files, by sha256

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Question: what is 3 + 4?\nAnswer:", return_tensors="pt").input_ids
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    base = model_weights(Path(tiny_model))
    assert any((model_weights(out)[key] - base[key]).abs().max() > 1e-3 for key in base)
    card = (out / "README.md").read_text()
    assert "TRL DPOTrainer, full fine-tuning" in card and "pairs: 32" in card
    assert not (out / ".final-tmp").exists() and (out / "checkpoints" / f"checkpoint-{stats['steps']}").is_dir()

    saved_at = (out / "model.safetensors").stat().st_mtime_ns
    again = run_dpo(config)[1]  # a finished run is a no-op
    assert {k: v for k, v in again.items() if k != "updated_at"} == {k: v for k, v in manifest.items() if k != "updated_at"}
    assert (out / "model.safetensors").stat().st_mtime_ns == saved_at
    assert DpoStage(config).summary(manifest).startswith(f"{stats['steps']} steps on 32 pairs (1 processes), loss 0.6931 -> ")


def test_lora_saves_the_adapter_and_the_merged_model(tiny_model, pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_config(tiny_model, pairs, tmp_path / "lora", epochs=1, learning_rate=5e-3, keep_checkpoints=0,
                         lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    stats = run_dpo(config)[1]["stats"]
    assert stats["final_loss"] < stats["first_loss"] and not (tmp_path / "lora" / "checkpoints").exists()
    out = Path(config.output)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    assert not any("lora" in key for key in model_weights(out))
    ids = torch.randint(0, 500, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = peft_model(ids).logits, merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert (got - plain).abs().max() > 1e-3


STALLING = """
import sys, time
import torch
from runner.cli import main_for
from training import dpo_cli
real_step, calls = torch.optim.AdamW.step, []
def stalling_step(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 6:
        time.sleep(300)
    return real_step(self, *args, **kwargs)
torch.optim.AdamW.step = stalling_step
sys.exit(main_for("dpo", dpo_cli, ["--config", sys.argv[1]]))
"""


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_end(reference, tmp_path):
    config, manifest = reference
    run = config.model_copy(update={"output": str(tmp_path / "run")})
    config_file = write_config(run, tmp_path / "run.yaml")
    out = Path(run.output)
    process = subprocess.Popen([sys.executable, "-c", STALLING, str(config_file)], env=subprocess_env(), cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # step 4 saved, step 5 trained (and to be lost)
        if (out / "checkpoints" / "checkpoint-4" / "trainer_state.json").is_file() and (out / TRAIN_LOG).exists() \
                and len((out / TRAIN_LOG).read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    (out / "checkpoints" / "checkpoint-6").mkdir()  # a torn checkpoint (no trainer_state.json) is skipped

    done = subprocess.run([sys.executable, "-m", "training.dpo_cli", "--config", str(config_file)], check=False,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"{out}: {manifest['stats']['steps']} steps on 32 pairs")  # stdout: the outcome
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["resumed_from_step"] == 4 and stats["steps"] == manifest["stats"]["steps"]
    assert [row["step"] for row in read_lines(out / TRAIN_LOG)] == list(range(1, stats["steps"] + 1))  # none twice
    assert stats["final_loss"] == pytest.approx(manifest["stats"]["final_loss"], abs=1e-4)
    assert_same_weights(out, Path(config.output), atol=1e-4)


def test_accelerate_launch_two_processes(reference, tmp_path):
    config, manifest = reference
    # the same global batch (4 pairs): 2 per process x 2 processes
    two = config.model_copy(update={"output": str(tmp_path / "two"), "per_device_batch_size": 2})
    launch = [sys.executable, "-m", "accelerate.commands.launch",
              "--config_file", str(REPO_ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"),
              "--main_process_port", str(free_port()), "-m", "training.dpo_cli",
              "--config", str(write_config(two, tmp_path / "two.yaml"))]
    done = subprocess.run(launch, check=False, env=subprocess_env(), capture_output=True, text=True, timeout=180,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "two" / "manifest.json").read_text())
    stats = result["stats"]
    assert result["complete"] and stats["processes"] == 2 and stats["steps"] == manifest["stats"]["steps"]
    assert stats["final_loss"] < 0.5 * stats["first_loss"] and stats["final_reward_accuracy"] >= 0.9
    assert (tmp_path / "two" / "model.safetensors").is_file()


def test_bad_pairs_are_one_line_errors_before_anything_is_written(tiny_model, pairs, tmp_path):
    rows = pair_rows(3)
    del rows[1]["rejected"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as failure:
        run_dpo(make_config(tiny_model, bad, tmp_path / "out"))
    assert str(failure.value) == f"{bad}:2: missing or empty rejected (a pair needs prompt, chosen, rejected)"
    assert not (tmp_path / "out").exists()

    write_jsonl(tmp_path / "torn.jsonl", [pair_rows(1)[0], '{"prompt": "x", "cho'])
    with pytest.raises(UserError, match=r"torn.jsonl:2: malformed JSON"):
        read_pairs([str(tmp_path / "torn.jsonl")])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match=r"^data.paths: no preference pairs in .*empty.jsonl$"):
        read_pairs([str(tmp_path / "empty.jsonl")])
    with pytest.raises(UserError, match=r"^data.paths.1: .*nowhere not found$"):
        read_pairs([str(pairs), str(tmp_path / "nowhere")])
    assert len(read_pairs([str(pairs)])) == PAIRS and len(read_pairs([str(pairs)], limit=5)) == 5

    # the command line: one line on stderr, exit 2, nothing written
    config_file = write_config(make_config(tiny_model, bad, tmp_path / "cli-out"), tmp_path / "c.yaml")
    done = subprocess.run([sys.executable, "-c", "import sys; from runner.cli import main_for; "
                           "from training import dpo_cli; sys.exit(main_for('dpo', dpo_cli, sys.argv[1:]))",
                           "--config", str(config_file)], env=subprocess_env(), capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"mathsynth dpo: error: {bad}:2: missing or empty rejected (a pair needs prompt, chosen, rejected)"]
    assert not (tmp_path / "cli-out").exists()
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text(f"model: {tiny_model}\ndata: {{paths: [{pairs}]}}\noutput: x\nbeta: -1\n")
    with pytest.raises(UserError, match="beta"):
        load_config(DpoConfig, bad_key)


def chat_pair_rows(count: int) -> list[dict]:
    """rft's pairs of chat prompts: the prompt as messages, each answer as one assistant message."""
    return [{"id": row["id"], "problem_id": row["problem_id"],
             "prompt": [{"role": "user", "content": row["prompt"]}],
             "chosen": [{"role": "assistant", "content": row["chosen"]}],
             "rejected": [{"role": "assistant", "content": row["rejected"]}], "rejected_reason": "wrong_answer"}
            for row in pair_rows(count)]


def test_chat_pairs_train_through_the_chat_template(tiny_model, tmp_path):
    chat = write_jsonl(tmp_path / "pairs-00000.jsonl", chat_pair_rows(16))
    stats = run_dpo(make_config(tiny_model, chat, tmp_path / "out", max_steps=6, save_steps=100))[1]["stats"]
    assert stats["steps"] == 6 and stats["pairs_trained"] == 16 and stats["final_loss"] < stats["first_loss"]

    mixed = write_jsonl(tmp_path / "mixed.jsonl", chat_pair_rows(2) + pair_rows(2))
    with pytest.raises(UserError, match="mix text prompts and chat messages"):
        read_pairs([str(mixed)])
    broken = chat_pair_rows(2)
    broken[1]["chosen"] = [{"role": "assistant"}]  # no content
    with pytest.raises(UserError, match=r"broken.jsonl:2: missing or empty chosen"):
        read_pairs([str(write_jsonl(tmp_path / "broken.jsonl", broken))])


def test_the_shipped_example_config_is_valid():
    config = load_config(DpoConfig, REPO_ROOT / "configs" / "dpo-example.yaml")
    assert config.beta == 0.1 and config.loss_type == "sigmoid" and config.lora is None


@pytest.mark.slow
def test_vllm_generates_from_the_trained_checkpoint(reference):
    pytest.importorskip("vllm")
    from llm.config import VllmEngineConfig
    from llm.factory import make_engine
    from llm.types import GenerationRequest, SamplingParams

    config, _ = reference
    engine_config = VllmEngineConfig(model=config.output, dtype="float32", max_model_len=256, enforce_eager=True)
    with make_engine(engine_config) as engine:
        result = next(engine.generate([GenerationRequest(id="p", sampling=SamplingParams(max_tokens=16, temperature=0.0),
                                                         prompt="Question: what is 3 + 4?\nAnswer:")]))
    assert result.completions[0].num_tokens > 0
