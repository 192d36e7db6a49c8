"""mathsynth submit: a recipe as a chain of Slurm jobs.

Without Slurm: every step has a kind and an output, the cluster file is validated (one line
naming file and key, before anything is written), the job scripts and the chain of a dry run,
which shards a partial folder and a still-queued job leave to submit, and status reading the
record. On a real local Slurm (marked slow; tests/slurm_cluster.py): the demo recipe as a chain to completion; a cancelled array task
resubmitted alone gives the records of the uninterrupted chain; a failing step cancels
everything after it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, write_jsonl

from pipeline.cluster import STEP_KINDS
from pipeline.recipe import STAGES, load_recipe
from pipeline.slurm_jobs import _parse, format_indices, parse_indices

DEMO = REPO_ROOT / "configs" / "recipes" / "demo.yaml"
SMALL = ["--set", "shared.synth_epochs=2", "--set", "shared.texts=8", "--set", "shared.eval_limit=4"]
JOB_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


def demo_recipe(tmp: Path, base: Path, shards: int = 2) -> Path:
    """The demo recipe with its files under ``tmp``, synth_generate as ``shards`` array tasks,
    and the transformers engine where the demo uses vLLM."""
    recipe = yaml.safe_load(DEMO.read_text())
    recipe["workdir"] = str(tmp / "work")
    recipe["shared"].update(root=str(tmp / "root"), base=str(base), corpus=str(REPO_ROOT / recipe["shared"]["corpus"]))
    recipe["stages"]["synth_generate"]["shards"] = shards
    # The chain is what these tests are about: generation through transformers spares each
    # array task and the eval job a vLLM start (tests/test_demo.py runs the recipe on vLLM).
    for stage, model in (("synth_generate", "${synth_train.output}"), ("eval", "${pretrain.output}")):
        recipe["stages"][stage]["config"]["engine"] = {"kind": "hf", "model": model, "dtype": "float32"}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def write_cluster(tmp: Path, text: str = "default: {time: '00:30:00'}\n") -> Path:
    path = tmp / "cluster.yaml"
    path.write_text(text)
    return path


def mathsynth(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=120)


def test_every_step_has_a_kind_and_writes_its_own_output():
    for name, kind in STAGES.items():
        assert len(kind.steps) == len(kind.outputs), name  # step i writes outputs[i]
        for step in kind.steps:
            assert step.command in STEP_KINDS, (name, step.command)


def test_array_indices_and_queue_lines_are_read_as_slurm_writes_them():
    assert format_indices([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8" and parse_indices("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert _parse("12_0|RUNNING\n12_[1-3%2]|PENDING\n13|CANCELLED by 0\n13.batch|CANCELLED\n") == {
        "12": {0: "RUNNING", 1: "PENDING", 2: "PENDING", 3: "PENDING"}, "13": {0: "CANCELLED"}}


# ---------------------------------------------------------------------------------------------
# Without Slurm: the cluster file, the scripts, the plan


@pytest.mark.parametrize("text, message", [
    ("gpu: {partitions: gpu}\n", r"cluster.yaml: gpu.partitions: unknown key"),
    ("cpu: {nodes: 2}\n", r"cluster.yaml: cpu.nodes: unknown key"),  # only train spans nodes
    ("train: {gres: 'gpu 8'}\n", r"cluster.yaml: train.gres: expected one word"),
    ("default: {options: [qos=high]}\n", r"cluster.yaml: default.options.0: expected an sbatch option"),
    ("train: {nodes: 2}\n", r"cluster.yaml: train.nodes: 2 nodes need train.accelerate_config"),
    ("train: {accelerate_config: /nowhere/fsdp.yaml}\n", r"cluster.yaml: train.accelerate_config: /nowhere/fsdp.yaml "
                                                         r"does not exist"),
    ("- a list\n", r"cluster.yaml: the top level must be a mapping"),
])
def test_a_bad_cluster_file_is_one_line_naming_file_and_key_before_anything_is_written(tmp_path, text, message):
    from data.errors import ConfigError
    from pipeline.cluster import load_cluster

    with pytest.raises(ConfigError, match=message) as failure:
        load_cluster(write_cluster(tmp_path, text))
    assert "\n" not in str(failure.value)
    recipe = demo_recipe(tmp_path, tmp_path)
    done = mathsynth("submit", "--recipe", str(recipe), "--cluster", str(tmp_path / "cluster.yaml"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cluster.yaml: " in done.stderr, done.stderr
    assert not (tmp_path / "work").exists()


def test_kinds_inherit_the_default_and_train_runs_accelerate_on_every_node(tmp_path):
    from pipeline.cluster import load_cluster
    from pipeline.recipe_submit import job_script, plan

    cluster = load_cluster(write_cluster(tmp_path, f"""
