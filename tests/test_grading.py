"""Answer extraction and grading: the two-way regression table, extraction edge cases, and the
time bound (a hanging sympy call comes back as ``timeout``; a killed worker is replaced)."""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from data.errors import InputError
from eval.extraction import (
    extract_answer,
    extract_choice,
    last_boxed,
    locate_answer,
    parse_number,
)
from eval.grade_cli import grade_pairs
from eval.grading import Grader, answers_equal, grade, grade_text

CASES_DIR = Path(__file__).resolve().parent / "grader_cases"
PUBLISHED_DIR = CASES_DIR / "published"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


CASES = _jsonl(CASES_DIR / "cases.jsonl")
DISAGREEMENTS = {row["id"]: row for row in _jsonl(CASES_DIR / "disagreements.jsonl")}
HANG = ("$9^{9^{9^{9}}}$", "$1$")  # sympy computes the power tower in C: no signal or thread stops it


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2) as shared:
        yield shared


@pytest.fixture(scope="module")
def table(grader):
    """Every case graded in one call, as eval grades a benchmark: one batch, shared workers."""
    verdicts = grader.grade_many([(c["gold"], c["pred"], c["answer_type"]) for c in CASES], timeout_s=5.0)
    return {case["id"]: verdict for case, verdict in zip(CASES, verdicts)}


# --- the regression table -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_regression_table(case, table):
    verdict = table[case["id"]]
    expected = DISAGREEMENTS[case["id"]]["ours"] if case["id"] in DISAGREEMENTS else case["expected_equal"]
    assert verdict.equal is expected, f"gold={case['gold']!r} pred={case['pred']!r} -> {verdict}"


def test_table_covers_both_directions_and_every_disagreement_is_explained():
    ids = {case["id"] for case in CASES}
    assert {True, False} <= {case["expected_equal"] for case in CASES}
    sources = {case["source"] for case in CASES}
    assert {"huggingface/Math-Verify", "hendrycks/math"} <= sources
    for row in DISAGREEMENTS.values():
        assert row["id"] in ids, f"stale disagreement {row['id']}"
        assert row["ours"] is not row["source_expected"]
        assert row["reason"].strip() and "\n" not in row["reason"]


# --- extraction ---------------------------------------------------------------------------


def test_last_boxed_matches_braces():
    assert last_boxed(r"so $\boxed{\frac{1}{\sqrt{2}}}$.") == r"\frac{1}{\sqrt{2}}"
    assert last_boxed(r"\boxed{1} then \boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert last_boxed(r"$\boxed 5$") == "5"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed{3} and a cut-off \boxed{4") == "3"  # an open box is not guessed at
    assert last_boxed("no box") is None


def test_extraction_order_boxed_then_phrase_then_last_number():
    assert extract_answer(r"The answer is $\frac{1}{2}$.") == r"\frac{1}{2}"
    assert extract_answer(r"The answer is 3, see \boxed{4}.") == "4"
    assert extract_answer("Natalia sold 48 + 24 = 72 clips.\n#### 72", "number") == "72"
    assert extract_answer("Answer: 5 apples", "number") == "5 apples"  # the unit goes when compared
    assert answers_equal("5", "5 apples", "number")
    assert extract_answer("She has 3 cats and 12 dogs.", "number") == "12"
    assert extract_answer("so the total is 1,000.99€ in all", "number") == "1,000.99"
    # a later answer phrase with a value overrides intermediate boxes; prose after a box does not
    assert extract_answer(r"$\boxed{200}$ then $\boxed{255}$. The final answer is $10,455$. I hope it is correct.") == "10,455"
    assert extract_answer(r"so $a = \boxed{-5}$. We check it: our answer is correct.") == "-5"
    # list answers spread over several boxes are one answer; a correction is not
    assert extract_answer(r"$x = \boxed{2}$ or $x = \boxed{3}$") == "2, 3"
    assert extract_answer(r"\boxed{1}, no wait, the total is \boxed{2}") == "2"


def test_no_answer():
    assert extract_answer("I am not sure how to solve this.", "number") is None
    verdict = grade_text("5", "I am not sure how to solve this.", "number")
    assert (verdict.equal, verdict.reason) == (False, "no_answer")
    assert grade_text("5", None).reason == "no_answer"


