"""The influence warm-up: per-epoch LoRA checkpoints with named Adam state, a seeded sample,
exact resume after a kill, and a folder that refuses a different config."""
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, sample_texts, write_jsonl
from safetensors.torch import load_file

from data.corpus import CorpusStats
from data.errors import InputError, OutputError
from influence.config import InfluenceConfig
from influence.examples import MISSING_PAIR, collate
from influence.lora import attach_lora, list_checkpoints, lora_parameters
from influence.warmup import (
    run_warmup,
    warmup_examples,
    warmup_sample,
)
from llm.loading import load_model, load_tokenizer

LEARNING_RATE = 1e-3
BATCH = 8


def make_config(tmp_path: Path, model: Path, corpus: Path, output: str = "warmup", *, candidates=None,
                **warmup) -> InfluenceConfig:
    return InfluenceConfig.model_validate({
        "model": str(model),
        "max_length": 64,
        "lora": {"r": 8, "alpha": 16},
        "candidates": {"paths": [str(corpus)], **(candidates or {})},
        "warmup": {"output": str(tmp_path / output), "fraction": 0.5, "epochs": 3, "learning_rate": LEARNING_RATE,
                   "batch_size": BATCH, **warmup},
        "featurize": {"output": str(tmp_path / "features")},
        "select": {"output": str(tmp_path / "selected"), "top_k": 5},
    })


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "candidates.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(sample_texts(60))])


def expected_average_lrs(examples: int, epochs: int, warmup_ratio: float = 0.03) -> list[float]:
    """Linear warm-up then linear decay to 0, averaged over each epoch's optimizer steps."""
    per_epoch = math.ceil(examples / BATCH)
    total = per_epoch * epochs
    warm = math.ceil(warmup_ratio * total)
    lrs = [LEARNING_RATE * (s / warm if s < warm else (total - s) / (total - warm)) for s in range(total)]
    return [sum(lrs[e * per_epoch:(e + 1) * per_epoch]) / per_epoch for e in range(epochs)]


def test_each_epoch_saves_lora_weights_named_adam_state_and_its_average_lr(tmp_path, tiny_model, corpus):
    config = make_config(tmp_path, tiny_model, corpus)
    manifest = run_warmup(config)

    facts = manifest["warmup"]
    n = len(list(warmup_sample(config)))
    assert manifest["stage"] == "influence-warmup" and manifest["complete"]
    assert facts["examples"] == n and facts["steps_per_epoch"] == math.ceil(n / BATCH) and facts["epochs_done"] == 3
    checkpoints = list_checkpoints(tmp_path / "warmup")
    assert [c.epoch for c in checkpoints] == [1, 2, 3]

    names = [name for name, _ in lora_parameters(attach_lora(load_model(str(tiny_model)), config.lora,
                                                             for_training=False))]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    for checkpoint in checkpoints:
        assert set(load_file(str(checkpoint.folder / "adapter.safetensors"))) == set(names)
        moments = load_file(str(checkpoint.folder / "optimizer.safetensors"))
        assert set(moments) == {f"{n}.exp_avg" for n in names} | {f"{n}.exp_avg_sq" for n in names}
        state = json.loads((checkpoint.folder / "state.json").read_text())
        assert state["step"] == checkpoint.epoch * facts["steps_per_epoch"]
        assert state["betas"] == [0.9, 0.999] and state["eps"] == 1e-8

    expected = expected_average_lrs(n, 3)
    assert [c.average_lr for c in checkpoints] == pytest.approx(expected, rel=1e-9)
    assert facts["average_lr_per_epoch"] == pytest.approx(expected, rel=1e-9)
    losses = facts["loss_per_epoch"]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    # The LoRA moved away from its init (lora_B starts at zero).
    final = load_file(str(checkpoints[-1].folder / "adapter.safetensors"))
    assert any(name.endswith("lora_B.default.weight") and tensor.abs().sum() > 0 for name, tensor in final.items())

    # A finished warm-up is a no-op when rerun.
    fingerprints = [c.fingerprint() for c in checkpoints]
    assert run_warmup(config)["warmup"] == facts
    assert [c.fingerprint() for c in list_checkpoints(tmp_path / "warmup")] == fingerprints

    # Killed after the last checkpoint but before its record: the folder as the kill leaves it
    # (epoch 3's record, the seal and the manifest update missing). The rerun records epoch 3
    # from its checkpoint (its loss is unknown) and trains nothing.
    folder = tmp_path / "warmup"
    part = folder / "part-00000-of-00001.jsonl"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:2]))
    for sealed in ("part-00000-of-00001.done", "part-00000-of-00001.stats.json"):
        (folder / sealed).unlink()
    lagging = json.loads((folder / "manifest.json").read_text())
    lagging.update(complete=False, shards_done=[])
    lagging["warmup"].update(epochs_done=2, loss_per_epoch=losses[:2], average_lr_per_epoch=expected[:2])
    (folder / "manifest.json").write_text(json.dumps(lagging))
    repaired = run_warmup(config)
    assert repaired["complete"] and repaired["warmup"]["epochs_done"] == 3
    assert repaired["warmup"]["loss_per_epoch"] == [*losses[:2], None]
    assert repaired["warmup"]["average_lr_per_epoch"] == facts["average_lr_per_epoch"]
    assert [c.fingerprint() for c in list_checkpoints(tmp_path / "warmup")] == fingerprints


