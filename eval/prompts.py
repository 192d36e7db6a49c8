"""Prompts for a benchmark record: JiuZhang3.0's zero-shot format (``## Question`` /
``## Solution``, or ``## Code Solution`` in the tool setting), few-shot chain of thought with
exemplars from a training split, and one chat message for instruct models.

The texts live in ``prompt_templates.yaml``; this module only decides which text, in which
order. Exemplars are chosen per benchmark (seeded, so every run and every problem of a
benchmark sees the same ones) from a pool that holds none of the benchmark's test questions.
"""
from __future__ import annotations

import random
import re
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from data.benchmarks.registry import (
    LETTERS,
    get_spec,
    load_benchmark,
    load_exemplar_pool,
)
from data.errors import ConfigError
from data.records import BenchmarkRecord
from eval.extraction import last_boxed

TEMPLATES_FILE = Path(__file__).resolve().with_name("prompt_templates.yaml")


class PromptSetting(str, Enum):
    zero_shot = "zero_shot"
    few_shot = "few_shot"
    chat = "chat"


@lru_cache(maxsize=1)
def templates() -> dict[str, Any]:
    with open(TEMPLATES_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` for the given names only, in one pass: LaTeX braces in the
    template and placeholders inside the values are left alone."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda match: values[match.group(1)], template)


def problem_text(record: BenchmarkRecord) -> str:
    """The problem as the model sees it: table first (TabMWP), then the question, then the
    options (lettered when graded by letter, listed by text when graded by text)."""
    shown = templates()["problem"]
    if record.table:
        text = fill(shown["table"], table=record.table.strip(), question=record.question.strip())
    else:
        text = fill(shown["plain"], question=record.question.strip())
    if record.choices and record.answer_type == "choice":
        lines = "\n".join(fill(shown["option_line"], letter=LETTERS[i], text=str(choice).strip())
                          for i, choice in enumerate(record.choices))
        text = fill(shown["choice"], problem=text, options=lines)
    elif record.choices:
        text = fill(shown["text_choices"], problem=text,
                    options=shown["option_separator"].join(str(c).strip() for c in record.choices))
    return text


def exemplar_solution(record: BenchmarkRecord) -> str:
    """The exemplar's worked solution, ending by stating its answer (a ``\\boxed{}`` it
    already has, else "The answer is X." in the form its answer type is graded in)."""
    solution = (record.reference_solution or "").strip()
    if last_boxed(solution) is not None or re.search(r"The answer is", solution[-200:]):
        return solution
    sentence = fill(templates()["few_shot"]["answer_sentence"][record.answer_type], answer=record.gold)
    return f"{solution}\n{sentence}" if solution else sentence


def _same_question(a: str, b: str) -> bool:
    return _question_key(a) == _question_key(b)


def _question_key(question: str) -> str:
    """Equal up to case and whitespace (stripping punctuation too would equate
    ``tan 22.5`` with ``tan 225``)."""
    return " ".join(question.lower().split())


@lru_cache(maxsize=None)
def _test_question_keys(name: str, file: str) -> frozenset[str]:
    return frozenset(_question_key(r.question) for r in load_benchmark(name))


def select_exemplars(benchmark: str, k: int = 5, *, seed: int = 0) -> list[BenchmarkRecord]:
    """``k`` exemplars for ``benchmark`` from its pool (see ``EXEMPLAR_POOLS``): the pool is
    shuffled with ``seed`` and the first ``k`` that are not one of the benchmark's test
    questions are taken, so the choice is the same on every machine and run."""
    spec = get_spec(benchmark)
    if spec.few_shot is None:
        raise ConfigError(f"{spec.name}: no few-shot exemplar pool; use zero_shot or chat")
    if k < 0:
        raise ValueError(f"k must be >= 0 (got {k})")
    _, pool = load_exemplar_pool(spec.few_shot)
    tests = _test_question_keys(spec.name, str(spec.file))
    order = list(range(len(pool)))
    random.Random(f"{spec.few_shot}/{seed}").shuffle(order)
    chosen = [pool[i] for i in order if _question_key(pool[i].question) not in tests][:k]
    if len(chosen) < k:
        raise ConfigError(f"{spec.name}: exemplar pool {spec.few_shot!r} has only {len(chosen)} usable exemplars (asked {k})")
    return chosen


def build_prompt(record: BenchmarkRecord, setting: PromptSetting | str = PromptSetting.zero_shot, *, tool: bool = False,
                 exemplars: list[BenchmarkRecord] | None = None, tokenizer: Any = None, shots: int = 5,
                 seed: int = 0) -> str | list[dict[str, str]]:
    """The prompt for ``record``.

    zero_shot: ``## Question\\n{problem}\\n\\n## Solution\\n`` (``## Code Solution`` with ``tool``).
    few_shot: ``exemplars`` (default: ``select_exemplars(record.benchmark, shots, seed=seed)``)
        in the same format with their worked solutions, then the zero-shot prompt. Exemplar
        solutions are natural language in the tool setting too: no split ships code solutions.
    chat: ``[{"role": "user", ...}]`` asking for step-by-step reasoning and a ``\\boxed{}``
        answer (exemplars, when given, become earlier user/assistant turns); rendered with the
        model's chat template when a ``tokenizer`` is given, else left to the engine.
    """
    try:
        setting = PromptSetting(setting)
    except ValueError:
        raise ValueError(f"unknown prompt setting {setting!r}; use zero_shot, few_shot or chat") from None
    texts = templates()
    mode = "tool" if tool else "nl"
    if setting is PromptSetting.few_shot and exemplars is None:
        exemplars = select_exemplars(record.benchmark, shots, seed=seed)
    for exemplar in exemplars or ():
        if _same_question(exemplar.question, record.question):
            raise ValueError(f"{record.id}: exemplar {exemplar.id} is the test question itself")

    if setting is PromptSetting.chat:
        messages: list[dict[str, str]] = []
        for exemplar in exemplars or ():
            messages.append({"role": "user", "content": fill(texts["chat"][mode], problem=problem_text(exemplar))})
            messages.append({"role": "assistant", "content": exemplar_solution(exemplar)})
        messages.append({"role": "user", "content": fill(texts["chat"][mode], problem=problem_text(record))})
        if tokenizer is None:
            return messages
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt setting chat: the tokenizer has no chat template; use zero_shot or few_shot")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    prompt = fill(texts["zero_shot"][mode], problem=problem_text(record))
    if setting is PromptSetting.few_shot and exemplars:
        shown = [fill(texts["few_shot"]["exemplar"], problem=problem_text(e), solution=exemplar_solution(e))
                 for e in exemplars]
        prompt = texts["few_shot"]["separator"].join([*shown, prompt])
    return prompt


__all__ = ["PromptSetting", "build_prompt", "exemplar_solution", "fill", "problem_text", "select_exemplars", "templates"]