def test_numbers_016_thousands_units_percent():
    assert answers_equal("16", "016", "number") and answers_equal("16", "016", "expression")
    assert grade_text("16", "The answer is $\\boxed{016}$").equal
    assert answers_equal("7425000", "7,425,000", "number")
    assert answers_equal("10", "\\$10", "number") and answers_equal("10", "10 \\text{ apples}", "number")
    assert answers_equal("28\\%", "28", "expression") and answers_equal("28\\%", "0.28", "expression")
    assert answers_equal("1/3", "0.33333", "number")  # relative tolerance 1e-4 (JiuZhang3.0)
    assert not answers_equal("10455", "10456", "number")  # an integer must be hit exactly...
    assert not answers_equal("10000", "9999.857", "number")
    assert answers_equal("18", "17.999999999999996", "number")  # ...up to a program's float noise
    assert parse_number("2x") is None and parse_number("3\\sqrt{2}") is None
    assert parse_number("1,22") is None and parse_number("1,22", decimal_comma=True) is not None


def test_choice_not_fooled_by_latex_or_the_article():
    completion = "The energy change is $\\Delta E = E_f - E_i$, and $\\mathrm{E}$ is in joules.\nAnswer: D"
    assert extract_choice(completion, 5) == "D"
    assert extract_choice("We find $\\Delta E$ = 5 J, so it grows.", 5) is None
    assert extract_choice("A careful count gives 12.", 5) is None
    assert extract_choice("Thus the answer is (C).", 5) == "C"
    assert extract_choice("...\n**Answer:** B", 5) == "B"
    assert extract_choice("$\\boxed{\\text{(E)}}$", 5) == "E"
    assert extract_choice("C. x = 42", 5) == "C"
    assert extract_choice("The answer is 12", 4, ["10", "12", "14", "16"]) == "B"  # option text
    assert grade_text("D", completion, "choice").equal
    assert not grade_text("E", completion, "choice").equal


def test_bare_and_prose_location():
    assert locate_answer("$\\frac{1}{2}$").how == "bare"
    assert locate_answer("Therefore $x \\geq 5$ is the solution.").answer == "x \\geq 5"
    assert not locate_answer("Therefore $x \\geq 5$ is the solution.").strong


def test_grade_text_free_text_both_sides():
    gold = "Thus $x = \\boxed{\\frac{1}{2}}$."
    assert grade_text(gold, "The answer is 0.5").equal
    assert grade_text(gold, "The answer is $\\frac{2}{4}$.").equal
    assert not grade_text(gold, "The answer is $\\frac{1}{3}$.").equal


def test_several_boxes_follow_one_rule():
    """eval/extraction.py's module doc: boxes that only list glue separates are one answer."""
    joined = [
        r"\boxed{(1,2)}, \boxed{(3,4)}",
        r"The pairs are $(x,y)=\boxed{(1,2)}$ and $(x,y)=\boxed{(3,4)}$.",
        "Solutions:\n- $\\boxed{(1,2)}$\n- $\\boxed{(3,4)}$",
        "1. $\\boxed{(1,2)}$\n2. $\\boxed{(3,4)}$",
        r"\boxed{(1,2)} as well as \boxed{(3,4)}",
        r"(a) \boxed{(1,2)} (b) \boxed{(3,4)}",
    ]
    for text in joined:
        assert extract_answer(text) == "(1,2), (3,4)", text
    assert extract_answer(r"\boxed{(1,2)}, no wait, it is \boxed{(3,4)}") == "(3,4)"  # a correction
    assert extract_answer(r"First $\boxed{3}$, so $3+1 = \boxed{4}$.") == "4"  # a step, then the result
    assert extract_answer(r"\boxed{1} ++++++ \boxed{4}") == "4"
    assert extract_answer("$\\boxed{5}$\n\n$\\boxed{5}$") == "5"  # a repeated box counts once


def test_other_languages_and_non_latin_prose():
    for text in ("答案是 5", "最终答案为：$5$。", "La respuesta es 5.", "Die Antwort ist 5.", "La réponse est $5$.",
                 "Ответ: 5", "الجواب هو 5", "A resposta é 5"):
        located = locate_answer(text)
        assert (located.answer, located.how) == ("5", "anchor"), text
    # prose in a script without spaces is never a bare answer: its last number is only a guess
    for text in ("所以小明有 12 个苹果", "لدى أحمد 12 تفاحة"):
        located = locate_answer(text)
        assert (located.answer, located.how) == ("12", "number"), text
    assert locate_answer("2\\pi").how == "bare" and locate_answer("θ = 5").how == "bare"  # Greek is math


def test_choice_letters_mid_sentence_and_in_markup():
    for text in ("so my pick is C, since the others fail.", "**C**", "\\textbf{C}", "(C)",
                 "The answer is C because 3 > 2.", "The correct option is (C).", "答案是 C", "Die Antwort ist C.",
                 "so 704/22 = 32\nAnswer C", "ANS:C", "= 48 more km (ANSWER C)", "C is the correct choice"):
        assert extract_choice(text, 5) == "C", text
    assert extract_choice("Answer A triangle has three sides.", 5) is None  # the article


