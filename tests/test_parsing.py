"""Reading problem/solution texts: the round trip with the text synth writes, the headers real
data uses, and the format rules that used to reject good rows."""
import random

import pytest

from data.stage_prompts.parsing import is_answer, parse_completion, solution_leaked
from data.text import count_tokens
from synth.text_format import pretraining_text

# Pieces real problems and solutions are made of, including the ones a naive parser trips on:
# sub-headers in a solution, "# Solution" comments inside code, code fences, boxes, LaTeX.
PROBLEM_PIECES = [
    "A farmer has $12$ cows and buys $x$ more.", "Evaluate $\\binom{7}{3}$.", "Let $f(x) = x^2 + 3x$.",
    "The grid below is a maze:\n```\n#.#\n...\n#.#\n```", "Fill in the box: $3 + \\boxed{?} = 5$.",
    "How many ways are there?", "Consider the matrix\n$$\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$$",
    "A question: what is the value of $y$?", "Solutions of $x^2=4$ are wanted.", "Problem solving is fun; compute 7*8.",
]
SOLUTION_PIECES = [
    "We add the two numbers.", "### Step 1\nExpand the square.", "### Conclusion:\nThe value follows.",
    "```python\n# Solution: count them\nprint(sum(range(5)))\n```", "```output\n10\n```",
    "Thus the answer is $\\boxed{10}$.", "## Answer is below\nIt is $\\frac{1}{2}$.",
    "```python\nresult = 3 * 4\nresult\n```", "So $x = \\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}$.",
]


def generated_cases(count: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(count):
        problem = "\n\n".join(rng.sample(PROBLEM_PIECES, rng.randint(1, 4)))
        solution = "\n\n".join(rng.choice(SOLUTION_PIECES) for _ in range(rng.randint(1, 5)))
        yield problem, solution, rng.choice(["cot", "tool"])


@pytest.mark.parametrize("case", list(generated_cases(300)), ids=lambda c: str(hash(c) % 10**6))
def test_parse_gives_back_what_pretraining_text_wrote(case):
    problem, solution, variant = case
    parsed, failure = parse_completion(pretraining_text(problem, solution, variant))
    assert failure is None
    assert (parsed.problem, parsed.solution, parsed.variant) == (problem.strip(), solution.strip(), variant)


def test_the_teacher_layout_still_parses():
    parsed, _ = parse_completion("Sure, here you go.\n## Problem\nWhat is 2+3?\n\n## Solution: Add them: "
                                 "$\\boxed{5}$.\n\n## Problem\nA second one")
    assert (parsed.problem, parsed.solution, parsed.final_answer, parsed.variant) == (
        "What is 2+3?", "Add them: $\\boxed{5}$.", "5", "cot")


@pytest.mark.parametrize("header,variant", [
    ("## Solution", "cot"), ("## Code Solution", "tool"), ("## Step-by-Step Solution", "cot"),
    ("### Detailed solution:", "cot"), ("## Python Solution", "tool"), ("## **Solution**", "cot"),
    ("#Solution", "cot"),
])
def test_real_solution_headers(header, variant):
    parsed, failure = parse_completion(f"## Question\nWhat is $6 \\times 7$?\n\n{header}\nIt is $\\boxed{{42}}$.")
    assert failure is None
    assert (parsed.problem, parsed.solution, parsed.variant) == ("What is $6 \\times 7$?", "It is $\\boxed{42}$.", variant)


def test_headers_inside_code_are_code():
    text = ("## Question\nSum 1..4.\n\n## Code Solution\n```python\n# Solution\n## Question\nprint(sum(range(5)))\n```\n"
            "```output\n10\n```\nSo $\\boxed{10}$.")
    parsed, _ = parse_completion(text)
    assert parsed.problem == "Sum 1..4."
    assert parsed.solution.endswith("So $\\boxed{10}$.")
    assert parsed.code_blocks == ["# Solution\n## Question\nprint(sum(range(5)))\n"]


def test_a_solution_in_several_code_blocks_keeps_them_all_in_order():
    text = ("## Question\nq?\n\n## Code Solution\nFirst:\n```python\nx = 2\n```\nThen:\n```python\nprint(x * 3)\n```\n"
            "$\\boxed{6}$")
    parsed, _ = parse_completion(text)
    assert parsed.code_blocks == ["x = 2\n", "print(x * 3)\n"]
    assert parsed.code == "x = 2\n\n\nprint(x * 3)\n"


def test_a_matrix_boxed_over_several_lines_is_an_answer():
    parsed, _ = parse_completion("## Question\nInvert it.\n\n## Solution\nSo $\\boxed{\\begin{pmatrix}\n1 & 0 \\\\\n"
                                 "0 & 1\n\\end{pmatrix}}$.")
    assert parsed.final_answer == "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}"
    assert is_answer(parsed.final_answer)
    assert not is_answer("first part\n\nsecond part")
    assert not is_answer("x" * 201)


def test_leaked_solutions_and_legitimate_problems():
    assert solution_leaked("What is 2+2?\n```python\nprint(4)\n```", "4")
    assert solution_leaked("What is 2+2? It is $\\boxed{4}$.", "4")
    assert not solution_leaked("The grid:\n```\n#.#\n...\n```\nHow many paths?", "6")
    assert not solution_leaked("Fill in: $3 + \\boxed{X} = 5$.", "2")
    assert not solution_leaked("Fill in: $3 + \\boxed{\\phantom{0}} = 5$.", None)


@pytest.mark.parametrize("text,tokens", [
    ("Evaluate $\\binom{7}{3}$.", 4), ("Simplify $\\sqrt{180}$.", 3), ("Find $\\cos 120^\\circ$.", 5),
    ("A train goes 60 miles.", 5), ("$$x^2 + 1 = 0$$", 7), ("-- ?", 0), ("26-18=．", 4), ("What is 2+2?", 5),
])
def test_length_counts_math_tokens(text, tokens):
    assert count_tokens(text) == tokens


def test_a_problem_about_a_program_is_a_problem_and_one_ending_in_code_is_a_leak():
    about = "The code below prints squares:\n```python\nprint([i * i for i in range(5)])\n```\nHow many are even?"
    assert not solution_leaked(about, "3")
    assert solution_leaked("How many squares are even?\n```python\nprint(3)\n```", "3")
    assert solution_leaked("Sum them.\n```output\n10\n```\nWhat is it?", "10")
    assert solution_leaked("Sum them.\n```python\nprint(3)", None)  # a fence left open


def test_a_fence_left_open_in_the_problem_does_not_hide_the_solution():
    text = "## Question\nCount the cuts.\n#### Output\n```\n2\n\n## Solution\nThere are $\\boxed{2}$ cuts."
    parsed, failure = parse_completion(text)
    assert failure is None and parsed.solution == "There are $\\boxed{2}$ cuts."
    assert solution_leaked(parsed.problem, parsed.final_answer)  # the open fence is still a broken problem


@pytest.mark.parametrize("answer,ok", [
    ("\\text{Top-left corner cell (1,1)}", True), ("\\{1, 2\\}", True), ("\\frac{1}{2}", True),
    ("\\boxed{24   miles", False),  # a box left open inside an answer phrase
    ("19/ 30=2 mitial cost of the tickets for the whole class and the teacher together", False),
    ("x}{", False),
])
def test_an_answer_is_short_balanced_and_not_a_sentence(answer, ok):
    assert is_answer(answer) is ok
