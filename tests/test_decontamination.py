"""Decontamination rules: generic spans are not evidence, copies and light variants are, short
questions match whole (data/decontamination.py). Fixtures are small hand-written benchmarks."""
from __future__ import annotations

import pytest

from data.decontamination import CLEAN, Decontaminator, canonical_math, problem_key

# A test item whose question holds a generic span (a number run) and a stock phrase, plus its
# own story; the "train split" holds the stock phrase too.
RUN = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13"
STOCK = "Let $a$ and $b$ be positive real numbers such that $a + b = 1.$"
COUNTING = (f"John counts up from 1 to 13: ({RUN}), then down to 1 again, and so on, alternately up and down. "
            "What is the 5000th integer in the list he writes on the blackboard?")
INEQUALITY = STOCK + " Find the minimum value of the product of the two reciprocals plus seventeen cubed."
ROSES = ("There were 9 roses and 6 orchids in the vase. Jessica cut some more roses and orchids from her "
         "flower garden. There are now 13 orchids and 3 roses in the vase. How many more orchids than roses "
         "are there in the vase now?")
TRAIN = [STOCK + " Find the maximum of the square roots of both numbers added.",
         STOCK + " Prove the inequality for every such pair of numbers given above."]
ITEMS = [("bench", "bench/0", [(COUNTING, True)]), ("bench", "bench/1", [(INEQUALITY, True)]),
         ("bench", "bench/2", [(ROSES, True)]),
         ("bench", "bench/3", [("Find $\\cos 120^\\circ$.", True)]),
         ("bench", "bench/4", [("Evaluate $\\dbinom{7}{3}$.", True)]),
         ("bench", "bench/5", [("What is 2+3?", True)]),
         ("quiz", "quiz/0", [("Which of these animals is a mammal?", True),
                             ("the blue whale, the great white shark, the saltwater crocodile, the emperor penguin",
                              False)])]


@pytest.fixture(scope="module")
def ours() -> Decontaminator:
    return Decontaminator(ITEMS, reference=TRAIN)


@pytest.fixture(scope="module")
def plain() -> Decontaminator:
    return Decontaminator(ITEMS, reference=TRAIN, min_coverage=0)


def test_a_number_run_shared_with_a_question_is_not_evidence(ours, plain):
    text = f"Ella lists the integers {RUN} and circles the primes among them. How many does she circle?"
    assert plain.check(text).contaminated and plain.check(text).rule == "ngram"  # the plain rule's false positive
    assert ours.check(text) == CLEAN


def test_a_stock_phrase_from_the_train_split_is_not_evidence(ours, plain):
    text = STOCK + " Show that $a^a b^b + a^b b^a \\le 1$."
    assert plain.check(text).record_id == "bench/1"
    assert not ours.check(text).contaminated


def test_a_copy_is_flagged_verbatim_and_a_variant_by_coverage(ours):
    copy = ours.check(f"Problem 3. {ROSES.upper()} Answer: 10.")
    assert (copy.contaminated, copy.record_id, copy.rule, copy.coverage) == (True, "bench/2", "verbatim", 1.0)
    variant = ours.check("There were 9 roses and 6 orchids in the vase. Jessica cut some more roses and orchids "
                         "from her flower garden. There are now some orchids and 3 roses in the vase. There are "
                         "10 more orchids than roses in the vase now. How many orchids are in the vase now?")
    assert variant.contaminated and variant.rule == "coverage" and variant.record_id == "bench/2"
    assert 0.4 <= variant.coverage < 1
    assert variant.ngram == "there were 9 roses and 6 orchids in the vase jessica cut some"
    # The stock phrase plus the item's own words: a copy of the inequality item, not of the train questions.
    assert ours.check(INEQUALITY).record_id == "bench/1"


def test_a_copy_of_a_question_made_only_of_reference_text_is_still_verbatim():
    # MMLU-STEM holds MATH train questions word for word: copying one still copies the test item.
    question = "How many ways are there to choose 3 cards from a standard deck of 52 cards of different suits?"
    checker = Decontaminator([("mmlu", "mmlu/0", [(question, True)])], reference=[question])
    result = checker.check("Here is a counting question. " + question + " Explain.")
    assert result.contaminated and result.rule == "verbatim"
    assert not checker.check("How many ways are there to choose 3 cards from a standard deck of 52 cards "
                             "if order matters?").contaminated