def test_choice_is_never_credited_from_a_completion_that_states_none():
    options = ["12", "13", "14", "15"]
    looping_cut_off = "We have $x = 12$. " * 40 + "Then $x = 12"  # its last math span is option A's text
    assert extract_choice(looping_cut_off, 4, options) is None
    assert extract_choice("We get $x = 12$ so far, and then", 4, options) is None
    assert extract_choice("Recheck.\nA. 12\n" * 3, 4, options) is None  # the final line repeats: a loop
    assert extract_choice("The options are\nA. 12\nB. 13\nC. 14\nD. 15", 4, options) is None
    verdict = grade_text("A", looping_cut_off, "choice")
    assert (verdict.equal, verdict.reason) == (False, "no_answer")
    # a stated option text still counts, and so does the last number of a finished completion
    assert extract_choice("The answer is 13.", 4, options) == "B"
    assert extract_choice("So 2 + 12 = 14.", 4, options) == "C"
    assert extract_choice(r"so $\boxed{14}$", 4, options) == "C"
    assert extract_choice("15", 4, options) == "D"


def test_equation_and_derivative_forms_both_orders():
    for gold, pred, equal in [("g'(t)", "g(t)", False), ("x+y=3", "3", False), ("2x = 6", "6", False),
                              ("x = 3", "3", True), ("f(x) = 3", "3", True), ("f'(x) = 2x", "2x", True),
                              ("f'(x) = 2x", "f(x) = 2x", False), ("y = 2x + 1", "2x - y + 1 = 0", True),
                              ("x = 5 + 6 = 11", "11", True), ("12", "2^{2005}", False),
                              ("f(3) = 12", "12", True), ("x(x+1) = 6", "6", False), ("AB = 4, CD = 5", "4, 5", True)]:
        assert answers_equal(gold, pred, "expression") is equal, (gold, pred)
        assert answers_equal(pred, gold, "expression") is equal, (pred, gold)


def test_digit_grouping_indian_and_latex_spacing():
    assert parse_number("1,23,456") == parse_number("123456") is not None
    assert parse_number("12,\\!345") == parse_number("12345") and parse_number("1,\\!23,\\!456") == parse_number("123456")
    assert parse_number("1,23,45") is None and parse_number("12,34,56") is None  # no final group of 3: a list
    assert grade_text("1,23,456", "The total is Rs 1,23,456.", "number").equal
    assert not grade_text("1,23,456", "The total is Rs 1,23,457.", "number").equal


def test_bare_list_gold_reads_a_bracketed_prediction_as_a_list():
    assert grade_text("1, 9", "The solutions are $\\boxed{[1, 9]}$.").equal
    verdict = grade_text("1, 9", "[1, 9]")
    assert verdict.equal and verdict.pred_extracted == "[1, 9]"  # shown as written
    assert not grade_text("[1, 9]", "1, 9").equal  # an interval is not its two end points
    assert not grade_text("1, 9", "[1, 10]").equal and not grade_text("1, 9, 10", "[1, 9]").equal
    assert grade_text("1, 9", "\\left[1, 9\\right]").equal
    assert not grade_text("1, 2, 3", "[1, 2] + [3, 4]").equal  # brackets that do not enclose the answer stay


def test_published_gsm8k_regrades_hold(grader):
    """Published per-problem GSM8K outputs (tests/grader_cases/published/README.md) regrade to
    their published numbers: ToRA's extracted answers, and the labelled free-text solutions of
    Cobbe et al.'s four GPT-3 systems, verdict for verdict."""
    tora = _jsonl(PUBLISHED_DIR / "tora_gsm8k.jsonl")
    # 84.3 published; 80.7 published for ToRA-Code-34B, whose own grader accepts 2 answers that
    # a numeric comparison (ours, and the float compare of the data's README) does not
    for model, correct in (("tora-70b-v1.0", 1112), ("tora-code-34b-v1.0", 1062)):
        verdicts = grader.grade_many([(row["gt"], row[model], "number") for row in tora])
        assert (len(tora), sum(v.equal for v in verdicts)) == (1319, correct), model
    with gzip.open(PUBLISHED_DIR / "openai_gsm8k_solutions_first300.jsonl.gz", "rt", encoding="utf-8") as handle:
        problems = [json.loads(line) for line in handle if line.strip()]
    systems = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
    pairs = [(p["ground_truth"], p[system]["solution"], "number") for p in problems for system in systems]
    labels = [p[system]["is_correct"] for p in problems for system in systems]
    assert len(pairs) == 1200 and [v.equal for v in grader.grade_many(pairs)] == labels


