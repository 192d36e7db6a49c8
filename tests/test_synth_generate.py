"""`mathsynth synth generate`: distill's prompts, re-asked of the synthesizer, sharded and resumable."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_when_written, sample_texts, write_jsonl

from data.corpus import read_corpus
from data.shards import Shard
from data.stage_prompts.prompted import load_library
from distill.run import DistillConfig, run_distill
from llm.engine import Engine
from llm.generation_run import record_id
from llm.types import Completion, GenerationResult, Usage
from runner.config import load_config
from synth.generate import (
    SynthGenerateConfig,
    build_items,
    run_synth_generate,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING"}
WORDS = ("apple river copper lantern meadow violin harbor pepper glacier saddle orchid marble canyon thimble falcon "
         "velvet quarry ribbon walnut beacon tunnel cobalt prairie kettle lemon anchor summit pebble cedar mosaic").split()


def answer(key: str, index: int) -> str:
    """A well-formed problem and solution, different for every request and sample."""
    words = " ".join(random.Random(f"{key}/{index}").sample(WORDS, 12))
    return (f"A collector sorts {words} into boxes of 4. How many boxes hold 12 items?\n\n## Solution\n"
            "We divide the number of items by the capacity of one box, because every box is filled completely "
            "before the next one is started, and nothing is left over.\n```python\nprint(12 // 4)\n```\n"
            "So the answer is $\\boxed{3}$.")


class ScriptedEngine(Engine):
    """Answers every request with well-formed samples (garbage for the ids in ``garbage``) and
    keeps the requests it was sent."""

    model_name = "scripted"

    def __init__(self, garbage=()):
        super().__init__()
        self.requests, self.garbage = [], set(garbage)

    def generate(self, requests):
        for request in requests:
            self.requests.append(request)
            self.calls += 1
            texts = ["no headers at all" if request.id in self.garbage else answer(request.id, i)
                     for i in range(request.sampling.n)]
            yield GenerationResult(request.id, [Completion(t, "stop", 20) for t in texts], Usage(50, 20 * len(texts)))


def planned_items(config: SynthGenerateConfig):
    return build_items(read_corpus(config.input, Shard(0, 1)), load_library(config), config)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_parts(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("part-*.jsonl")) for row in rows(part)]


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(sample_texts(40))])


def synth_config(tmp_path: Path, corpus: Path, output: str, model: str = "unused", **extra) -> dict:
    return {
        "input": {"paths": [str(corpus)], **extra.pop("input", {})},
        "engine": {"kind": "hf", "model": str(model), "batch_size": 8},
        "variants": {"cot": 0.5, "tool": 0.5},
        "seed": 3,
        "output": str(tmp_path / output),
        **extra,
    }


def config_file(tmp_path: Path, config: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_the_prompt_is_the_one_distill_exported_and_sampling_follows_the_variant(tmp_path, corpus):
    mixture = {"variants": {"cot": 0.5, "tool": 0.5}, "stages": {"grade_school": 1, "college": 2, "aime": 1}, "seed": 3}
    teacher = {"kind": "hf", "model": "unused"}
    distilled = DistillConfig.model_validate({"input": {"paths": [str(corpus)]}, "teacher": teacher, **mixture,
                                              "validation": {"check_code": False}, "output": str(tmp_path / "distill")})
    manifest = run_distill(distilled, Shard(0, 1), engine=ScriptedEngine())
    assert manifest["complete"] and manifest["sft_examples"] == 40
    exported = {row["id"]: row["prompt"] for row in rows(tmp_path / "distill" / "sft_raw.jsonl")}
    by_source = {r["source_id"]: (r["stage"], r["variant"], exported[r["id"]]) for r in read_parts(tmp_path / "distill")}

    config = SynthGenerateConfig.model_validate({**synth_config(tmp_path, corpus, "synth", n=3, keep_prompt=True),
                                                 **mixture, "engine": teacher})
    first_key = next(planned_items(config)).key
    engine = ScriptedEngine(garbage={first_key})
    manifest = run_synth_generate(config, Shard(0, 1), engine=engine)

    assert len(engine.requests) == 40
    variants = set()
    for request in engine.requests:  # raw prompts, byte for byte what the synthesizer was trained on
        record = next(r for r in read_parts(tmp_path / "synth") if r["item_key"] == request.id)
        stage, variant, prompt = by_source[record["source_id"]]
        assert request.messages is None and request.prompt == prompt == record["prompt"]
        assert (record["stage"], record["variant"]) == (stage, variant)
        paper = {"cot": (1.0, 1.0, 2500), "tool": (0.1, 0.95, 5000)}[variant]
        assert (request.sampling.temperature, request.sampling.top_p, request.sampling.max_tokens) == paper
        assert request.sampling.n == 3
        variants.add(variant)
    assert variants == {"cot", "tool"}

    records = read_parts(tmp_path / "synth")
    assert len(records) == len({r["id"] for r in records}) == 120
    assert not set(r["id"] for r in records) & set(exported)  # never the teacher's ids
    unparsed = [r for r in records if r["parse_error"]]
    assert [r["item_key"] for r in unparsed] == [first_key] * 3  # kept, marked
    assert all(r["parse_error"] == "no_solution" and r["problem"] is None for r in unparsed)
    parsed = [r for r in records if not r["parse_error"]]
    assert all(r["problem"].startswith("A collector") and r["final_answer"] == "3" and r["code"] for r in parsed)
    for r in parsed:  # the JiuZhang3.0 pre-training text, tool data marked as code
        header = {"cot": "## Solution", "tool": "## Code Solution"}[r["variant"]]
        assert r["text"] == f"## Question\n{r['problem']}\n\n{header}\n{r['solution']}\n"
    assert all(r["text"] is None for r in unparsed)
    assert all(r["source_id"].startswith("doc") and "source_text" not in r for r in records)
    assert manifest["complete"] and manifest["counts"]["parse_errors"] == {"no_solution": 3}
    assert manifest["usage"]["completion_tokens"] == 120 * 20 and manifest["usage"]["prompt_tokens"] == 40 * 50


def test_n_samples_per_text_from_the_tiny_model_with_distinct_ids(tmp_path, tiny_model, corpus):
    config = SynthGenerateConfig.model_validate(synth_config(
        tmp_path, corpus, "out", tiny_model, n=3, input={"limit": 6},
        sampling={"cot": {"max_tokens": 8}, "tool": {"max_tokens": 8}}))
    manifest = run_synth_generate(config, Shard(0, 1))
    records = read_parts(tmp_path / "out")
    assert len(records) == len({r["id"] for r in records}) == 18
    by_item: dict[str, list[int]] = {}
    for record in records:
        by_item.setdefault(record["item_key"], []).append(record["sample_index"])
        assert record["model"] == str(tiny_model) and "prompt" not in record
        assert "parse_error" in record and record["usage"]["completion_tokens"] <= 8
    assert len(by_item) == 6 and all(sorted(samples) == [0, 1, 2] for samples in by_item.values())
    assert manifest["complete"] and manifest["counts"]["records"] == 18 and manifest["counts"]["windows"] == 6
    assert manifest["config"]["sampling"]["tool"]["temperature"] == 0.1  # the resolved config is recorded


def synth_generate(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline", "synth", "generate", *args]


def test_two_shards_in_two_processes_give_the_same_union_as_one(tmp_path, tiny_model, corpus):
    settings = dict(n=2, input={"limit": 16}, sampling={"cot": {"max_tokens": 6}, "tool": {"max_tokens": 6}})
    config = config_file(tmp_path, synth_config(tmp_path, corpus, "sharded", tiny_model, **settings), "sharded")
    shards = [subprocess.Popen(synth_generate("--config", str(config), "--shard", f"{i}/2"), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    # The single-shard reference runs here meanwhile.
    single = SynthGenerateConfig.model_validate(synth_config(tmp_path, corpus, "single", tiny_model, **settings))
    run_synth_generate(single, Shard(0, 1))
    assert all(p.wait() == 0 for p in shards), [p.stderr.read()[-2000:] for p in shards]
    sharded = [r["id"] for r in read_parts(tmp_path / "sharded")]
    assert len(sharded) == len(set(sharded)) == 32
    assert set(sharded) == {r["id"] for r in read_parts(tmp_path / "single")}
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 2 and manifest["counts"]["windows"] == 16


def test_kill_minus_9_mid_shard_then_rerun_gives_every_record_once(tmp_path, tiny_model, corpus):
    settings = dict(n=2, sampling={"cot": {"max_tokens": 6}, "tool": {"max_tokens": 6}},
                    engine={"kind": "hf", "model": str(tiny_model), "batch_size": 4})
    raw = synth_config(tmp_path, corpus, "killed", tiny_model, **settings)
    config = config_file(tmp_path, raw, "killed")
    part = tmp_path / "killed" / "part-00000-of-00001.jsonl"
    before = kill_when_written(synth_generate("--config", str(config)), part, 8, ENV, timeout_s=60)
    assert 8 <= before < 80, "the kill must land in the middle of the run"
    assert not (tmp_path / "killed" / "part-00000-of-00001.done").exists()

    rerun = subprocess.run(synth_generate("--config", str(config)), env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ids = [r["id"] for r in rows(part)]
    expected = {record_id(item.key, i) for item in planned_items(SynthGenerateConfig.model_validate(raw)) for i in range(2)}
    assert len(ids) == len(set(ids)) == 80 and set(ids) == expected  # none lost, none twice
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["resumed_done"] >= before // 2 - 4


def test_a_bad_config_key_fails_in_one_line_before_anything_runs(tmp_path, corpus, capsys):
    from pipeline.cli import main

    config = config_file(tmp_path, synth_config(tmp_path, corpus, "bad", sampling={"cot": {"temprature": 0.5}}), "bad")
    assert main(["synth", "generate", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mathsynth synth: error: {config}: sampling.cot.temprature: unknown key"]
    assert not (tmp_path / "bad").exists()

    config = config_file(tmp_path, synth_config(tmp_path, corpus, "bad", variants={"pot": 1.0}), "nosampling")
    assert main(["synth", "generate", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mathsynth synth: error: {config}: sampling: variant 'pot' has none: give sampling.pot.temperature, "
                   "max_tokens, ..."]


def test_engine_kind_defaults_to_vllm_and_partial_sampling_keeps_the_paper_values(tmp_path, corpus):
    config = load_config(SynthGenerateConfig, None, [f"input.paths=[{corpus}]", "engine.model=ckpt", "output=out",
                                                     "sampling.cot.temperature=0.7"])
    assert config.engine.kind == "vllm"
    assert (config.sampling["cot"].temperature, config.sampling["cot"].max_tokens) == (0.7, 2500)
    assert (config.sampling["tool"].temperature, config.sampling["tool"].top_p, config.sampling["tool"].max_tokens) == (0.1, 0.95, 5000)


@pytest.mark.slow
def test_the_vllm_engine_runs_both_variants_with_their_own_sampling(tmp_path, tiny_model, corpus):
    engine = {"kind": "vllm", "model": str(tiny_model), "dtype": "float32", "max_model_len": 2048, "enforce_eager": True}
    config = config_file(tmp_path, synth_config(tmp_path, corpus, "vllm", n=2, input={"limit": 12}, engine=engine,
                                                sampling={"cot": {"max_tokens": 16}, "tool": {"max_tokens": 4}}), "vllm")
    result = subprocess.run(synth_generate("--config", str(config)), env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_parts(tmp_path / "vllm")
    assert len(records) == len({r["id"] for r in records}) == 24
    assert {r["variant"] for r in records} == {"cot", "tool"}
    assert all(r["usage"]["completion_tokens"] <= (16 if r["variant"] == "cot" else 4) for r in records)
    assert "24 records" in result.stdout


def test_the_example_config_is_valid():
    config = load_config(SynthGenerateConfig, Path(__file__).resolve().parent.parent / "configs" / "synth-generate-example.yaml")
    assert config.engine.kind == "vllm" and config.sampling["tool"].max_tokens == 5000