def test_the_sample_is_a_seeded_hash_of_the_doc_id_about_fraction_of_the_pool(tmp_path, tiny_model):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(sample_texts(200))])
    config = make_config(tmp_path, tiny_model, pool)
    ids = [doc.id for doc in warmup_sample(config)]
    assert ids == [doc.id for doc in warmup_sample(config)]
    assert abs(len(ids) - 100) <= 4 * math.sqrt(200 * 0.5 * 0.5)  # binomial(200, 0.5), 4 sigma

    # Membership depends on (seed, id) alone: another pool holding some of the same rows agrees.
    half = write_jsonl(tmp_path / "half.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(sample_texts(200))
                                                 if i % 2 == 0][::-1])
    assert sorted(doc.id for doc in warmup_sample(make_config(tmp_path, tiny_model, half))) == \
        sorted(i for i in ids if int(i[3:]) % 2 == 0)
    assert [doc.id for doc in warmup_sample(make_config(tmp_path, tiny_model, pool, seed=1))] != ids
    assert [doc.id for doc in warmup_sample(make_config(tmp_path, tiny_model, pool, max_examples=10))] == ids[:10]
    small = [doc.id for doc in warmup_sample(make_config(tmp_path, tiny_model, pool, fraction=0.1))]
    assert abs(len(small) - 20) <= 4 * math.sqrt(200 * 0.1 * 0.9) and set(small) <= set(ids)


def test_with_a_pair_field_only_the_pairs_tokens_are_scored(tmp_path, tiny_model):
    texts = sample_texts(12)
    rows = [{"id": f"doc{i}", "text": t[:80], "synth": f"## Question\nWhat is {i} + {i}?"} for i, t in enumerate(texts)]
    corpus = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = make_config(tmp_path, tiny_model, corpus, fraction=1.0, candidates={"pair_field": "synth"})
    tokenizer = load_tokenizer(str(tiny_model))
    examples = warmup_examples(config, tokenizer)
    assert [e.id for e in examples] == [r["id"] for r in rows]
    for example, row in zip(examples, rows):
        prompt = tokenizer.encode(row["text"], add_special_tokens=False)
        pair = tokenizer.encode(row["synth"], add_special_tokens=False) + [tokenizer.eos_token_id]
        assert example.first_scored == len(prompt)
        assert list(example.input_ids) == prompt + pair and example.scored_tokens == len(pair)
    _, _, scored = collate(examples, tokenizer.pad_token_id)
    assert scored.sum(dim=1).tolist() == [len(tokenizer.encode(r["synth"], add_special_tokens=False)) + 1 for r in rows]

    broken = write_jsonl(tmp_path / "broken.jsonl", [*rows[:3], {"id": "nopair", "text": "Some text."}, *rows[3:]])
    with pytest.raises(InputError) as failure:
        warmup_examples(make_config(tmp_path, tiny_model, broken, fraction=1.0, candidates={"pair_field": "synth"}),
                        tokenizer)
    message = str(failure.value)
    assert "\n" not in message and f"{broken}:4" in message and "'synth'" in message

    stats = CorpusStats()
    skipping = make_config(tmp_path, tiny_model, broken, fraction=1.0, candidates={"pair_field": "synth", "policy": "skip"})
    assert len(warmup_examples(skipping, tokenizer, stats=stats)) == len(rows)
    assert stats.skipped == {MISSING_PAIR: 1} and f"{broken}:4" in stats.first_skipped[0]


