"""The demo recipe run once per test session, as a user would run it (from a folder outside the
repository), killed with SIGKILL in the middle of synth train and rerun. ``tests/test_demo.py``
checks the run; the explorer tests look at its folders (a second eval run beside them)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import REPO_ROOT

# Half the demo's texts and fewer eval problems: the same stages and code paths, a minute less of CI.
SMALLER = ("--set", "shared.texts=96", "--set", "shared.eval_limit=8", "--set", "shared.synth_epochs=24")
ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO_ROOT)}


@dataclass
class DemoRun:
    workdir: Path
    cwd: Path
    killed_output: str  # the first run's output, up to the kill
    output: str  # the rerun's


def demo(workdir: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "demo", "--workdir", str(workdir), *SMALLER, *extra],
                            cwd=cwd, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process: subprocess.Popen, timeout: float) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def run_demo_with_a_kill(cwd: Path) -> DemoRun:
    workdir = cwd / "demo"
    first = demo(workdir, cwd)
    checkpoints = workdir / "synthesizer" / "checkpoints"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and first.poll() is None and not any(checkpoints.glob("step-*")):
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0][-3000:]
    first.send_signal(signal.SIGKILL)  # mid synth train, one checkpoint written
    killed = first.communicate()[0]
    manifest = json.loads((workdir / "synthesizer" / "manifest.json").read_text())
    assert not manifest["complete"], "the kill came after synth train finished"
    return DemoRun(workdir, cwd, killed, finish(demo(workdir, cwd), timeout=900))


class ScriptedStudent:
    """An OpenAI-compatible completions endpoint that answers benchmark questions by a fixed
    script: the gold answer boxed for two problems in four, a wrong number, two different boxed
    answers, or no answer at all for the others (decided by the problem's id). The eval stage
    runs against it like against any endpoint: a second run with right and wrong answers of
    every kind, which the tiny model alone never gives."""

    def __init__(self, benchmarks: list[str], limit: int) -> None:
        from data.benchmarks.registry import load_benchmark

        self.problems = [p for name in benchmarks for p in load_benchmark(name, limit=limit)]

    def answer(self, prompt: str, index: int) -> str:
        problem = next((p for p in self.problems if p.question.strip() in prompt), None)
        if problem is None:
            return "I cannot read the question."
        script = (int(problem.id.rsplit("/", 1)[-1]) + index) % 4
        if script in (0, 1):
            return f"Working through it step by step gives $\\boxed{{{problem.gold}}}$."
        if script == 2:
            return "Adding everything up, the result is \\boxed{123457}."
        return "Either \\boxed{1} or, on second thought, \\boxed{2}." if index else "Let me think about it."

    def __enter__(self) -> str:
        student = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                choices = [{"index": k, "text": student.answer(p, n), "finish_reason": "stop", "logprobs": None}
                           for k, (p, n) in enumerate((p, n) for p in prompts for n in range(body.get("n", 1)))]
                payload = json.dumps({"id": "scripted", "object": "text_completion", "model": body.get("model"),
                                      "choices": choices,
                                      "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


def second_eval_run(run: DemoRun) -> Path:
    """The demo's eval again, with two samples per problem, answered by ``ScriptedStudent``."""
    import yaml

    out = run.workdir / "eval-b"
    config = yaml.safe_load((run.workdir / "recipe" / "configs" / "eval.yaml").read_text())
    with ScriptedStudent(config["benchmarks"], config["limit"]) as url:
        config.update(output=str(out), n=2, prompt="zero_shot", sampling={"max_tokens": 64, "temperature": 1.0},
                      engine={"kind": "openai", "model": "scripted-student", "base_url": url,
                              "api": "completions", "api_key_env": "SCRIPTED_STUDENT_KEY"})
        path = run.cwd / "eval-b.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "pipeline", "eval", "run", "--config", str(path)]
        done = subprocess.run(command, cwd=run.cwd, env={**os.environ, **ENV, "SCRIPTED_STUDENT_KEY": "none"},
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out