default: {{account: acct, time: "04:00:00", setup: ["source venv/bin/activate"], options: [--qos=high]}}
gpu: {{partition: gpu, gres: "gpu:1"}}
train: {{partition: big, gres: "gpu:8", nodes: 2, time: "24:00:00", setup: ["module load cuda"],
        accelerate_config: {REPO_ROOT}/configs/accelerate/fsdp.yaml}}
"""))
    recipe = load_recipe(demo_recipe(tmp_path, tmp_path))
    jobs = {job.name: job for job in plan(recipe, recipe.stages, {})}
    assert list(jobs) == ["influence-influence-warmup", "influence-influence-featurize", "influence-influence-select",
                          "distill-distill", "synth_train-synth-train", "synth_generate-synth-generate",
                          "synth_filter-synth-filter", "pretrain-pretrain-tokenize", "pretrain-pretrain-train",
                          "eval-eval-run"]
    generate = job_script(recipe, jobs["synth_generate-synth-generate"], cluster, REPO_ROOT)
    config = tmp_path / "work" / "configs" / "synth_generate.yaml"
    assert generate.splitlines()[2:] == [
        "#SBATCH --job-name=mathsynth-synth_generate-synth-generate",
        f"#SBATCH --output={tmp_path}/work/logs/synth_generate-synth-generate-%A_%a.log",
        "#SBATCH --open-mode=append", "#SBATCH --requeue", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=gpu", "#SBATCH --account=acct", "#SBATCH --gres=gpu:1", "#SBATCH --time=04:00:00",
        "#SBATCH --qos=high", "set -euo pipefail", f"cd {REPO_ROOT}", "source venv/bin/activate",
        *generate.splitlines()[16:-1],
        f"exec mathsynth synth generate --config {config} --shard ${{SLURM_ARRAY_TASK_ID}}/2"]
    train = job_script(recipe, jobs["synth_train-synth-train"], cluster, REPO_ROOT)
    assert "#SBATCH --nodes=2" in train and "#SBATCH --partition=big" in train and "module load cuda" in train
    assert "source venv/bin/activate" not in train and "#SBATCH --account=acct" in train  # setup replaced, rest kept
    assert train.splitlines()[-1] == (f"exec bash {REPO_ROOT}/slurm/train.sbatch synth "
                                      f"{tmp_path}/work/configs/synth_train.yaml {REPO_ROOT}/configs/accelerate/fsdp.yaml")
    warmup = job_script(recipe, jobs["influence-influence-warmup"], cluster, REPO_ROOT)
    assert "#SBATCH --nodes=1" in warmup and warmup.splitlines()[-1].startswith("exec mathsynth influence warmup --config")
    select = job_script(recipe, jobs["influence-influence-select"], cluster, REPO_ROOT)
    assert "--gres" not in select and "--partition" not in select and "--shard" not in select  # cpu: the default only
    for script in (generate, train, warmup, select):
        checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_a_dry_run_prints_the_scripts_and_the_chain_and_writes_nothing(tmp_path):
    recipe = demo_recipe(tmp_path, tmp_path)
    done = mathsynth("submit", "--recipe", str(recipe), "--cluster", str(write_cluster(tmp_path)), "--dry-run",
                     "--from", "synth_generate", "--to", "pretrain", *SMALL)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("#!/bin/bash") == 4 and f"--- {tmp_path}/work/slurm/synth_filter-synth-filter.sbatch" in out
    assert "#SBATCH --time=00:30:00" in out and "influence warmup" not in out
    assert out.splitlines()[-4:] == [
        "synth_generate: synth generate: would submit array 0-1 of 2 shards",
        "synth_filter: synth filter: would submit array 0 of 1 shards after synth generate",
        "pretrain: pretrain tokenize: would submit array 0 of 1 shards after synth filter",
        "pretrain: pretrain train: would submit one job after pretrain tokenize"]
    assert not (tmp_path / "work").exists() and not (tmp_path / "root").exists()


def test_a_partial_folder_leaves_its_missing_shards_and_a_queued_job_is_waited_on(tmp_path):
    from pipeline.recipe_submit import chain_lines, plan
    from pipeline.slurm_jobs import SubmissionRecord

    recipe = load_recipe(demo_recipe(tmp_path, tmp_path, shards=4))
    generated = Path(recipe.stage("synth_generate").final_output)
    generated.mkdir(parents=True)
    (generated / "manifest.json").write_text(json.dumps({"complete": False, "num_shards": 4, "shards_done": [0, 2]}))
    for stage in recipe.stages[:3]:  # influence, distill, synth_train complete
        for key in stage.outputs:  # featurize's manifest is in its candidates folder
            Path(stage.state_folder(key)).mkdir(parents=True)
            (Path(stage.state_folder(key)) / "manifest.json").write_text(json.dumps({"complete": True, "num_shards": 1}))
    record = SubmissionRecord(recipe.workdir)
    record.add({"stage": "synth_generate", "step": "synth generate", "job_id": "40", "array": True,
                "indices": [0, 1, 2, 3], "time": "t", "script": "s"})
    record.add({"stage": "synth_filter", "step": "synth filter", "job_id": "41", "array": True, "indices": [0],
                "time": "t", "script": "s"})
    # Task 1 was cancelled, 3 still runs; 41 waits on all of 40, so it would never run.
    jobs = plan(recipe, recipe.stages, {"40": {3: "RUNNING"}, "41": {0: "PENDING"}})
    generate, filtering = jobs[5], jobs[6]
    assert (generate.todo, generate.waiting_on, generate.replaced) == ([1], ["40_3"], [])
    assert (filtering.todo, filtering.waiting_on, filtering.replaced) == ([0], [], ["41_0"])
    lines = chain_lines(jobs, dry_run=True)
    assert lines[0] == f"influence: influence warmup: complete ({tmp_path}/root/influence/warmup); skipped"
    assert lines[5:7] == ["synth_generate: synth generate: would submit array 1 of 4 shards; still queued: 40_3",
                          "synth_filter: synth filter: would submit array 0 of 1 shards after synth generate; "
                          "would cancel 41_0 (pending after a step submitted again)"]
    (generated / "manifest.json").write_text(json.dumps({"complete": False, "num_shards": 4,
                                                         "shards_done": [0, 1, 2]}))
    generate, filtering = plan(recipe, recipe.stages, {"40": {3: "RUNNING"}, "41": {0: "PENDING"}})[5:7]
    assert (generate.todo, generate.waiting_on) == ([], ["40_3"])  # nothing to submit: 41 is waited on
    assert (filtering.todo, filtering.waiting_on, filtering.replaced) == ([], ["41_0"], [])


def test_status_lists_the_submitted_jobs_of_each_step(tmp_path):
    from pipeline.recipe_run import status_lines
    from pipeline.slurm_jobs import SubmissionRecord

    recipe = load_recipe(demo_recipe(tmp_path, tmp_path))
    assert not any("slurm" in line for line in status_lines(recipe))  # nothing submitted: as before
    record = SubmissionRecord(recipe.workdir)
    record.add({"stage": "synth_generate", "step": "synth generate", "job_id": "40", "array": True,
                "indices": [0, 1], "time": "t", "script": "s"})
    record.add({"stage": "synth_generate", "step": "synth generate", "job_id": "45", "array": True,
                "indices": [1], "time": "t", "script": "s"})
    record.add({"stage": "synth_train", "step": "synth train", "job_id": "39", "array": False, "indices": [0],
                "time": "t", "script": "s"})
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no Slurm clients: just the ids
    done = mathsynth("status", "--recipe", str(recipe.path), env=env)
    lines = done.stdout.splitlines()
    assert "   slurm synth train: job 39" in lines
    at = lines.index("4. synth_generate")
    assert lines[at + 2] == "   slurm synth generate: job 40 [0-1]; job 45 [1]", done.stdout


def test_submit_without_sbatch_is_one_line(tmp_path):
    recipe = demo_recipe(tmp_path, tmp_path)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    done = mathsynth("submit", "--recipe", str(recipe), "--cluster", str(write_cluster(tmp_path)), env=env)
    assert done.returncode == 2 and done.stderr.startswith("mathsynth submit: error: sbatch not found on PATH")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "work").exists()


# ---------------------------------------------------------------------------------------------
# On a real local Slurm


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    from llm.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("demo-model") / "tiny")


@pytest.fixture(scope="module")
def teacher():
    from pipeline.standin_teacher import StandinTeacher

    with StandinTeacher() as server:
        yield server


def submit_env(slurm) -> dict[str, str]:
    """The submitting shell of a user: Slurm's clients, the venv on PATH; jobs inherit it."""
    env = slurm.env()
    env.update(JOB_ENV, PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    return env


def submit(slurm, recipe: Path, cluster: Path, *args: str) -> subprocess.CompletedProcess:
    done = mathsynth("submit", "--recipe", str(recipe), "--cluster", str(cluster), *args, env=submit_env(slurm))
    assert done.returncode == 0, done.stderr
    return done


def wait_until_idle(slurm, workdir: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while slurm.job_ids():
        if time.monotonic() > deadline:
            slurm.cancel_all_jobs()
            pytest.fail(f"jobs still queued after {timeout_s:.0f}s\n{job_logs(workdir)}")
        time.sleep(0.5)


def job_logs(workdir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted((workdir / "logs").glob("*")))


def submissions(workdir: Path) -> list[dict]:
    return json.loads((workdir / "submitted.json").read_text())["submissions"]


def states_of(slurm, workdir: Path) -> dict[str, dict[str, str]]:
    """"stage step" -> task -> final state, for every recorded submission."""
    found = {}
    for entry in submissions(workdir):
        for task, state in slurm.job_states(entry["job_id"]).items():
            found.setdefault(entry["step"], {})[f"{entry['job_id']}:{task}"] = state
    return found


def records(folder: Path) -> list[dict]:
    """The records of a stage folder by id, without the synthesizer's path (each test has its own)."""
    rows = [json.loads(line) for part in sorted(folder.glob("part-*.jsonl")) for line in part.read_text().splitlines()]
    return sorted(({k: v for k, v in row.items() if k != "model"} for row in rows), key=lambda row: row["id"])


@pytest.fixture(scope="module")
def demo_chain(slurm, base_model, teacher, tmp_path_factory) -> Path:
    """The demo recipe submitted as one chain and run to completion: the uninterrupted reference."""
    tmp = tmp_path_factory.mktemp("chain")
    recipe = demo_recipe(tmp, base_model)
    done = submit(slurm, recipe, write_cluster(tmp), *SMALL, "--set", f"shared.teacher_url={teacher.url}")
    assert len(done.stdout.splitlines()) == 10, done.stdout
    wait_until_idle(slurm, tmp / "work")
    return tmp


@pytest.mark.slow
def test_the_demo_recipe_runs_as_a_chain_of_jobs_to_completion(slurm, demo_chain, teacher):
    from pipeline.recipe_run import recipe_complete

    work = demo_chain / "work"
    recipe = load_recipe(demo_chain / "recipe.yaml", {"teacher_url": teacher.url})
    assert recipe_complete(recipe), job_logs(work)
    entries = submissions(work)
    assert [(e["stage"], e["step"], e["indices"]) for e in entries] == [
        ("influence", "influence warmup", [0]), ("influence", "influence featurize", [0]),
        ("influence", "influence select", [0]), ("distill", "distill", [0]), ("synth_train", "synth train", [0]),
        ("synth_generate", "synth generate", [0, 1]), ("synth_filter", "synth filter", [0]),
        ("pretrain", "pretrain tokenize", [0]), ("pretrain", "pretrain train", [0]), ("eval", "eval run", [0])]
    assert all(state == "COMPLETED" for tasks in states_of(slurm, work).values() for state in tasks.values())
    for name in ("synth_generate-synth-generate-", "pretrain-pretrain-train-"):
        assert any(p.name.startswith(name) for p in (work / "logs").iterdir()), name
    status = mathsynth("status", "--recipe", str(demo_chain / "recipe.yaml"), *SMALL, "--set",
                       f"shared.teacher_url={teacher.url}", env=submit_env(slurm))
    assert status.returncode == 0, status.stderr
    generate = next(e for e in entries if e["step"] == "synth generate")
    assert f"   slurm synth generate: job {generate['job_id']} [0-1] " in status.stdout  # then its state, if Slurm says

    again = submit(slurm, demo_chain / "recipe.yaml", demo_chain / "cluster.yaml", *SMALL,
                   "--set", f"shared.teacher_url={teacher.url}")
    assert again.stdout.count("; skipped") == 10 and len(submissions(work)) == 10  # nothing submitted twice


@pytest.mark.slow
def test_a_cancelled_array_task_is_resubmitted_alone_and_the_records_equal_the_uninterrupted_chain(
        slurm, demo_chain, base_model, teacher, tmp_path):
    import shutil

    recipe = demo_recipe(tmp_path, base_model)
    for folder in ("influence", "distill", "synthesizer"):  # what comes before synth generate: done
        shutil.copytree(demo_chain / "root" / folder, tmp_path / "root" / folder)
    cluster, work = write_cluster(tmp_path), tmp_path / "work"
    sets = [*SMALL, "--set", f"shared.teacher_url={teacher.url}", "--to", "synth_filter"]
    submit(slurm, recipe, cluster, *sets)
    generate, filtering = submissions(work)
    assert (generate["step"], generate["indices"], filtering["step"]) == ("synth generate", [0, 1], "synth filter")
    slurm.run("scancel", f"{generate['job_id']}_1")  # before it has loaded its model
    # While task 0 still runs: it is waited on, not resubmitted; the filter job (pending on the
    # whole array, so never to run) is cancelled and submitted again after the new task.
    again = submit(slurm, recipe, cluster, *sets)
    assert f"array 1 of 2 shards; still queued: {generate['job_id']}_0" in again.stdout, again.stdout
    assert f"; cancelled {filtering['job_id']}_0 (pending after a step submitted again)" in again.stdout
    wait_until_idle(slurm, work)
    assert [(e["step"], e["indices"]) for e in submissions(work)[2:]] == [("synth generate", [1]),
                                                                         ("synth filter", [0])]
    first, second = generate["job_id"], submissions(work)[2]["job_id"]
    states = states_of(slurm, work)["synth generate"]
    # A task cancelled while still pending leaves the array (no record), a running one is CANCELLED.
    assert states.pop(f"{first}:1", "CANCELLED") == "CANCELLED"
    assert states == {f"{first}:0": "COMPLETED", f"{second}:1": "COMPLETED"}, job_logs(work)
    assert sorted(states_of(slurm, work)["synth filter"].values()) == ["CANCELLED", "COMPLETED"], job_logs(work)
    for folder in ("synthetic", "synthetic-filtered"):
        assert records(tmp_path / "root" / folder) == records(demo_chain / "root" / folder), folder
    assert records(tmp_path / "root" / "synthetic")  # something to compare


@pytest.mark.slow
def test_a_failing_step_cancels_every_job_after_it(slurm, base_model, tmp_path):
    rows = [{"prompt": "p"}]  # no completion: synth train stops on its first row
    sft = write_jsonl(tmp_path / "distill" / "sft_raw.jsonl", rows)
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"What is {i} + {i}?"} for i in range(8)])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "workdir": str(tmp_path / "work"),
        "stages": {
            "synth_train": {"config": {"model": str(base_model), "data": {"path": str(sft)},
                                       "output": str(tmp_path / "synth-model")}},
            "pretrain": {"config": {"model": "${synth_train.output}", "tokenized": str(tmp_path / "tokens"),
                                    "output": str(tmp_path / "final"), "sources": [{"paths": [str(texts)]}]},
                         "shards": 2},
        }}))
    submit(slurm, recipe, write_cluster(tmp_path))
    wait_until_idle(slurm, tmp_path / "work", timeout_s=120)
    states = states_of(slurm, tmp_path / "work")
    assert set(states["synth train"].values()) == {"FAILED"}, job_logs(tmp_path / "work")
    assert set(states["pretrain tokenize"].values()) == {"CANCELLED"}
    assert set(states["pretrain train"].values()) == {"CANCELLED"}
    assert not (tmp_path / "tokens").exists()
    log = next((tmp_path / "work" / "logs").glob("synth_train-synth-train-*.log")).read_text()
    assert "sft_raw.jsonl:1: a raw row needs string fields prompt and completion" in log


