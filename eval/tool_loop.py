"""Tool-integrated solving: the model writes Python, the sandbox runs it, the output is
appended, and generation continues, up to ``max_rounds`` executions per trajectory.

Rounds run as waves over every unfinished trajectory, so the engine still sees large batches
and the sandbox runs a wave's snippets concurrently, instead of one problem at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from data.text import CODE_BLOCK
from llm.engine import Engine
from llm.types import GenerationRequest, SamplingParams, Usage
from sandbox import CodeRunner

OUTPUT_MARKER = "```output"


@dataclass
class Trajectory:
    key: str  # the request id: unique per (problem, sample)
    prompt: str
    sampling: SamplingParams
    text: str = ""  # the model's text with execution outputs spliced in
    executions: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None

    def request(self, stop: tuple[str, ...]) -> GenerationRequest:
        sampling = self.sampling.model_copy(update={"n": 1, "stop": tuple(dict.fromkeys(self.sampling.stop + stop))})
        return GenerationRequest(id=self.key, sampling=sampling, prompt=self.prompt + self.text)


def trailing_code(completion: str) -> str | None:
    """The code of a Python block that ends the completion (the model is waiting for its
    output), else None. Prose after the block means the model moved on without running it."""
    blocks = list(CODE_BLOCK.finditer(completion))
    if not blocks:
        return None
    last = blocks[-1]
    return last.group(1) if not completion[last.end():].strip() else None


def format_output(result: Any, limit: int = 2000) -> str:
    """What the model sees of an execution: its stdout, or the error's last line, cut short
    so a runaway print cannot blow up the context."""
    if result.status == "ok":
        shown = result.stdout
    else:
        tail = (result.stderr or "").strip().splitlines()
        shown = f"{result.status}: {tail[-1] if tail else result.status}"
    shown = shown if len(shown) <= limit else shown[:limit] + "\n...(truncated)"
    return f"{OUTPUT_MARKER}\n{shown.rstrip()}\n```\n"


def execution_record(code: str, result: Any) -> dict[str, Any]:
    return {
        "code": code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "status": result.status,
        "isolation": getattr(result, "isolation", None),
    }


def solve_with_tools(
    trajectories: Iterable[Trajectory],
    engine: Engine,
    runner: CodeRunner,
    *,
    max_rounds: int = 4,
    on_round: Callable[[int, int], None] | None = None,
) -> Iterator[Trajectory]:
    """Yield each trajectory once it is finished: the model stopped without code to run, or
    it used its ``max_rounds`` executions and wrote its last continuation."""
    pending = {t.key: t for t in trajectories}
    for round_index in range(max_rounds + 1):
        if not pending:
            return
        if on_round:
            on_round(round_index, len(pending))
        waiting: list[tuple[Trajectory, str]] = []
        for result in engine.generate([t.request((OUTPUT_MARKER,)) for t in pending.values()]):
            trajectory = pending[result.request_id]
            completion = result.completions[0]
            trajectory.text += completion.text
            trajectory.usage.add(result.usage)
            trajectory.finish_reason = completion.finish_reason
            code = trailing_code(completion.text)
            if code is not None and round_index < max_rounds and completion.finish_reason != "length":
                waiting.append((trajectory, code))
            else:
                yield pending.pop(trajectory.key)
        if not waiting:
            continue
        outputs = runner.run_many([code for _, code in waiting])
        for (trajectory, code), result in zip(waiting, outputs):
            if not trajectory.text.endswith("\n"):
                trajectory.text += "\n"
            trajectory.text += format_output(result)
            trajectory.executions.append(execution_record(code, result))
    yield from pending.values()  # unreachable in practice: the last round yields everything
