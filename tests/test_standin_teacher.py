"""The stand-in teacher: a real OpenAI-compatible server that distill runs against."""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT, write_jsonl

from pipeline.standin_teacher import MODEL_NAME, STAND_IN_NOTICE, StandinTeacher

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MATHSYNTH_LOG_LEVEL": "WARNING"}
PROMPT = ("Read the math content below and use it as inspiration to write one new, self-contained\n"
          "grade school math problem for a student in grades 3 to 5, then solve it.\n\nMath content:\n"
          "A baker sells apples and pies; each pie needs three apples and costs twelve dollars.\n\n"
          "Guidelines:\n- Topics to draw on: money.\n\n## Problem\n")


@pytest.fixture(scope="module")
def teacher():
    with StandinTeacher() as server:
        yield server


def post(url: str, path: str, body) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def test_raw_requests_get_well_formed_openai_answers(teacher):
    with urllib.request.urlopen(teacher.url + "/models", timeout=10) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == [MODEL_NAME]

    status, body, headers = post(teacher.url, "/chat/completions", {
        "model": MODEL_NAME, "messages": [{"role": "user", "content": PROMPT}], "n": 2, "seed": 3, "max_tokens": 2500,
        "stop": ["\n## Problem"]})
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == MODEL_NAME
    assert body["system_fingerprint"] == STAND_IN_NOTICE and headers["X-Stand-In"] == STAND_IN_NOTICE
    texts = [c["message"]["content"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1] and texts[0] != texts[1]  # two distinct problems
    for text in texts:
        assert "\n## Solution\n" in text and "\\boxed{" in text and "<<" not in text and "####" not in text
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(PROMPT.split())
    assert usage["completion_tokens"] == sum(len(t.split()) for t in texts)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    status, body, _ = post(teacher.url, "/completions", {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 5})
    choice = body["choices"][0]
    assert status == 200 and body["object"] == "text_completion" and choice["finish_reason"] == "length"
    assert len(choice["text"].split()) == 5 and body["usage"]["completion_tokens"] == 5

    status, body, _ = post(teacher.url, "/completions", {"model": MODEL_NAME, "prompt": PROMPT, "stop": "## Solution"})
    assert status == 200 and "Solution" not in body["choices"][0]["text"] and body["choices"][0]["finish_reason"] == "stop"

    for path, bad in [("/chat/completions", {"model": MODEL_NAME}),
                      ("/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "n": 0}),
                      ("/completions", {"model": MODEL_NAME, "prompt": 3}),
                      ("/completions", {"model": MODEL_NAME, "prompt": "x", "stop": [1]}),
                      ("/completions", b"{not json")]:
        status, body, _ = post(teacher.url, path, bad)
        assert status == 400 and body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    status, body, _ = post(teacher.url, "/completions", {"model": "gpt-4o", "prompt": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_same_prompt_same_answer_in_two_server_runs(tmp_path):
    """The process form: a fresh server answers the same first prompt the same way."""
    texts = []
    for _ in range(2):
        process = subprocess.Popen([sys.executable, "-m", "pipeline.standin_teacher", "--port", "0"], cwd=REPO_ROOT,
                                   env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = process.stdout.readline()
            assert line.startswith("PORT "), line
            url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
            _, body, _ = post(url, "/chat/completions", {"model": MODEL_NAME, "seed": 0,
                                                         "messages": [{"role": "user", "content": PROMPT}]})
            texts.append(body["choices"][0]["message"]["content"])
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0  # SIGTERM is a clean shutdown
    assert texts[0] == texts[1] and "## Solution" in texts[0]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_distill_against_the_standin_teacher(tmp_path):
    samples = [json.loads(line) for line in (REPO_ROOT / "data/samples/stackexchange_math.jsonl").read_text().splitlines()[:8]]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", samples)
    with StandinTeacher() as server:
        config = {
            "input": {"paths": [str(corpus)]},
            "variants": {"cot": 0.6, "tool": 0.4},
            "teacher": {"kind": "openai", "model": MODEL_NAME, "base_url": server.url, "max_in_flight": 1,
                        "timeout_s": 30, "cache_path": str(tmp_path / "cache.sqlite")},
            "sandbox": {"workers": 1},
            "pricing": {"input_per_million": 2.0, "output_per_million": 8.0},
            "output": str(tmp_path / "out"),
        }
        path = tmp_path / "distill.yaml"
        path.write_text(json.dumps(config))
        result = subprocess.run([sys.executable, "-m", "distill", "--config", str(path)], capture_output=True,
                                text=True, env=ENV, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    accepted, rejected = rows(out / "part-00000-of-00001.jsonl"), rows(out / "rejects-00000-of-00001.jsonl")
    assert len(accepted) + len(rejected) == 8
    assert len(accepted) >= 6, [r["reject_reason"] for r in rejected]
    assert all(r["teacher"] == MODEL_NAME for r in accepted)
    sft = rows(out / "sft_chat.jsonl")
    assert len(sft) == len(accepted) and all(s["messages"][1]["content"].count("## Solution") == 1 for s in sft)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["usage"]["prompt_tokens"] > 0 and manifest["usage"]["completion_tokens"] > 0
