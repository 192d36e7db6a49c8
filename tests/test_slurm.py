"""slurm/stage.sbatch on a real single-node Slurm (tests/slurm_cluster.py).

generate: an array of 2 tasks writes the 2 shards of one output, the same records as a
one-shard local run; resubmitting the same array after a "preemption" regenerates nothing.
influence: featurize as a 2-task array, then select as one job after it, give the selection
of a local single-process run; warm-up inside an array is refused. pretrain: tokenize as a
2-task array, then slurm/train.sbatch (accelerate launch, 2 CPU processes) after it, trains the
run of a local single process. The template's argument
checks also run without Slurm (plain bash, a stand-in `mathsynth`). Skipped where Slurm is not
installed or we are not root.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sample_texts, write_jsonl
from influence_helpers import assert_same_selection, make_config, read_selection

from data.samples import SAMPLE_CORPUS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
SBATCH_SCRIPT = "slurm/stage.sbatch"  # relative, as a user types it from the repo root
JOB_TIMEOUT_S = 120
TOKENIZER_TEXTS = [
    "What is 2 + 3? The answer is 5.",
    "Solve x^2 = 4: x = 2 or x = -2.",
    "The area of a circle of radius r is \\pi r^2.",
    "Find the sum of the first 10 positive integers: \\boxed{55}.",
] * 10


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from llm.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny", texts=TOKENIZER_TEXTS)


def write_config(path: Path, model: Path, output: Path) -> Path:
    config = {
        "input": {"paths": [str(SAMPLE_CORPUS)], "limit": 40},
        "prompt": {"template": "Math content:\n{{ text }}\n## Question\n", "window_chars": 300},
        "engine": {"kind": "hf", "model": str(model), "dtype": "float32", "device": "cpu"},
        "sampling": {"max_tokens": 16, "seed": 0},
        "output": str(output),
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def job_env(slurm, tmp_path: Path) -> dict[str, str]:
    env = slurm.env()
    env.update(
        OMP_NUM_THREADS="1",  # 2 cores, 2 tasks: one torch thread each
        HF_HUB_OFFLINE="1",
        MATHSYNTH_LOG_DIR=str(tmp_path / "logs"),
    )
    if (Path(sys.prefix) / "bin" / "activate").exists():
        env["MATHSYNTH_VENV"] = sys.prefix  # exercise the template's venv activation
    return env


def submit(env: dict[str, str], tmp_path: Path, *args: str, array: str | None = "0-1",
           options: tuple[str, ...] = ()) -> str:
    """Submit the template from the repo root (an array unless ``array`` is None); the job id."""
    if array:
        where = [f"--array={array}", f"--output={tmp_path}/slurm-%A_%a.out"]
    else:
        where = [f"--output={tmp_path}/slurm-%j.out"]
    command = ["sbatch", "--parsable", *where, *options, SBATCH_SCRIPT, *args]
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout.strip().split(";")[0]


def wait(slurm, tmp_path: Path, job_id: str) -> dict[str, str]:
    """Task id (or the job id of a plain job) -> final state."""
    try:
        return slurm.wait_for_job(job_id, timeout_s=JOB_TIMEOUT_S)
    except TimeoutError as err:
        slurm.cancel_all_jobs()
        pytest.fail(f"{err}\n{job_logs(tmp_path)}\n{slurm.logs()}")


def submit_and_wait(slurm, env: dict[str, str], tmp_path: Path, *args: str) -> None:
    """Submit the template as a 2-task array; wait until both tasks completed."""
    states = wait(slurm, tmp_path, submit(env, tmp_path, *args))
    assert states == {"0": "COMPLETED", "1": "COMPLETED"}, f"{states}\n{job_logs(tmp_path)}"


def mathsynth_command() -> list[str]:
    script = Path(sys.executable).with_name("mathsynth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def job_logs(tmp_path: Path) -> str:
    files = sorted(tmp_path.glob("slurm-*.out")) + sorted((tmp_path / "logs").glob("*.log"))
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in files)


def read_ids(folder: Path) -> list[str]:
    ids = []
    for part in sorted(folder.glob("part-*.jsonl")):
        ids += [json.loads(line)["id"] for line in part.read_text().splitlines()]
    return ids


def test_array_job_writes_the_shards_of_a_local_run_and_resubmitting_resumes(slurm, tiny_model, tmp_path):
    out = tmp_path / "slurm-out"
    config = write_config(tmp_path / "generate.yaml", tiny_model, out)
    env = job_env(slurm, tmp_path)
    extra = ["--set", "keep_prompt=false"]  # extra overrides must reach every task

    # The local one-shard run shares the 2 cores with the array: run it meanwhile.
    local = subprocess.Popen(
        [*mathsynth_command(), "generate", "--config", str(config),
         "--set", f"output={tmp_path / 'local'}", *extra, "--shard", "0/1"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        submit_and_wait(slurm, env, tmp_path, "generate", str(config), *extra)
    finally:
        local_log, _ = local.communicate(timeout=JOB_TIMEOUT_S)
    assert local.returncode == 0, local_log

    stems = ["part-00000-of-00002", "part-00001-of-00002"]
    for stem in stems:
        assert (out / f"{stem}.done").exists(), job_logs(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 2 and manifest["shards_done"] == [0, 1]
    assert manifest["config"]["keep_prompt"] is False
    assert manifest["counts"]["documents"] == manifest["counts"]["records"] == 40

    ids = read_ids(out)
    local_ids = read_ids(tmp_path / "local")
    assert len(ids) == len(set(ids)) == 40
    assert set(ids) == set(local_ids) and len(local_ids) == 40
    first = json.loads((out / f"{stems[0]}.jsonl").read_text().splitlines()[0])
    assert "prompt" not in first
    assert len(list((tmp_path / "logs").glob("mathsynth-generate-*_[01].log"))) == 2

    # "Preemption": shard 0 finished and sealed; shard 1 wrote every record but was killed
    # before its .done marker. Resubmitting the same array must regenerate nothing.
    (out / f"{stems[1]}.done").unlink()
    before = {p.name: p.read_bytes() for p in out.glob("part-*") if p.suffix in (".jsonl", ".json")}
    submit_and_wait(slurm, env, tmp_path, "generate", str(config), *extra)

    after = {p.name: p.read_bytes() for p in out.glob("part-*") if p.suffix in (".jsonl", ".json")}
    for stem in stems:
        assert (out / f"{stem}.done").exists(), job_logs(tmp_path)
        assert after[f"{stem}.jsonl"] == before[f"{stem}.jsonl"], f"{stem}: records were rewritten"
    assert after[f"{stems[0]}.stats.json"] == before[f"{stems[0]}.stats.json"], "a sealed shard ran again"
    resumed = json.loads(after[f"{stems[1]}.stats.json"])
    assert resumed["generated"] == 0
    assert resumed["resumed_done"] == resumed["documents"] == resumed["records"] == 20

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["records"] == 40
    assert read_ids(out) == ids
    task0_logs = sorted((tmp_path / "logs").glob("mathsynth-generate-*_0.log"))
    assert len(task0_logs) == 2 and "already complete" in task0_logs[-1].read_text()


# ------------------------------------------------------------------------------ influence


def influence_config(model: Path, data: Path, out: Path) -> dict:
    """Small enough for seconds on CPU: 48 candidates in 6 chunks of 8, 8 targets."""
    return make_config(model, data, out, max_length=64, lora={"r": 8, "alpha": 16, "dropout": 0.0},
                       warmup__batch_size=4, featurize__chunk_size=8, featurize__projection={"dim": 512},
                       select={"output": str(out / "selection"), "top_k": 10})


@pytest.fixture(scope="module")
def warmed(tiny_model, tmp_path_factory) -> Path:
    """A pool of 48 sample texts, 8 target word problems, and the warm-up (in this process)."""
    from influence.config import InfluenceConfig
    from influence.warmup import run_warmup

    data = tmp_path_factory.mktemp("influence")
    write_jsonl(data / "pool.jsonl", [{"id": f"se{i}", "text": text, "source": "stackexchange"}
                                      for i, text in enumerate(sample_texts(48))])
    write_jsonl(data / "targets.jsonl", [
        {"question": f"Ann has {a} apples and buys {b} more. How many apples does she have?",
         "solution": f"She has {a} + {b} = {a + b} apples. The answer is \\boxed{{{a + b}}}."}
        for a, b in [(3, 4), (12, 5), (7, 9), (21, 13), (8, 8), (30, 2), (15, 27), (6, 11)]
    ])
    run_warmup(InfluenceConfig.model_validate(influence_config(tiny_model, data, data / "unused")))
    return data


def test_featurize_array_then_select_job_gives_the_local_selection(slurm, tiny_model, warmed, tmp_path):
    from data.shards import Shard
    from influence.config import InfluenceConfig
    from influence.featurize import run_featurize
    from influence.select import run_select

    out = tmp_path / "slurm-out"
    config_path = tmp_path / "influence.yaml"
    config_path.write_text(json.dumps(influence_config(tiny_model, warmed, out)))  # JSON is YAML
    env = job_env(slurm, tmp_path)

    # The chain of slurm/README.md: featurize as an array, the merge as one job after it.
    featurize = submit(env, tmp_path, "influence", "featurize", str(config_path))
    select = submit(env, tmp_path, "influence", "select", str(config_path), array=None,
                    options=(f"--dependency=afterok:{featurize}", "--kill-on-invalid-dep=yes"))
    # The local single-process reference shares the 2 cores with the jobs: run it meanwhile.
    local = InfluenceConfig.model_validate(influence_config(tiny_model, warmed, tmp_path / "local"))
    run_featurize(local, Shard(0, 1))
    run_select(local)
    featurize_states, select_states = wait(slurm, tmp_path, featurize), wait(slurm, tmp_path, select)
    assert featurize_states == {"0": "COMPLETED", "1": "COMPLETED"}, f"{featurize_states}\n{job_logs(tmp_path)}"
    assert select_states == {select: "COMPLETED"}, f"{select_states}\n{job_logs(tmp_path)}"

    # Task i of the array was shard i/2: it featurized chunks i, i+2, i+4 of the 6.
    candidates = out / "features" / "candidates"
    for index in range(2):
        summary = json.loads((candidates / f"part-{index:05d}-of-00002.stats.json").read_text())
        assert summary["chunks_written"] == 3 and summary["examples"] == 24, summary
    assert json.loads((candidates / "total.json").read_text()) == {"rows": 48, "chunks": 6}
    logs = tmp_path / "logs"
    assert len(list(logs.glob(f"mathsynth-influence-featurize-{featurize}_[01].log"))) == 2
    assert len(list(logs.glob(f"mathsynth-influence-select-{select}_0.log"))) == 1

    manifest = json.loads((out / "selection" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["records"] == 10
    assert len(read_selection(out / "selection")) == 10
    assert_same_selection(out / "selection", tmp_path / "local" / "selection")

    # Chunks, not shards, are the unit: a resubmission with another array size finds them all.
    config = InfluenceConfig.model_validate(json.loads(config_path.read_text()))
    for index in range(3):
        summary = run_featurize(config, Shard(index, 3), side="candidates")["candidates"]
        assert summary["chunks_written"] == 0 and summary["chunks_already_done"] == 2, summary


def test_pretrain_tokenize_array_then_a_train_job_gives_the_local_run(slurm, tiny_model, tmp_path):
    from conftest import assert_same_weights, read_lines

    from data.shards import Shard
    from pretrain.config import PretrainConfig
    from pretrain.tokenize import TokenizeStage
    from pretrain.train import run_pretrain
    from runner.run import run_stage

    qa = [{"text": f"## Question\nWhat is {i} + {i}?\n\n## Solution\n{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}\n"}
          for i in range(60)]
    data = write_jsonl(tmp_path / "qa.jsonl", qa)
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": t[:400]} for t in sample_texts(30)])

    def config(name: str) -> dict:
        return {"model": str(tiny_model), "output": str(tmp_path / name / "model"),
                "tokenized": str(tmp_path / name / "tokens"), "tokenize_batch_rows": 16,
                "sources": [{"paths": [str(data)], "weight": 2}, {"paths": [str(plain)]}],
                "max_length": 128, "per_device_batch_size": 1, "gradient_accumulation_steps": 2,
                "learning_rate": 1e-3, "save_steps": 5, "logging_steps": 1}

    config_path = tmp_path / "pretrain.yaml"
    config_path.write_text(json.dumps(config("slurm")))  # JSON is YAML
    env = job_env(slurm, tmp_path)
    tokenize = submit(env, tmp_path, "pretrain", "tokenize", str(config_path))
    command = ["sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", f"--dependency=afterok:{tokenize}",
               "--kill-on-invalid-dep=yes", "slurm/train.sbatch", "pretrain", str(config_path),
               "configs/accelerate/cpu-2proc.yaml", "--set", "logging_steps=2"]
    submitted = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert submitted.returncode == 0, submitted.stderr
    train = submitted.stdout.strip().split(";")[0]
    # The local single-process reference (same global batch: 2 rows per process x 1 x 2) meanwhile.
    local = PretrainConfig.model_validate({**config("local"), "per_device_batch_size": 2, "logging_steps": 2})
    run_stage(TokenizeStage(local), Shard(0, 1))
    run_pretrain(local)
    assert wait(slurm, tmp_path, tokenize) == {"0": "COMPLETED", "1": "COMPLETED"}, job_logs(tmp_path)
    assert wait(slurm, tmp_path, train) == {train: "COMPLETED"}, job_logs(tmp_path)

    tokens = json.loads((tmp_path / "slurm" / "tokens" / "manifest.json").read_text())
    assert tokens["complete"] and tokens["num_shards"] == 2
    result = json.loads((tmp_path / "slurm" / "model" / "manifest.json").read_text())
    assert result["complete"] and result["stats"]["processes"] == 2
    assert result["config"]["logging_steps"] == 2  # the overrides after the accelerate config reach the run
    assert read_lines(tmp_path / "slurm" / "model" / "batches.jsonl") == read_lines(tmp_path / "local" / "model" / "batches.jsonl")
    assert_same_weights(tmp_path / "slurm" / "model", tmp_path / "local" / "model", atol=1e-4)


def test_warmup_inside_an_array_is_refused(slurm, tmp_path):
    config = tmp_path / "influence.yaml"
    config.write_text("{}")  # refused before it is read
    env = job_env(slurm, tmp_path)
    job = submit(env, tmp_path, "influence", "warmup", str(config))
    states = wait(slurm, tmp_path, job)
    assert states == {"0": "FAILED", "1": "FAILED"}, f"{states}\n{job_logs(tmp_path)}"
    for task in (0, 1):
        log = (tmp_path / "logs" / f"mathsynth-influence-warmup-{job}_{task}.log").read_text()
        assert "'influence warmup' is a single job, not sharded: submit it without --array" in log, log
        assert "mathsynth influence" not in log  # refused before running anything


# ------------------------------------------------------------- the template without Slurm


def run_template(tmp_path: Path, *args: str, **slurm_vars: str) -> tuple[int, str, str]:
    """Run the script with bash as Slurm would, with a stand-in `mathsynth` that prints its
    arguments; (exit status, output, what the stand-in received)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "mathsynth").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/received\n')
    (fake_bin / "mathsynth").chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(tmp_path), **slurm_vars}
    result = subprocess.run(["bash", str(REPO_ROOT / SBATCH_SCRIPT), *args], check=False, env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    received = tmp_path / "received"
    return result.returncode, result.stdout + result.stderr, received.read_text().strip() if received.exists() else ""


ARRAY_TASK = {"SLURM_JOB_NAME": "mathsynth", "SLURM_JOB_ID": "8", "SLURM_ARRAY_JOB_ID": "7",
              "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0",
              "SLURM_ARRAY_TASK_MAX": "1"}


@pytest.mark.parametrize("args, env, message", [
    ((), ARRAY_TASK, "no config path"),
    (("generate",), ARRAY_TASK, "no config path"),
    (("c.yaml",), ARRAY_TASK, "no command before the config"),
    (("generate", "--set", "a=1", "c.yaml"), ARRAY_TASK, "options go after the config"),
    (("tiny-model", "c.yaml"), ARRAY_TASK, "'tiny-model' is not a stage this template runs"),
    (("eval", "score", "c.yaml"), ARRAY_TASK, "'eval score' is not a stage this template runs"),
    (("generate", "c.yaml", "--shard", "0/2"), ARRAY_TASK, "do not pass --shard"),
    (("distill", "c.yaml", "--shard=0/2"), ARRAY_TASK, "do not pass --shard"),
    (("influence", "warmup", "c.yaml"), ARRAY_TASK, "is a single job, not sharded"),
    (("generate", "c.yaml"), {**ARRAY_TASK, "SLURM_ARRAY_TASK_MAX": "4"}, "array ids must be contiguous"),
])
def test_template_refuses_with_one_line_and_exit_2(tmp_path, args, env, message):
    status, output, received = run_template(tmp_path, *args, **env)
    assert status == 2 and message in output and not received, output


@pytest.mark.parametrize("args, env, expected", [
    (("influence", "featurize", "c.yaml", "--set", "a=b c", "--side", "candidates"), ARRAY_TASK,
     "influence featurize --config c.yaml --set a=b c --side candidates"),
    (("eval", "run", "--config", "c.json", "--limit", "5"), ARRAY_TASK, "eval run --config c.json --limit 5"),
    (("generate", "--config=c.yml"), ARRAY_TASK, "generate --config c.yml"),
    (("influence", "warmup", "c.yaml"), {"SLURM_JOB_NAME": "mathsynth", "SLURM_JOB_ID": "9"},
     "influence warmup --config c.yaml"),
    (("influence", "warmup", "c.yaml"), {**ARRAY_TASK, "SLURM_ARRAY_TASK_COUNT": "1",
                                         "SLURM_ARRAY_TASK_MAX": "0", "SLURM_ARRAY_TASK_ID": "0"},
     "influence warmup --config c.yaml"),
])
def test_template_runs_the_command_with_the_config_and_the_rest(tmp_path, args, env, expected):
    status, output, received = run_template(tmp_path, *args, **env)
    assert status == 0 and received == expected, output


def test_template_log_is_named_after_the_command_unless_the_job_is_named(tmp_path):
    logs = tmp_path / "logs"
    run_template(tmp_path, "eval", "run", "c.yaml", MATHSYNTH_LOG_DIR=str(logs), **ARRAY_TASK)
    run_template(tmp_path, "eval", "run", "c.yaml", MATHSYNTH_LOG_DIR=str(logs),
                 **{**ARRAY_TASK, "SLURM_JOB_NAME": "my-eval"})
    assert sorted(p.name for p in logs.iterdir()) == ["mathsynth-eval-run-7_1.log", "my-eval-7_1.log"]
    line = (logs / "mathsynth-eval-run-7_1.log").read_text()
    assert "job 7 task 1 of 2 (restart 0): mathsynth eval run --config c.yaml" in line, line
