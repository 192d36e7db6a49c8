"""Recipe files: every stage's config resolved and validated as a whole, outputs wired to
inputs, before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, write_jsonl

from data.errors import ConfigError
from data.samples import SAMPLE_CORPUS
from pipeline.recipe import load_recipe, plan_lines


def recipe_dict(tmp: Path, model: Path, sft: Path) -> dict:
    configs = REPO_ROOT / "configs"
    return {
        "shared": {"base": str(model), "seed": 7},
        "stages": {
            "synth_train": {"config": str(configs / "synth-train-example.yaml"),
                            "set": {"model": "${shared.base}", "data.path": str(sft), "seed": "${shared.seed}",
                                    "output": str(tmp / "synth-model")}},
            "synth_generate": {"config": str(configs / "synth-generate-example.yaml"),
                               "set": {"input.paths": [str(SAMPLE_CORPUS)], "engine.model": "${synth_train.output}",
                                       "seed": "${shared.seed}", "output": str(tmp / "generated")}},
            "synth_filter": {"config": str(configs / "synth-filter-example.yaml"),
                             "set": {"input": "${synth_generate.output}", "output": str(tmp / "filtered")}},
            "pretrain": {"config": str(configs / "pretrain-example.yaml"),
                         "set": {"model": "${shared.base}", "tokenized": str(tmp / "tokens"),
                                 "output": str(tmp / "final"),
                                 "sources": [{"paths": ["${synth_filter.output}"], "name": "synthetic"},
                                             {"paths": [str(sft)], "name": "sft", "phase": "sft"}]}},
            "eval": {"config": {"benchmarks": ["gsm8k"], "limit": 5,
                                "engine": {"kind": "vllm", "model": "${pretrain.output}", "dtype": "float32"},
                                "output": f"{tmp / 'runs'}/${{pretrain.seed}}-eval"}},
        },
    }


def write_recipe(tmp: Path, recipe: dict) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def parts(tiny_model, tmp_path) -> tuple[Path, Path]:
    sft = write_jsonl(tmp_path / "sft_raw.jsonl", [{"prompt": "p", "completion": "c"}])
    return tiny_model, sft


def test_a_recipe_wires_each_stage_to_the_outputs_before_it(parts, tmp_path):
    model, sft = parts
    recipe = load_recipe(write_recipe(tmp_path, recipe_dict(tmp_path, model, sft)))
    assert [s.name for s in recipe.stages] == ["synth_train", "synth_generate", "synth_filter", "pretrain", "eval"]
    assert recipe.stage("synth_generate").config.engine.model == str(tmp_path / "synth-model")
    assert recipe.stage("synth_generate").config.seed == 7  # a whole placeholder keeps its type
    assert recipe.stage("synth_filter").config.input == str(tmp_path / "generated")
    assert recipe.stage("pretrain").config.sources[0].paths == [str(tmp_path / "filtered")]
    assert recipe.stage("eval").config.engine.model == str(tmp_path / "final")
    assert recipe.stage("eval").config.output == f"{tmp_path / 'runs'}/0-eval"  # inside a string: text
    assert recipe.stage("pretrain").outputs == {"tokenized": str(tmp_path / "tokens"), "output": str(tmp_path / "final")}
    lines = plan_lines(recipe)
    assert len(lines) == 6 and lines[4].startswith("4. pretrain (pretrain tokenize, pretrain train): tokenized") and lines[4].endswith("[not started]")


@pytest.mark.parametrize("change, message", [
    (lambda r: r["stages"]["synth_train"]["set"].update({"model": "${pretrain.output}"}),
     r"recipe.yaml: stages.synth_train.model: \$\{pretrain.output\}: the pretrain stage runs later"),
    (lambda r: r["stages"]["synth_filter"]["set"].update({"input": "${distill.output}"}),
     r"stages.synth_filter.input: \$\{distill.output\}: the distill stage is not in this recipe"),
    (lambda r: r["stages"]["synth_filter"]["set"].update({"dedupe": {"enabled": False}}),
     r"recipe.yaml: stages.synth_filter: dedupe: unknown key"),
    (lambda r: r["stages"]["synth_generate"]["set"].update({"input.paths": ["/nowhere/corpus.jsonl"]}),
     r"stages.synth_generate: input.paths: /nowhere/corpus.jsonl does not exist and no earlier stage writes it"),
    (lambda r: r["stages"]["pretrain"]["set"].update({"model": "${shared.missing}"}),
     r"\$\{shared.missing\}: no shared.missing in the recipe"),
    (lambda r: r["stages"].update({"synth-train": {"config": {}}}),
     r"stages.synth-train: not a stage"),
    (lambda r: r["stages"]["eval"].update({"config": "/nowhere/eval.yaml"}),
     r"stages.eval.config: .*nowhere/eval.yaml"),
])
def test_a_wiring_mistake_or_a_bad_key_is_one_line_naming_recipe_stage_and_key(parts, tmp_path, change, message):
    model, sft = parts
    recipe = recipe_dict(tmp_path, model, sft)
    change(recipe)
    with pytest.raises(ConfigError, match=message) as failure:
        load_recipe(write_recipe(tmp_path, recipe))
    assert "\n" not in str(failure.value)
    assert not any((tmp_path / name).exists() for name in ("synth-model", "generated", "filtered", "final"))


# ---------------------------------------------------------------------------------------------
# mathsynth run


def training_recipe(tmp: Path, model: Path) -> dict:
    rows = [{"id": f"d{i}", "prompt": f"Math content: {i} apples.\n\n## Problem\n",
             "completion": f"Ann has {i} apples and buys {i + 1}. How many?\n\n## Solution\n{i} + {i + 1} = {2 * i + 1}. "
                           f"\\boxed{{{2 * i + 1}}}\n"} for i in range(24)]
    sft = write_jsonl(tmp / "distill" / "sft_raw.jsonl", rows)
    texts = write_jsonl(tmp / "texts.jsonl", [{"text": f"## Question\nWhat is {i} + {i}?\n\n## Solution\n{2 * i}\n"}
                                              for i in range(40)])
    small = {"max_length": 128, "per_device_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
             "save_steps": 1000, "logging_steps": 5}
    return {
        "workdir": str(tmp / "recipe"),
        "shared": {"base": str(model)},
        "stages": {
            "synth_train": {"config": {"model": "${shared.base}", "data": {"path": str(sft)}, "epochs": 1,
                                       "output": str(tmp / "synth-model"), **small}},
            "pretrain": {"config": {"model": "${synth_train.output}", "tokenized": str(tmp / "tokens"),
                                    "output": str(tmp / "final"), "tokenize_batch_rows": 8, **small,
                                    "sources": [{"paths": [str(texts)]}, {"paths": [str(sft)], "phase": "sft"}]},
                         "shards": 2},
        },
    }


def test_run_goes_through_the_stages_with_their_own_commands_and_a_rerun_skips_them(tiny_model, tmp_path, capsys):
    import json

    from pipeline.recipe_run import run_recipe

    recipe = load_recipe(write_recipe(tmp_path, training_recipe(tmp_path, tiny_model)))
    run_recipe(recipe, recipe.stages)
    for folder in ("synth-model", "tokens", "final"):
        assert json.loads((tmp_path / folder / "manifest.json").read_text())["complete"], folder
    tokens = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    assert tokens["num_shards"] == 2  # the sharded step ran as 2 local processes
    final = json.loads((tmp_path / "final" / "manifest.json").read_text())
    assert final["config"]["model"] == str(tmp_path / "synth-model")  # pretrain starts from the synthesizer here
    assert (tmp_path / "recipe" / "configs" / "pretrain.yaml").is_file()
    assert len(list((tmp_path / "recipe" / "logs").glob("pretrain-pretrain-tokenize-*.log"))) == 2
    out = capsys.readouterr().out
    assert "pretrain: pretrain tokenize (2 shards) ..." in out and "pretrain: complete in" in out

    before = (tmp_path / "final" / "manifest.json").read_text()
    run_recipe(recipe, recipe.stages)
    out = capsys.readouterr().out
    assert out.count("; skipped") == 2 and (tmp_path / "final" / "manifest.json").read_text() == before


def test_a_failing_step_stops_the_run_with_its_last_log_line(tiny_model, tmp_path):
    from pipeline.recipe_run import StepFailed, run_recipe, selected_stages

    recipe_raw = training_recipe(tmp_path, tiny_model)
    (tmp_path / "distill" / "sft_raw.jsonl").write_text('{"prompt": "p"}\n')  # no completion
    recipe = load_recipe(write_recipe(tmp_path, recipe_raw))
    with pytest.raises(StepFailed, match=r"stage synth_train: `mathsynth synth train` exited 2: .*sft_raw.jsonl:1: "
                                         r"a raw row needs string fields prompt and completion"):
        run_recipe(recipe, recipe.stages)
    assert not (tmp_path / "tokens").exists()  # the stages after it did not start
    assert [s.name for s in selected_stages(recipe, "pretrain", None)] == ["pretrain"]
    with pytest.raises(ConfigError, match="--from pretrain comes after --to synth_train"):
        selected_stages(recipe, "pretrain", "synth_train")


RUN_RECIPE = """
import sys
from pipeline.recipe import load_recipe
from pipeline.recipe_run import run_recipe
recipe = load_recipe(sys.argv[1])
run_recipe(recipe, recipe.stages)
"""


def stage_processes(config_file: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if config_file.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


def test_a_killed_run_takes_its_stage_processes_with_it_and_a_rerun_completes(tiny_model, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from pipeline.recipe_run import run_recipe
    from pretrain.plan import TokenArrays

    recipe_path = write_recipe(tmp_path, training_recipe(tmp_path, tiny_model))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-c", RUN_RECIPE, str(recipe_path)], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "synth-model" / "batches.jsonl").exists():
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)  # mid synth train
    process.wait()
    config_file = str(tmp_path / "recipe" / "configs" / "synth_train.yaml")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and stage_processes(config_file):
        time.sleep(0.1)
    assert not stage_processes(config_file)  # the stage process died with it
    assert not json.loads((tmp_path / "synth-model" / "manifest.json").read_text())["complete"]

    recipe = load_recipe(recipe_path)
    run_recipe(recipe, recipe.stages)
    assert json.loads((tmp_path / "final" / "manifest.json").read_text())["complete"]
    arrays = TokenArrays(tmp_path / "tokens", 2)
    assert len(arrays.index) == 40 + 24  # every document once


def test_status_of_a_recipe_names_each_stage_folder_and_its_state(tiny_model, tmp_path):
    from pipeline.recipe_run import run_recipe, status_lines

    recipe = load_recipe(write_recipe(tmp_path, training_recipe(tmp_path, tiny_model)))
    before = status_lines(recipe)
    assert before[1:] == ["1. synth_train", f"   output: {tmp_path / 'synth-model'}: not started", "2. pretrain",
                          f"   tokenized: {tmp_path / 'tokens'}: not started", f"   output: {tmp_path / 'final'}: not started"]
    run_recipe(recipe, recipe.stages[:1])
    after = status_lines(recipe)
    assert after[2].startswith(f"   output: {tmp_path / 'synth-model'}: synth-train complete")
    assert after[4].endswith("not started")


def test_the_commands_run_and_status_take_a_recipe(tiny_model, tmp_path):
    import subprocess
    import sys

    path = write_recipe(tmp_path, training_recipe(tmp_path, tiny_model))

    def mathsynth(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO_ROOT)

    dry = mathsynth("run", "--recipe", str(path), "--dry-run", "--to", "synth_train")
    assert dry.returncode == 0 and dry.stdout.splitlines()[1].startswith("1. synth_train (synth train): output")
    assert not (tmp_path / "synth-model").exists()  # a dry run writes nothing
    status = mathsynth("status", "--recipe", str(path))
    assert status.returncode == 1 and "not started" in status.stdout  # 1: not complete (for scripts)
    ran = mathsynth("run", "--recipe", str(path), "--to", "synth_train")
    assert ran.returncode == 0 and "synth_train: complete in" in ran.stdout
    bad = mathsynth("run", "--recipe", str(path), "--from", "eval")
    assert bad.returncode == 2 and bad.stderr.strip() == (f"mathsynth run: error: --from eval: not a stage of {path} "
                                                          f"(it has synth_train, pretrain)")


def test_the_shipped_paper_recipe_validates_once_its_placeholders_are_filled(tiny_model, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "x"}])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}])
    shared = {"corpus": str(corpus), "proxy_model": str(tiny_model), "synthesizer_base": str(tiny_model),
              "final_base": str(tiny_model), "sft_corpus": str(sft), "root": str(tmp_path / "run")}
    recipe = load_recipe(REPO_ROOT / "configs" / "recipes" / "jiuzhang3.yaml", shared=shared)
    assert [s.name for s in recipe.stages] == ["influence", "distill", "synth_train", "synth_generate",
                                                "synth_filter", "pretrain", "eval"]
    distill, train = recipe.stage("distill").config, recipe.stage("synth_train").config
    assert distill.input.paths == [str(tmp_path / "run" / "influence" / "selection")]
    assert distill.teacher.budget.max_calls == 9300 and distill.sampling.temperature == 0.6
    assert (train.learning_rate, train.epochs, train.weight_decay, train.max_length) == (1e-5, 5, 0.1, 2048)
    pretrain = recipe.stage("pretrain").config
    assert pretrain.sources[0].paths == [str(tmp_path / "run" / "synthetic-filtered")]
    assert pretrain.schedule.kind == "wsd" and pretrain.per_device_batch_size * pretrain.gradient_accumulation_steps * 8 == 512
    assert recipe.stage("eval").config.engine.model == str(tmp_path / "run" / "model")
    with pytest.raises(ConfigError, match=r"jiuzhang3.yaml: stages.influence: model: /ckpt/proxy-1b does not exist"):
        load_recipe(REPO_ROOT / "configs" / "recipes" / "jiuzhang3.yaml")  # the placeholders as shipped


def test_shared_values_can_be_set_on_the_command_line(tiny_model, tmp_path):
    import subprocess
    import sys

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "x"}])
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}])
    sets = [f"shared.{k}={v}" for k, v in {"corpus": corpus, "proxy_model": tiny_model, "synthesizer_base": tiny_model,
                                            "final_base": tiny_model, "sft_corpus": sft, "root": tmp_path / "run"}.items()]
    command = [sys.executable, "-m", "pipeline", "run", "--recipe", "configs/recipes/jiuzhang3.yaml", "--dry-run"]
    done = subprocess.run([*command, *(a for s in sets for a in ("--set", s))], capture_output=True, text=True,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 8 and "7. eval (eval run x8 shards)" in done.stdout
    bad = subprocess.run([*command, "--set", "corpus=/x"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2 and "expected shared.NAME=VALUE" in bad.stderr
