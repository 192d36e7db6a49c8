"""The tool loop with a scripted model: fixed completions that contain code."""
from dataclasses import dataclass

from eval.tool_loop import OUTPUT_MARKER, Trajectory, solve_with_tools, trailing_code
from llm.engine import Engine
from llm.types import Completion, GenerationResult, SamplingParams, Usage


class ScriptedEngine(Engine):
    """Answers each request with the next scripted completion for its trajectory."""

    model_name = "scripted"

    def __init__(self, scripts):
        super().__init__()
        self.scripts = {key: list(turns) for key, turns in scripts.items()}
        self.prompts = []

    def generate(self, requests):
        for request in requests:
            assert OUTPUT_MARKER in request.sampling.stop
            self.prompts.append(request.prompt)
            text = self.scripts[request.id].pop(0)
            self.calls += 1
            yield GenerationResult(request.id, [Completion(text, "stop", 5)], Usage(3, 5))


@dataclass
class Result:
    stdout: str
    stderr: str = ""
    status: str = "ok"
    isolation: str = "test"


class EchoRunner:
    """Stands in for the sandbox: 'runs' code by returning what it was told to print."""

    def __init__(self):
        self.ran = []

    def run_many(self, codes):
        self.ran.extend(codes)
        return [Result(stdout=code.split("print(")[1].split(")")[0] + "\n") if "print(" in code
                else Result("", "Traceback...\nZeroDivisionError: division by zero", "error") for code in codes]


def trajectory(key):
    return Trajectory(key=key, prompt="## Code Solution\n", sampling=SamplingParams(temperature=0))


def test_execute_append_continue_until_the_model_stops():
    engine = ScriptedEngine({
        "a": ["Let me compute.\n```python\nprint(42)\n```\n", "So the answer is \\boxed{42}."],
        "b": ["No code needed: \\boxed{7}."],
        "c": ["```python\n1/0\n```", "```python\nprint(5)\n```", "\\boxed{5}"],
    })
    runner = EchoRunner()
    done = {t.key: t for t in solve_with_tools([trajectory(k) for k in "abc"], engine, runner, max_rounds=4)}
    assert done["a"].text == "Let me compute.\n```python\nprint(42)\n```\n```output\n42\n```\nSo the answer is \\boxed{42}."
    assert [e["status"] for e in done["a"].executions] == ["ok"]
    assert done["b"].executions == [] and done["b"].text.endswith("\\boxed{7}.")
    assert [e["status"] for e in done["c"].executions] == ["error", "ok"]
    assert "```output\nerror: ZeroDivisionError: division by zero\n```" in done["c"].text
    assert done["c"].usage.completion_tokens == 15
    # Each continuation prompt is the original prompt plus everything so far.
    assert engine.prompts[-1].startswith("## Code Solution\n```python\n1/0\n```\n```output\nerror")


def test_rounds_are_capped():
    engine = ScriptedEngine({"loop": ["```python\nprint(1)\n```"] * 3})
    done = list(solve_with_tools([trajectory("loop")], engine, EchoRunner(), max_rounds=2))
    assert len(done) == 1 and len(done[0].executions) == 2 and engine.calls == 3


def test_trailing_code_only_when_the_block_ends_the_text():
    assert trailing_code("x\n```python\nprint(1)\n```\n") == "print(1)\n"
    assert trailing_code("```python\nprint(1)\n```\nThe answer is 1.") is None
    assert trailing_code("no code") is None
