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