# --- the time bound ------------------------------------------------------------------------


def test_hanging_sympy_times_out_while_other_pairs_grade(grader):
    grader.grade("2\\sqrt{2}", "$\\sqrt{8}$")  # workers started and warm
    others = [("2\\sqrt{2}", "$\\sqrt{8}$", True), ("x^2+2x+1", "$(x+1)^2$", True), ("\\pi", "$3$", False)] * 3
    pairs = [HANG] + [(gold, pred) for gold, pred, _ in others]
    pids_before = set(grader.worker_pids())
    respawns = grader.stats["respawns"]
    start = time.monotonic()
    verdicts = grader.grade_many(pairs, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert verdicts[0].reason == "timeout" and verdicts[0].equal is False
    assert [v.equal for v in verdicts[1:]] == [equal for _, _, equal in others]
    assert elapsed < 1.0 + 4.0, f"the run waited {elapsed:.1f} s on a 1 s deadline"
    assert grader.stats["respawns"] == respawns + 1
    assert len(grader.worker_pids()) == 2 and set(grader.worker_pids()) != pids_before


def test_killed_worker_is_replaced(grader):
    grader.grade("2\\sqrt{2}", "$\\sqrt{8}$")
    victim = grader.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.1)
    verdicts = grader.grade_many([("2\\sqrt{2}", "$\\sqrt{8}$")] * 6, timeout_s=5.0)
    assert all(v.equal and v.reason == "match" for v in verdicts)
    assert victim not in grader.worker_pids() and len(grader.worker_pids()) == 2


def test_grader_works_from_a_thread(grader):
    results = []
    pairs = [("2\\sqrt{2}", "$\\sqrt{8}$"), HANG]
    thread = threading.Thread(target=lambda: results.append(grader.grade_many(pairs, timeout_s=1.0)))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [v.reason for v in results[0]] == ["match", "timeout"]


def test_fast_path_needs_no_worker():
    with Grader(workers=1) as fresh:
        verdicts = fresh.grade_many([("72", "so 72 in all.\n#### 72", "number"), ("B", "Answer: (C)", "choice")])
        assert [v.reason for v in verdicts] == ["match", "mismatch"]
        assert fresh.worker_pids() == []
    assert grade("0.5", "The answer is $\\frac{1}{2}$.").equal


# --- the grade CLI -------------------------------------------------------------------------


def test_grade_pairs_writes_one_verdict_per_row(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"gold": "18", "pred": "She makes 9 * 2 = $18 a day.\n#### 18"},
        {"gold": "\\frac{1}{2}", "pred": "The answer is 0.5."},
        {"gold": 16, "pred": "The answer is \\boxed{016}."},
        {"gold": "3", "pred": "I give up."},
        {"gold": "C", "pred": "$\\Delta E$ falls.\nAnswer: C", "answer_type": "choice"},
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = io.StringIO()
    assert grade_pairs(pairs, out) == 5
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["equal"] for line in lines] == [True, True, True, False, True]
    assert lines[3]["reason"] == "no_answer"
    assert set(lines[0]) == {"equal", "gold", "pred", "gold_extracted", "pred_extracted", "reason"}
    assert lines[1]["pred_extracted"] == "0.5"


@pytest.mark.parametrize(
    "bad_line, message",
    [("{not json", "malformed JSON"), ('{"gold": "1"}', "missing field 'pred'"), ('["1", "1"]', "expected a JSON object"),
     ('{"gold": "1", "pred": "1", "answer_type": "date"}', "answer_type")],
)
def test_grade_pairs_names_file_and_line(tmp_path, bad_line, message):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"gold": "1", "pred": "1"}\n' + bad_line + "\n", encoding="utf-8")
    out = io.StringIO()
    with pytest.raises(InputError, match=rf"pairs\.jsonl:2: .*{message}"):
        grade_pairs(pairs, out)
    assert out.getvalue() == ""  # nothing graded from a bad file


@pytest.mark.parametrize("text,answer", [
    ("We compare them.\n\n#### Part (c)\n\nThe first time is larger, by 3 minutes.", "3"),
    ("#### Step 4: Conclusion\n\nSo the group has order $15$.", "15"),
    ("She pays 5 dollars.\n#### 5", "5"),
])
def test_a_markdown_heading_is_not_the_gsm8k_answer_marker(text, answer):
    from eval.extraction import locate_answer

    located = locate_answer(text)
    assert located.answer == answer and (located.how == "anchor") == text.endswith("#### 5")
