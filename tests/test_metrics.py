from math import comb

import pytest

from eval.metrics import (
    Problem,
    Sample,
    default_ks,
    pass_at_k,
    summarise,
    summarise_by_group,
)


def test_pass_at_k_matches_the_combinatorial_definition():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - comb(7, 4) / comb(10, 4))
    assert pass_at_k(5, 1, 5) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def problem(pid, answers_correct, **groups):
    return Problem(pid, [Sample(a, c) for a, c in answers_correct], groups)


def test_majority_vote_ties_go_to_the_first_answer_and_blanks_do_not_vote():
    p = problem("p", [("3", False), (None, False), ("4", True), ("4", True), ("3", False)])
    assert p.majority_correct(5) is False  # 3 and 4 tie at 2 votes; "3" came first
    assert p.majority_correct(4) is True  # first four: "4" has 2 votes, "3" has 1
    assert problem("q", [(None, False)]).majority_correct(1) is False


def test_summary_and_groups():
    problems = [
        problem("a", [("1", True), ("1", True)], level="1"),
        problem("b", [("2", False), ("3", True)], level="1"),
        problem("c", [("5", False), ("5", False)], level="2"),
    ]
    summary = summarise(problems, default_ks(2))
    assert summary["problems"] == 3 and summary["samples_per_problem"] == 2 and summary["correct"] == 3
    assert summary["accuracy"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert summary["pass@2"] == pytest.approx(100 * 2 / 3)
    assert summary["maj@2"] == pytest.approx(100 * 1 / 3)  # b ties between 2 and 3: "2" came first, wrong
    by_level = summarise_by_group(problems, [1])["level"]
    assert by_level["1"]["problems"] == 2 and by_level["2"]["accuracy"] == 0.0
    assert default_ks(1) == [1] and default_ks(8) == [1, 2, 4, 8] and default_ks(6) == [1, 2, 4, 6]
