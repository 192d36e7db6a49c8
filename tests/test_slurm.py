"""slurm/generate.sbatch on a real single-node Slurm (tests/slurm_cluster.py).

An array of 2 tasks writes the 2 shards of one output, the same records as a one-shard local
run; resubmitting the same array after a "preemption" regenerates nothing. Skipped where
Slurm is not installed or we are not root.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import slurm_cluster_or_skip

from data.samples import SAMPLE_CORPUS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
SBATCH_SCRIPT = "slurm/generate.sbatch"  # relative, as a user types it from the repo root
JOB_TIMEOUT_S = 120
TOKENIZER_TEXTS = [
    "What is 2 + 3? The answer is 5.",
    "Solve x^2 = 4: x = 2 or x = -2.",
    "The area of a circle of radius r is \\pi r^2.",
    "Find the sum of the first 10 positive integers: \\boxed{55}.",
] * 10


@pytest.fixture(scope="module")
def slurm():
    cluster = slurm_cluster_or_skip()
    yield cluster
    cluster.stop()


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


def submit_and_wait(slurm, env: dict[str, str], tmp_path: Path, *args: str) -> None:
    """Submit the template as a 2-task array from the repo root; wait until both tasks end."""
    command = [
        "sbatch", "--parsable", "--array=0-1", f"--output={tmp_path}/slurm-%A_%a.out", SBATCH_SCRIPT, *args,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    job_id = result.stdout.strip().split(";")[0]
    try:
        states = slurm.wait_for_job(job_id, timeout_s=JOB_TIMEOUT_S)
    except TimeoutError as err:
        slurm.cancel_all_jobs()
        pytest.fail(f"{err}\n{job_logs(tmp_path)}\n{slurm.logs()}")
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
        submit_and_wait(slurm, env, tmp_path, str(config), *extra)
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
    submit_and_wait(slurm, env, tmp_path, str(config), *extra)

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
