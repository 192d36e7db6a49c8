"""Shared test setup: one thread per process (2-core machines, several processes at once),
no hub, and one tiny model for the whole session."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests import their helper modules

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


def sample_texts(limit: int = 200) -> list[str]:
    from data.samples import SAMPLE_CORPUS

    texts = []
    with open(SAMPLE_CORPUS, encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            if len(texts) == limit:
                break
    return texts


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from llm.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=sample_texts())


@pytest.fixture(scope="session")
def tiny_vllm_server(tiny_model, tmp_path_factory):
    """One real vLLM OpenAI-compatible server of the tiny model (served as ``tiny``) for every
    test that talks to one: each start costs ~25 s of CI."""
    from vllm_server import vllm_server

    with vllm_server(tiny_model, tmp_path_factory.mktemp("vllm-server") / "vllm.log", max_model_len=2048) as url:
        yield url


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo recipe, run once per session with a kill and a rerun (tests/demo_run.py)."""
    from demo_run import DemoRun, run_demo_with_a_kill

    if reuse := os.environ.get("MATHSYNTH_TEST_DEMO_CWD"):  # developing the tests that only read the run
        return DemoRun(Path(reuse) / "demo", Path(reuse), killed_output="", output="")
    return run_demo_with_a_kill(tmp_path_factory.mktemp("demo-run"))


@pytest.fixture(scope="session")
def explored_run(demo_run) -> Path:
    """The demo's stage folders plus a second eval run (``eval-b``): what the explorer tests open."""
    from demo_run import second_eval_run

    if not (demo_run.workdir / "eval-b" / "manifest.json").exists():
        second_eval_run(demo_run)
    return demo_run.workdir


@pytest.fixture(scope="module")
def slurm():
    """A local Slurm for the tests of one module (tests/slurm_cluster.py), or a skip with the
    reason where this machine cannot run one."""
    from slurm_cluster import slurm_cluster_or_skip

    cluster = slurm_cluster_or_skip()
    yield cluster
    cluster.stop()


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def kill_when_written(command: list[str], part: Path, at_least: int, env: dict, timeout_s: float = 120.0) -> int:
    """Start ``command``, SIGKILL it once ``part`` holds ``at_least`` records (mid-run), and
    return how many complete lines it had written."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (not part.exists() or part.read_text().count("\n") < at_least):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return part.read_text().count("\n") if part.exists() else 0


# ---------------------------------------------------------------------------------------------
# Training runs (synth train, pretrain)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def model_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    import torch

    wa, wb = model_weights(a), model_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(accelerate_config: str, command: str, config_file: Path, env: dict, timeout: float = 300):
    """``accelerate launch --config_file configs/accelerate/<accelerate_config> -m <command> train``."""
    import subprocess

    launch = [sys.executable, "-m", "accelerate.commands.launch",
              "--config_file", str(REPO_ROOT / "configs" / "accelerate" / accelerate_config),
              "--main_process_port", str(free_port()), "-m", command, "train", "--config", str(config_file)]
    return subprocess.run(launch, check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def kill_after_checkpoint_4(command: str, config_file: Path, out: Path, env: dict) -> int:
    """Run ``python -m <command> train`` with :func:`stalling_train`, SIGKILL it once step 4 is
    checkpointed and step 5 trained past it (and lost); returns the steps in ``batches.jsonl``."""
    import signal
    import subprocess
    import time

    batches = out / "batches.jsonl"
    process = subprocess.Popen([sys.executable, "-c", stalling_train(command), str(config_file)], env=env,
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "checkpoints" / "step-00000004").is_dir() and batches.exists() \
                and len(batches.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(batches.read_text().splitlines())


def stalling_train(command: str) -> str:
    """A script running ``python -m <command> train --config ARGV[1]`` whose optimizer stalls at
    its 6th step, so a kill lands after the step-4 checkpoint and step 5, however fast the
    machine is."""
    return f"""
import sys, time
import torch
from runner.cli import main_for
from {command} import cli
real_step, calls = torch.optim.AdamW.step, []
def stalling_step(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 6:
        time.sleep(300)
    return real_step(self, *args, **kwargs)
torch.optim.AdamW.step = stalling_step
sys.exit(main_for("{command}", cli, ["train", "--config", sys.argv[1]]))
"""