def test_a_phrase_many_questions_share_is_not_distinctive():
    # Five different questions open the same way: the opening covers (almost) no distinctive word.
    opening = "The sequence of positive integers is defined by the rule that each term after the first is"
    tails = ["twice the previous one, and the first term equals three; which term first exceeds one thousand?",
             "the square of the previous one minus four; if the first is two, what is the fifth term?",
             "one more than the previous one doubled; starting from five, find the remainder of term nine.",
             "the digit sum of the previous one times seven; from nineteen, when does it first repeat itself?",
             "three less than double the previous; beginning with eleven, how many terms stay below a million?"]
    items = [("b", f"b/{i}", [(f"{opening} {tail}", True)]) for i, tail in enumerate(tails)]
    text = opening + " found by a rule you choose. Invent one and compute its tenth term."
    assert not Decontaminator(items, common_df=3).check(text).contaminated
    # With common_df 5, five questions sharing a window no longer make it common.
    assert Decontaminator(items, common_df=5).check(text).contaminated


def test_short_questions_match_the_whole_problem_after_normalisation(ours):
    for text in ["Find cos 120°.", "find $\\cos 120^{\\circ}$", "  FIND  \\(\\cos 120^\\circ\\) !"]:
        result = ours.check(text)
        assert (result.contaminated, result.record_id, result.rule) == (True, "bench/3", "exact"), text
    assert ours.check("Evaluate $\\binom{7}{3}$.").record_id == "bench/4"  # \dbinom and \binom are one
    assert ours.check("Evaluate \\tbinom{7}{3}").record_id == "bench/4"
    assert ours.check("what is 2 + 3").record_id == "bench/5"
    assert not ours.check("What is 2*3?").contaminated  # operators count in a whole-problem match
    assert not ours.check("First find cos 120°. Then find sin 120°.").contaminated  # too short to count inside


def test_choices_and_tables_are_parts_of_their_own(ours):
    choices = "the blue whale the great white shark the saltwater crocodile the emperor penguin"
    result = ours.check(f"Rank by weight: {choices}.")
    assert result.contaminated and result.record_id == "quiz/0"


def test_batch_equals_single_and_the_filter_interface_holds(ours):
    texts = ["nothing to see here", ROSES, "Find cos 120°.", f"Count {RUN} aloud.", ""]
    found = ours.check_many(texts)
    assert found == [ours.check(t) for t in texts]
    assert [r.contaminated for r in found] == [False, True, True, False, False]
    for r in found:  # what synth/filters.py reads
        assert {"contaminated", "benchmark", "record_id", "ngram"} <= set(r._fields)


def test_canonical_math_reads_two_typings_alike():
    assert problem_key("\\dfrac{1}{2}\\left(x\\right)") == problem_key("\\frac{1}{2}(x)")
    assert canonical_math("no markup at all") == "no markup at all"
    assert problem_key("$2 \\times 3 \\le 7$, \\ldots") == problem_key("2 × 3 ≤ 7 …")
    assert problem_key("$\\mathbf{P}$ at $30^\\circ$") == problem_key("P at 30°")
    assert problem_key("What is 2+3?") != problem_key("What is 2-3?")
    assert problem_key("x−1") == problem_key("x-1")


def test_bad_settings_fail_early():
    with pytest.raises(ValueError, match="min_coverage"):
        Decontaminator(ITEMS, min_coverage=1.5)
    with pytest.raises(ValueError, match="common_df must be at least 1, got 0"):
        Decontaminator(ITEMS, common_df=0)
    from data.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown reference pool 'nope'"):
        Decontaminator.from_benchmarks(["math500"], reference=["nope"])


def test_shipped_benchmarks_short_question_and_stock_phrase():
    checker = Decontaminator.from_benchmarks(["math", "gsm8k"])
    assert checker.check("Compute $\\cos 120^\\circ$.").record_id == "math/test/1712"
    stock = ("Let $a$ and $b$ be positive real numbers such that $a + b = 1.$  Show that the sum of their "
             "squares is at least one half, and say when equality holds.")
    assert not checker.check(stock).contaminated
    assert Decontaminator.from_benchmarks(["math", "gsm8k"], min_coverage=0).check(stock).contaminated
