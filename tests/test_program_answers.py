"""Program checks (sandbox.program_answers) on the real sandbox and the real grader: notebook
semantics over several code blocks, the packages a program may import, and reading what Python,
sympy and numpy print as the answer a solution boxes."""
from __future__ import annotations

import pytest

from data.text import code_blocks
from eval.grading import Grader
from sandbox import PACKAGES, Sandbox, SandboxConfig
from sandbox.printed import answer_candidates, last_printed_value, to_latex
from sandbox.program_answers import check_programs, numbers_agree


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(workers=2, wall_timeout_s=20, max_output_bytes=4096)) as box:
        yield box


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=1) as g:
        yield g


def reasons(sandbox, grader, programs, boxed, **options) -> list[str | None]:
    return [check.reason for check in check_programs(programs, boxed, sandbox, grader, **options)]


# --- notebook semantics ---------------------------------------------------------------------


def test_blocks_run_in_order_in_one_namespace_and_echo_their_last_expression(sandbox, grader):
    solution = ("First the roots:\n```python\nimport sympy as sp\nx = sp.symbols('x')\n"
                "roots = sp.solve(x**2 - 4*x + 1, x)\nroots\n```\n```output\n[2 - sqrt(3), sqrt(3) + 2]\n```\n"
                "Then the sum of their cubes:\n```python\nsp.expand(sum(r**3 for r in roots))\n```\n"
                "```output\n52\n```\nSo the answer is \\boxed{52}.")
    blocks = code_blocks(solution)
    assert len(blocks) == 2  # the output block is not code
    checks = check_programs([blocks], ["52"], sandbox, grader)
    assert checks[0].reason is None, checks[0].details()
    # Each block shows its value, as the cells of a notebook do: the roots, then the sum.
    assert checks[0].stdout_tail.splitlines() == ["[2 - sqrt(3), sqrt(3) + 2]", "52"]
    # The last block alone does not know the roots.
    assert reasons(sandbox, grader, [blocks[-1]], ["52"]) == ["code_failed"]


def test_echo_is_an_option_and_follows_ipython(sandbox, grader):
    ends_bare = ["total = 3 + 4", "total"]
    assert reasons(sandbox, grader, [ends_bare], ["7"]) == [None]
    assert reasons(sandbox, grader, [ends_bare], ["7"], echo_last_expression=False) == ["code_answer_mismatch"]
    # Without the option, the sandbox's config says (a stage's `sandbox:` section).
    quiet = _Delegate(sandbox, SandboxConfig(echo_last_expression=False))
    assert check_programs([ends_bare], ["7"], quiet, grader)[0].reason == "code_answer_mismatch"
    # A trailing ";" hides the value; None shows nothing; a plain string program is one block.
    checks = check_programs([["print(5)", "6;"], ["print(8)", "None"], "print(9)\n9 * 2"], ["5", "8", "18"],
                            sandbox, grader)
    assert [c.reason for c in checks] == [None, None, None], [c.details() for c in checks]


class _Delegate:
    """The real sandbox under another config: what a stage's ``sandbox:`` section would say."""

    def __init__(self, box: Sandbox, config: SandboxConfig):
        self.box, self.config = box, config

    def run_many(self, codes):
        return self.box.run_many(codes)


def test_names_stay_the_programs_own(sandbox, grader):
    # The driver leaves no names behind; __name__ is "__main__" as in a script.
    program = ["import sys", "print(sorted(n for n in globals() if not n.startswith('__')))",
               "if __name__ == '__main__':\n    print(42)"]
    (check,) = check_programs([program], ["42"], sandbox, grader)
    assert check.reason is None and "['sys']" in check.stdout_tail, check.details()


# --- packages and failures ------------------------------------------------------------------


def test_the_documented_packages_are_importable_in_the_sandbox(sandbox, grader):
    assert set(PACKAGES) >= {"numpy", "sympy", "scipy", "mpmath"}
    assert sandbox.missing_packages == ()
    program = ("import fractions, itertools, math, " + ", ".join(PACKAGES) + "\n"
               "from scipy import integrate, optimize, stats\n"
               "print(round(integrate.quad(lambda t: t * t, 0, 3)[0], 6))")
    assert reasons(sandbox, grader, [program], ["9"]) == [None]


