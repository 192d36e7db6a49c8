"""The JiuZhang3.0 pre-training text of a synthetic problem: the format its released corpus uses
and its evaluation prompts ask for, so a model pre-trained on it answers the eval prompt the same
way. Tool data is marked ``## Code Solution`` (the eval's tool setting), everything else
``## Solution``."""
from __future__ import annotations

SOLUTION_HEADERS = {"cot": "## Solution", "tool": "## Code Solution"}


def pretraining_text(problem: str, solution: str, variant: str) -> str:
    header = SOLUTION_HEADERS.get(variant, SOLUTION_HEADERS["cot"])
    return f"## Question\n{problem.strip()}\n\n{header}\n{solution.strip()}\n"