# Run in a subprocess: stalls in the middle of epoch 2 (after ``stall_after`` optimizer steps)
# and says so through a marker file, so the kill lands mid-epoch however fast the machine is.
STALLING_RUN = """
import json, sys, time
from pathlib import Path
import torch
from influence.config import InfluenceConfig
from influence.warmup import run_warmup
config = InfluenceConfig.model_validate(json.loads(Path(sys.argv[1]).read_text()))
marker, stall_after = Path(sys.argv[2]), int(sys.argv[3])
real_step, calls = torch.optim.AdamW.step, []
def stalling_step(self, *args, **kwargs):
    result = real_step(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == stall_after:
        marker.write_text("stalled")
        time.sleep(300)
    return result
torch.optim.AdamW.step = stalling_step
run_warmup(config)
"""


def test_a_kill_mid_epoch_loses_only_that_epoch_and_resume_is_exact(tmp_path, tiny_model, corpus):
    config = make_config(tmp_path, tiny_model, corpus, output="killed")
    steps_per_epoch = math.ceil(len(list(warmup_sample(config))) / BATCH)
    assert steps_per_epoch >= 3
    config_file = tmp_path / "killed.json"
    config_file.write_text(config.model_dump_json())
    marker = tmp_path / "stalled"
    process = subprocess.Popen([sys.executable, "-c", STALLING_RUN, str(config_file), str(marker),
                                str(steps_per_epoch + 2)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert marker.exists(), stderr.decode()[-2000:]
    folder = tmp_path / "killed"
    assert [c.epoch for c in list_checkpoints(folder)] == [1]
    epoch_1 = {p.name: p.read_bytes() for p in (folder / "epoch-1").iterdir()}
    assert json.loads((folder / "manifest.json").read_text())["warmup"]["epochs_done"] == 1

    manifest = run_warmup(config)
    assert manifest["complete"] and manifest["warmup"]["epochs_done"] == 3
    assert {p.name: p.read_bytes() for p in (folder / "epoch-1").iterdir()} == epoch_1
    assert not list(folder.glob(".epoch-*"))

    clean = run_warmup(make_config(tmp_path, tiny_model, corpus, output="clean"))
    assert manifest["warmup"]["loss_per_epoch"] == pytest.approx(clean["warmup"]["loss_per_epoch"], abs=1e-6)
    assert manifest["warmup"]["average_lr_per_epoch"] == clean["warmup"]["average_lr_per_epoch"]
    for epoch in (2, 3):
        for name in ("adapter.safetensors", "optimizer.safetensors"):
            resumed = load_file(str(folder / f"epoch-{epoch}" / name))
            uninterrupted = load_file(str(tmp_path / "clean" / f"epoch-{epoch}" / name))
            assert set(resumed) == set(uninterrupted)
            for key in resumed:
                assert torch.allclose(resumed[key], uninterrupted[key], atol=1e-6), (epoch, key)
        assert json.loads((folder / f"epoch-{epoch}" / "state.json").read_text()) == \
            json.loads((tmp_path / "clean" / f"epoch-{epoch}" / "state.json").read_text())


def test_a_different_config_on_the_same_folder_is_refused_once_an_epoch_is_saved(tmp_path, tiny_model, corpus):
    # Before any checkpoint there is nothing to protect: a corrected config starts over.
    with pytest.raises(InputError, match="pair_field 'synth' is missing"):
        run_warmup(make_config(tmp_path, tiny_model, corpus, epochs=1, max_examples=8,
                               candidates={"pair_field": "synth"}))
    run_warmup(make_config(tmp_path, tiny_model, corpus, epochs=1, max_examples=8))
    for change, key in (({"learning_rate": 2e-3}, "warmup.learning_rate"), ({"epochs": 2}, "warmup.epochs")):
        with pytest.raises(OutputError) as refused:
            run_warmup(make_config(tmp_path, tiny_model, corpus, **{"epochs": 1, "max_examples": 8, **change}))
        assert "\n" not in str(refused.value) and key in str(refused.value)
    # Settings the checkpoints do not depend on (later stages', the device) may change.
    same = make_config(tmp_path, tiny_model, corpus, epochs=1, max_examples=8).model_dump()
    same["featurize"]["batch_size"], same["select"]["top_k"], same["device"] = 4, 9, "cpu"
    assert run_warmup(InfluenceConfig.model_validate(same))["warmup"]["epochs_done"] == 1
    # Nor does where the folder lives: a moved warm-up is still the same warm-up.
    shutil.copytree(tmp_path / "warmup", tmp_path / "moved")
    moved = run_warmup(make_config(tmp_path, tiny_model, corpus, output="moved", epochs=1, max_examples=8))
    assert moved["warmup"]["epochs_done"] == 1 and moved["config"]["warmup"]["output"] == str(tmp_path / "warmup")