@pytest.mark.slow
def test_with_an_accelerate_config_pretrain_train_runs_accelerate_launch_through_srun(slurm, base_model, tmp_path):
    qa = [{"text": f"## Question\nWhat is {i} + {i}?\n\n## Solution\n{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}\n"}
          for i in range(24)]
    data = write_jsonl(tmp_path / "qa.jsonl", qa)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "workdir": str(tmp_path / "work"),
        "stages": {"pretrain": {"config": {"model": str(base_model), "tokenized": str(tmp_path / "tokens"),
                                           "output": str(tmp_path / "final"), "sources": [{"paths": [str(data)]}],
                                           "max_length": 128, "per_device_batch_size": 2, "save_steps": 1000},
                                "shards": 2}}}))
    cluster = write_cluster(tmp_path, f"train: {{accelerate_config: {REPO_ROOT}/configs/accelerate/cpu-2proc.yaml}}\n")
    submit(slurm, recipe, cluster)
    wait_until_idle(slurm, tmp_path / "work", timeout_s=180)
    states = states_of(slurm, tmp_path / "work")
    assert list(states["pretrain tokenize"].values()) == ["COMPLETED"] * 2, job_logs(tmp_path / "work")
    assert list(states["pretrain train"].values()) == ["COMPLETED"], job_logs(tmp_path / "work")
    result = json.loads((tmp_path / "final" / "manifest.json").read_text())
    assert result["complete"] and result["stats"]["processes"] == 2  # the accelerate file's 2 CPU processes
