"""Teacher outputs: parsing the fixed format and every reason an output is kept or rejected."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from data.stage_prompts.parsing import parse_completion
from distill.validation import (
    CandidateOutput,
    NearDuplicateIndex,
    ValidationConfig,
    Validator,
)
from sandbox import Sandbox, SandboxConfig

SOURCE = (
    "A linear equation in one variable can be solved by isolating the variable. For example, "
    "to solve 2x + 3 = 11 we subtract 3 from both sides and divide by 2, which gives x = 4."
)
PROBLEM = (
    "Maria buys 3 notebooks and a pen for 14 dollars. The pen costs 2 dollars. "
    "How much does one notebook cost?"
)
SOLUTION = (
    "The notebooks cost $14 - 2 = 12$ dollars together. Since there are 3 notebooks of equal "
    "price, one notebook costs $12 / 3 = 4$ dollars. Therefore the answer is \\boxed{4}."
)
COT = f"{PROBLEM}\n\n## Solution\n{SOLUTION}\n"
LONG_PROBLEM = (
    "A farmer plants rows of apple trees in a rectangular orchard. Each row holds the same number "
    "of trees, and the number of rows is three more than the number of trees in each row. After a "
    "storm knocks down four trees, the farmer counts one hundred and twenty four trees still "
    "standing in the orchard, and he wants to know how the orchard was laid out before the storm. "
    "How many trees were in each row before the storm?"
)


def tool_output(code: str, boxed: str) -> str:
    return (
        f"{PROBLEM}\n\n## Solution\nLet the notebook price be $p$; then $3p + 2 = 14$. The program "
        f"searches the whole dollar prices and prints the one that fits the total.\n"
        f"```python\n{code}\n```\nThe program prints the price, so the answer is \\boxed{{{boxed}}}.\n"
    )


def item(completion: str, variant: str = "cot", source: str = SOURCE, key: str = "k") -> CandidateOutput:
    return CandidateOutput(key=key, completion=completion, source_text=source, variant=variant)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(workers=1, wall_timeout_s=5)) as box:
        yield box


@pytest.fixture()
def validator(sandbox):
    with Validator(sandbox=sandbox) as v:
        yield v


def check(validator: Validator, *items: CandidateOutput):
    return validator.check_many(list(items))


# --- parsing -------------------------------------------------------------------------------


def test_parse_plain_and_repeated_header():
    for text in (COT, "## Problem\n" + COT, "Sure, here it is.\n\n### problem:\n" + COT):
        parsed, reason = parse_completion(text)
        assert reason is None
        assert parsed.problem == PROBLEM
        assert parsed.final_answer == "4" and parsed.code is None


@pytest.mark.parametrize("header", ["##Solution", "## Solution:", "## SOLUTION", "### solution :"])
def test_parse_tolerates_solution_headers(header):
    parsed, reason = parse_completion(f"{PROBLEM}\n{header}\n{SOLUTION}")
    assert reason is None and parsed.solution == SOLUTION


def test_parse_stops_at_a_second_problem_and_finds_code():
    text = tool_output("print(4)", "4") + "\n## Problem\nAnother one?\n\n## Solution\n\\boxed{7}"
    parsed, _ = parse_completion(text)
    assert parsed.final_answer == "4" and parsed.code.strip() == "print(4)"
    assert "Another" not in parsed.solution


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), ("   \n", "empty"), (None, "empty"),
    ("## Problem\n\n## Solution\nx is \\boxed{1}", "no_problem"),
    (PROBLEM, "no_solution"), (f"{PROBLEM}\n## Solution\n   ", "no_solution"),
])
def test_parse_failures(text, reason):
    assert parse_completion(text) == (None, reason)


# --- validation ----------------------------------------------------------------------------


def test_config_is_strict():
    with pytest.raises(ValidationError):
        ValidationConfig(min_problem_words=8, typo=1)


def test_well_formed_cot_is_accepted(validator):
    plain, repeated = check(validator, item(COT), item("## Problem\n" + COT.replace("pen", "ruler")))
    assert plain.accepted and plain.reason is None and plain.parsed.final_answer == "4"
    assert plain.details["copy_fraction"] == 0.0
    assert repeated.accepted, repeated


def test_structural_rejections(validator):
    verdicts = check(
        validator,
        item(""),
        item(PROBLEM),
        item(COT.replace("\\boxed{4}", "4")),
        item("How much?\n## Solution\n" + SOLUTION),
    )
    assert [v.reason for v in verdicts] == ["empty", "no_solution", "no_boxed_answer", "problem_too_short"]
    assert not any(v.accepted for v in verdicts)


def test_copied_problem_is_rejected_but_shared_words_are_fine(validator):
    copied = (
        "To solve 2x + 3 = 11 we subtract 3 from both sides and divide by 2. What value of x "
        "does this give?"
    )
    inspired = (
        "Solve the linear equation 5x - 7 = 18 for the variable x, isolating the variable step by step."
    )
    solution = "Add 7 to both sides to get $5x = 25$, then divide both sides by 5, which leaves the value \\boxed{5}."
    bad, good = check(validator, item(f"{copied}\n## Solution\n{SOLUTION}"), item(f"{inspired}\n## Solution\n{solution}"))
    assert bad.reason == "copies_source" and bad.details["copy_fraction"] >= 0.5
    assert good.accepted and 0 <= good.details["copy_fraction"] < 0.5


@pytest.mark.parametrize("solution, rule", [
    ("The answer is \\boxed{12}.", "too_little_working"),
    ("The answer is 12. " * 6 + "So the final answer is \\boxed{12}.", "restates_answer"),
])
def test_cheating_solutions(validator, solution, rule):
    (verdict,) = check(validator, item(f"{PROBLEM}\n## Solution\n{solution}"))
    assert verdict.reason == "cheating" and verdict.details["cheating_rule"] == rule


def test_problem_that_states_its_answer_is_cheating(validator):
    problem = "A rectangle has sides 3 and 4 units long. Show that its area is 12 square units."
    solution = "The area of a rectangle is its length times its width, so here it is $3 \\times 4$ which gives \\boxed{12}."
    (verdict,) = check(validator, item(f"{problem}\n## Solution\n{solution}"))
    assert verdict.reason == "cheating" and verdict.details["cheating_rule"] == "answer_in_problem"
    # the same number elsewhere in the problem is not a give-away
    problem = "A rectangle has sides 3 and 12 units long. What is the area of a square with side 12 minus 132?"
    (verdict,) = check(validator, item(f"{problem}\n## Solution\n{solution}"))
    assert verdict.reason != "cheating"


class CountingSandbox:
    def __init__(self, sandbox):
        self.sandbox, self.calls = sandbox, 0

    def run_many(self, codes):
        self.calls += 1
        return self.sandbox.run_many(codes)


def test_tool_outputs(sandbox):
    search = "for p in range(1, 14):\n    if 3 * p + 2 == 14:\n        print({})"
    counting = CountingSandbox(sandbox)
    with Validator(sandbox=counting) as validator:
        verdicts = check(
            validator,
            item(tool_output(search.format("p * 10 + 2"), "42"), "tool", key="ok"),
            item(tool_output(search.format("p * 10 + 1"), "42").replace("pen", "eraser"), "tool", key="off"),
            item(tool_output(search.format("p / 8"), "\\frac{1}{2}").replace("pen", "marker"), "tool", key="half"),
            item(tool_output("raise ValueError('no price')", "4").replace("pen", "ruler"), "tool", key="raises"),
            item(COT.replace("pen", "stapler"), "tool", key="nocode"),
            item(tool_output("print(42)", "42").replace("pen", "crayon"), "tool", key="constant"),
        )
    assert counting.calls == 1  # the whole batch's code in one run_many
    reasons = {v.parsed.problem.split()[6]: v.reason for v in verdicts}
    assert reasons == {"pen": None, "eraser": "code_answer_mismatch", "marker": None, "ruler": "code_failed",
                       "stapler": "no_code", "crayon": "cheating"}, [v.details for v in verdicts]
    assert verdicts[5].details["cheating_rule"] == "prints_constant"
    assert verdicts[0].accepted and verdicts[2].accepted
    assert verdicts[0].details["code_checked"] and verdicts[0].details["printed_answer"] == "42"
    assert verdicts[1].details["printed_answer"] == "41"
    assert verdicts[3].details["code_status"] == "error"


def test_tool_output_without_a_sandbox_is_not_run():
    with Validator() as validator:
        (verdict,) = check(validator, item(tool_output("print(41)", "42"), "tool"))
    assert verdict.accepted and verdict.details["code_checked"] is False


def test_near_duplicates_in_a_batch_and_across_batches(validator):
    solution = "Let $n$ be the trees per row; then $n(n + 3) = 128$, so $n^2 + 3n - 128 = 0$ and... \\boxed{10}"
    solution = solution.replace("and...", "we solve the quadratic and keep the positive root, which gives")
    twin = LONG_PROBLEM.replace("apple", "pear").replace("farmer", "gardener", 1)
    other = LONG_PROBLEM.replace("How many trees were in each row before the storm?",
                                 "How many rows of trees did the orchard have before the storm?")
    other = "In a quiet village, " + other.replace("rectangular orchard", "square field beside the river")
    other = other.replace("three more than", "twice").replace("four trees", "eight old trees")
    first, dup, different = check(
        validator, *(item(f"{p}\n## Solution\n{solution}", key=str(i)) for i, p in enumerate((LONG_PROBLEM, twin, other)))
    )
    assert first.accepted
    assert dup.reason == "near_duplicate" and dup.details["nearest_jaccard"] >= 0.8
    assert different.accepted and different.details["nearest_jaccard"] < 0.8
    (again,) = check(validator, item(f"{twin}\n## Solution\n{solution}"))
    assert again.reason == "near_duplicate"


def test_remember_makes_a_resumed_run_reject_earlier_problems():
    solution = "Let $n$ be the trees per row; then $n(n + 3) = 128$; we solve the quadratic and keep the positive root \\boxed{10}."
    with Validator() as resumed:
        resumed.remember(LONG_PROBLEM)
        (verdict,) = check(resumed, item(f"{LONG_PROBLEM.replace('apple', 'plum')}\n## Solution\n{solution}"))
    assert verdict.reason == "near_duplicate"


def test_index_is_deterministic_and_exact():
    a, b = NearDuplicateIndex(), NearDuplicateIndex()
    for index in (a, b):
        index.add(LONG_PROBLEM)
    text = LONG_PROBLEM.replace("storm", "flood")
    assert a.nearest(text) == b.nearest(text)
    words = LONG_PROBLEM.lower()
    assert a.nearest(words)[0] == 1.0  # case and punctuation do not matter
    assert a.nearest("a completely unrelated sentence about prime numbers and their gaps") == (0.0, None)


def test_garbage_is_rejected_never_raised(validator):
    rng = random.Random(0)
    vocabulary = ["##", "Problem", "Solution", "\\boxed{", "}", "```python", "```", "$", "x", "=", "the",
                  "\n", "##Solution", "print(", ")", "\\frac{1}{", "{{", "\u00e9", "\x00", "42"]
    completions = ["".join(rng.choice(vocabulary) + rng.choice([" ", "", "\n"]) for _ in range(rng.randint(0, 80)))
                   for _ in range(200)]
    completions += ["## Solution", "## Problem\n## Solution\n## Problem", "\\boxed{", "```python\nwhile True: pass"]
    items = [item(text, rng.choice(["cot", "tool"]), key=str(i)) for i, text in enumerate(completions)]
    verdicts = validator.check_many(items)
    assert len(verdicts) == len(items)
    assert not any(v.accepted for v in verdicts)
    assert all(isinstance(v.reason, str) for v in verdicts)