def test_a_missing_module_is_its_own_reason(grader):
    programs = ["import mathsynth_no_such_module\nprint(1)", "from math import no_such_name\nprint(1)",
                "print(1 / 0)", "while True:\n    pass"]
    with Sandbox(SandboxConfig(workers=1, wall_timeout_s=2)) as box:  # the loop is cut at 2 s, not 20
        assert reasons(box, grader, programs, ["1"] * 4) == [
            "code_missing_module", "code_missing_module", "code_failed", "code_failed"]


def test_a_flood_of_output_has_no_last_line(grader):
    with Sandbox(SandboxConfig(workers=1, max_output_bytes=256)) as box:
        (check,) = check_programs(["print('x' * 10_000)\nprint(7)"], ["7"], box, grader)
    assert check.reason == "code_answer_mismatch" and check.grade == "output_truncated"


# --- what a program prints, read as an answer ---------------------------------------------

ACCEPTED = [  # (program, boxed answer)
    ("import sympy as sp\nprint(3*sp.pi/2)", r"\frac{3\pi}{2}"),
    ("import sympy as sp\nprint(2.0*sp.pi)", r"2\pi"),
    ("import sympy as sp\nprint(2 - 5*sp.I)", "2-5i"),
    ("print(1+2j)", "1+2i"),
    ("import sympy as sp\nprint(sp.Matrix([[1, 2], [3, 4]]))", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"),
    ("import numpy as np\nprint(np.array([1., 2., 3.]))", "1, 2, 3"),
    ("import numpy as np\nprint(np.array([[1, 2], [3, 4]]))", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"),
    ("import numpy as np\nnp.array([1, 2])", "1, 2"),
    ("import numpy as np\nnp.float64(2.5)", "2.5"),
    ("import sympy as sp\nprint(sp.sqrt(3)/3)", r"\frac{\sqrt{3}}{3}"),
    ("import sympy as sp\nprint(sp.E)", "e"),
    ("import sympy as sp\nprint(-sp.oo)", r"-\infty"),
    ("import sympy as sp\nprint(sp.Rational(1, 3))", r"\frac{1}{3}"),
    ("from fractions import Fraction\nFraction(2, 6)", r"\frac{1}{3}"),
    ("import sympy as sp\nx, y = sp.symbols('x y')\nprint(sp.solve([x + y - 5, x - y - 1], [x, y]))", "(3, 2)"),
    ("print([1, 9])", "1, 9"),
    ("print('Total:', 7)", "7"),
    ("print('The net present value of the annuity is: $9,581.70')", "9,581.70"),
    ("print('Hypotenuse: 5.0, Area: 6.0')", "6.0"),
    ("print('The polygon has 6 sides.')", "6"),
    ("import math\nprint(math.pi)", "3.14"),
    ("print(9581.7012)", "9,581.70"),
    ("print(60.9763006703184)", r"60.98 \text{ meters}"),
    ("print(6.6741e-11)", r"6.674 \times 10^{-11} \, \text{N}"),
    ("print(17.999999999999996)", "18"),
    ("print('right')", r"\text{right}"),
    ("print('The endomorphic cipher is perfect.')", r"\text{The endomorphic cipher is perfect.}"),
    ("print('[[1 2]')\nprint(' [3 4]]')", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"),
]
REJECTED = [  # a different value, however it is printed
    ("print(3.146)", "3.14"),  # more than half a unit of the last place away
    ("print(7.4)", "7"),  # an integer box is a count, not a rounding
    ("print(3.953968604651163e-22)", r"3.952 \times 10^{-23}"),  # math-verify would say equal
    ("print(10455)", "10456"),
    ("print([1, 2])", "1, 3"),
    ("import sympy as sp\nx = sp.symbols('x')\nprint(2*x)", "2.0"),
    ("import sympy as sp\nprint(sp.pi)", "3.14"),  # a symbolic value is compared by the grader, exactly
    ("print('(0, oo*sign(AccumBounds(-1, 1)))')", "1"),  # not math: no number is picked out of it
    ("print('Quotient: 7, Remainder: 2')", "7"),  # the last label's value counts
    ("print(5)\nprint('done')", "5"),  # the last printed line is the answer
]


def test_printed_values_read_as_their_boxed_answers(sandbox, grader):
    programs = [p for p, _ in ACCEPTED + REJECTED]
    checks = check_programs(programs, [b for _, b in ACCEPTED + REJECTED], sandbox, grader)
    wrong = [(program, boxed, check.details()) for (program, boxed), check in zip(ACCEPTED, checks)
             if check.reason is not None]
    wrong += [(program, boxed, check.details()) for (program, boxed), check in zip(REJECTED, checks[len(ACCEPTED):])
              if check.reason != "code_answer_mismatch"]
    assert not wrong, wrong


@pytest.mark.parametrize("printed, latex", [
    ("3*pi/2", r"\frac{3\pi}{2}"),
    ("2 - 5*I", "2 - 5i"),
    ("(1+2j)", "1 + 2i"),
    ("[1. 2. 3.]", "1.0, 2.0, 3.0"),
    ("[-0.5+0.8660254j -0.5-0.8660254j]", "-0.5 + 0.8660254i, -0.5 - 0.8660254i"),
    ("array([[1, 2],\n       [3, 4]])", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"),
    ("Matrix([[-5], [9], [-8]])", r"\begin{pmatrix} -5 \\ 9 \\ -8 \end{pmatrix}"),
    ("np.float64(2.5)", "2.5"),
    ("{x: 2, y: -3}", "x = 2, y = -3"),
    ("x**2 - 2*x + 1", "x^{2} - 2x + 1"),
    ("x - (y - 1)", "x - (y - 1)"),
    ("exp(-2)", "e^{-2}"),
    ("6.674e-11", r"6.674 \times 10^{-11}"),
    ("Eq(y, 2*x + 1)", "y = 2x + 1"),
    ("Poly(7*x**2 - 11*x + 17, x, domain='ZZ')", "7x^{2} - 11x + 17"),
    ("'7'", "7"),
    ("True", r"\text{True}"),
    ("$9,581.70", "9581.70"),
    ("60.98 meters", "60.98"),
    ("AccumBounds(-1, 1)", None),
    ("nan", None),
    ("3 // 2", None),
    ("Reject the null hypothesis", None),
])
def test_printed_python_as_latex(printed, latex):
    assert to_latex(printed) == latex


def test_the_answer_line_and_its_label():
    assert last_printed_value("x\n[[1 2]\n [3 4]]\n\n") == "[[1 2] [3 4]]"
    assert last_printed_value("  \n") is None
    assert answer_candidates("Total: 7") == ["Total: 7", "7"]
    assert answer_candidates("The ratio is approximately 0.10.") == ["The ratio is approximately 0.10", "0.10"]
    assert answer_candidates("{x: 2, y: -3}") == ["{x: 2, y: -3}"]  # a colon inside brackets is no label
    assert answer_candidates("x <= 3") == ["x <= 3"]


@pytest.mark.parametrize("printed, boxed, verdict", [
    ("3.14159", "3.14", "rounded"),
    ("9581.7012", "9,581.70", "rounded"),
    ("0.405", r"40.5\%", "rounded"),
    ("2.5", "x = 2.50", "rounded"),
    ("3.146", "3.14", "different"),
    ("24.0", "24", "equal"),
    ("10000", r"10,000\ V", "equal"),
    ("2", "2x", None),  # no plain number: the grader decides
    ("2*x", "2.0", None),
    ("3", r"1 \times 10^{99999}", None),  # no float: not decided here
    ("1", "1, 9", None),
])
def test_numbers_are_decided_here(printed, boxed, verdict):
    assert numbers_agree(printed, boxed) == verdict


def test_a_printed_python_list_matches_the_same_list_boxed_with_brackets(sandbox, grader):
    code = 'print("Images: [0, 1, 0, 1, 0, 1]")'
    checks = check_programs([code, code], ["[0, 1, 0, 1, 0, 1]", "0, 1, 0, 1, 0, 1"], sandbox, grader)
    assert [c.reason for c in checks] == [None, None]
