"""Are two answers the same? The project's one notion of a correct answer.

Eval, distill and the synth filters all grade through this module. A pair is graded in two
steps:

* fast path, in the caller, no IPC: extract both answers (:mod:`eval.extraction`), then
  normalised string equality, plain numbers within a relative tolerance of 1e-4 (JiuZhang3.0),
  or choice letters. Most pairs end here (GSM8K: all of them).
* slow path, only when the fast path cannot decide: math-verify's ``parse`` + ``verify``, plus
  the same numeric tolerance on what it parsed. sympy can hang inside C code that no signal or
  thread can interrupt, so :class:`Grader` runs this step in a few worker processes with a
  deadline per pair: a worker that overruns is killed and replaced, and the pair is graded
  ``timeout`` (not equal). The run never blocks.

:func:`answers_equal` and :func:`grade_text` run the slow path in-process with no time bound:
use them on trusted inputs only; use :class:`Grader` / :func:`grade` on model output.

Policies the fast path enforces before math-verify may say "equal" (math-verify is lenient
exactly where a false "equal" is worst):

* An equation never equals a bare value. A left side that only names a quantity ("x = 3",
  "a_1 = 3", "f(x) = 3", "f(3) = 12", "(x, y) = (1, 2)", "AB = 4", "A:B = 1:2") labels the
  value, so "x = 3" equals "3" (either way round: the label is dropped when the other side is
  a bare value) and "y = 2x + 1" equals "2x + 1" and also the equation "2x - y + 1 = 0"; a
  left side with a digit or a "+"/"-" ("x + y = 3", "2x = 6", "x^2 = 4", "x(x+1) = 6") makes
  an equation, which is not "3" or "6" (math-verify compares an equation with its right-hand
  side). A chain "x = 5 + 6 = 11" is its last member.
* Derivatives count: "g'(t)" is not "g(t)" (math-verify drops the prime). The number of
  primes (``'`` or ``\\prime``) must agree, labels aside ("f'(x) = 2x" is "2x").
* Brackets say what an answer is, and the gold says which reading applies: a gold that is a
  bare comma list ("1, 9", a MATH "enter all solutions") is a list, so a prediction that
  wraps the same list in brackets ("[1, 9]", "\\{1, 9\\}", "(1, 9)") is read as that list. A
  bracketed gold keeps its brackets' meaning: "[1, 9]" is the closed interval (LaTeX and MATH
  convention), which the two numbers "1, 9" are not. Not symmetric, on purpose.
"""
from __future__ import annotations

import atexit
import logging
import math
import multiprocessing as mp
import os
import re
import signal
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from data.records import AnswerType
from eval.extraction import (
    INTEGER_REL_TOL,
    Located,
    canonical_latex,
    choice_letter,
    extract_choice,
    locate_answer,
    normalize_text,
    numbers_equal,
    parse_number,
)

Reason = Literal["match", "mismatch", "timeout", "no_answer", "error"]
REL_TOL = 1e-4
LETTERS = "ABCDEFGHIJ"


@dataclass
class Verdict:
    equal: bool
    gold_extracted: str | None
    pred_extracted: str | None
    reason: Reason
    detail: str | None = None  # why, for "error" and "timeout"


# --- forms that differ, whatever math-verify says ------------------------------------------

# One "=" that is not part of "<=", ">=", "!=", ":=", "==".
_EQUALS_RE = re.compile(r"(?<![<>!:=\\])=(?!=)")
_PRIME_RE = re.compile(r"(?<=[A-Za-z)}'])'|\\prime(?![A-Za-z])")
# What separates the items of a list answer: "x = 2, y = 3", "p = 1 \text{ and } p = 2".
_ITEM_GLUE_RE = re.compile(r"\\text\s*\{\s*(?:,|and|or)?\s*\}|\\q?quad(?![A-Za-z])|\\\\|\band\b|\bor\b|;")


# The usual function names (not x or t: "x(x+1) = 6" is a product, so an equation).
_FUNCTION_AT_RE = re.compile(r"(?:(?<![A-Za-z\\])[fghpqFGHPQ]|\\[A-Za-z]+)(?:'+|\^\{?-1\}?)?\([^()]*\)")


def _names_a_quantity(lhs: str) -> bool:
    """Whether the left side of "=" only names what the answer gives: a symbol ("x", "a_1",
    "f(x)", "g'(t)", "\\theta"), a tuple of them, or a quantity written with names only
    ("AB", "|AB|", "A:B", "\\frac{NO}{BO}"), or a function at a point ("f(3)"). A digit
    (subscripts aside) or a "+"/"-" makes it an expression, so the answer is an equation:
    "x + y = 3", "2x = 6", "x^2 = 4", "x(x+1) = 6"."""
    s = re.sub(r"_\{[^{}]*\}|_\w|\\(?:left|right)(?![A-Za-z])|\\[,;:! ]|\s", "", lhs)
    # a function's value at a point names a quantity too: "f(3)", "g'(2)", "f^{-1}(4)", "\log(8)"
    s = _FUNCTION_AT_RE.sub("f", s)
    return bool(s) and not re.search(r"\d|[-+<>]|\\(?:pm|mp|cdot|times)(?![A-Za-z])", s)


def _form(answer: str) -> tuple[str, str, str]:
    """(kind, the values without their labels, the labels) of an answer. kind is "equation"
    when an item relates expressions, "value" when no item has an "=" (or only a chain such
    as "x = 5 + 6 = 11", whose last member is its value), else "assignment"."""
    s = re.sub(r"\$|\\(?:left|right)(?![A-Za-z])", "", answer)
    kinds, values, labels = set(), [], []
    for item in (item for item in _items(_ITEM_GLUE_RE.sub(",", s)) if item.strip()):
        equals = list(_EQUALS_RE.finditer(_depth0(item)))
        if len(equals) != 1:
            kinds.add("value")
            values.append(item)
        elif _names_a_quantity(item[: equals[0].start()]):
            kinds.add("assignment")
            labels.append(item[: equals[0].start()])
            values.append(item[equals[0].end() :])
        else:
            kinds.add("equation")
            values.append(item)
    kind = "equation" if "equation" in kinds else "value" if kinds == {"value"} else "assignment"
    return kind, ",".join(values), ",".join(labels)


def _depth0(text: str) -> str:
    """``text`` with everything inside braces blanked: "\\sum_{k=1}" holds no equation."""
    out, depth = [], 0
    for ch in text:
        depth += ch == "{"
        out.append(ch if depth == 0 else " ")
        depth -= ch == "}" and depth > 0
    return "".join(out)


def forms_differ(gold: str, pred: str) -> bool:
    """True when the two answers are different kinds of object whatever their values (the
    module doc's policies): an equation against a value, or a different number of primes.
    Primes in labels count when both sides have labels ("f'(x) = 2x" is not "f(x) = 2x") and
    not otherwise ("f'(x) = 2x" is "2x")."""
    if not any(mark in gold or mark in pred for mark in ("=", "'", "\\prime")):
        return False  # the common case, decided without parsing either side
    (gold_kind, gold_values, gold_labels), (pred_kind, pred_values, pred_labels) = _form(gold), _form(pred)
    if {gold_kind, pred_kind} == {"equation", "value"}:
        return True
    if gold_labels and pred_labels and len(_PRIME_RE.findall(gold_labels)) != len(_PRIME_RE.findall(pred_labels)):
        return True
    return len(_PRIME_RE.findall(gold_values)) != len(_PRIME_RE.findall(pred_values))


_OPEN_CLOSE = {"[": "]", "(": ")", "\\{": "\\}"}


def _items(text: str) -> list[str]:
    """``text`` split at its commas outside any bracket."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def list_as_gold_reads_it(gold: str, pred: str) -> str:
    """``pred`` without its enclosing brackets when the gold is a bare comma list and ``pred``
    is the bracketed list of as many items ("[1, 9]" against "1, 9"); else ``pred`` unchanged."""
    if not pred.lstrip("$ ").startswith(("[", "(", "\\{", "\\left")):
        return pred
    bare_gold = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", gold).strip().strip("$").strip()
    if bare_gold[:1] in "([{\\" or parse_number(bare_gold) is not None:
        return pred
    n_items = len(_items(bare_gold))
    inner = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", pred).strip().strip("$").strip()
    for opener, closer in _OPEN_CLOSE.items():
        if n_items >= 2 and inner.startswith(opener) and inner.endswith(closer) and _encloses(inner):
            body = inner[len(opener) : -len(closer)]
            if len(_items(body)) == n_items:
                return body.strip()
    return pred


def comparable(gold: str, pred: str) -> tuple[str, str]:
    """The two answers as compared (the module doc's policies): a bracketed prediction of a
    bare list gold unwrapped, and the label of one side dropped when the other side is a bare
    value and there is one label ("f(3) = 12" against "12", either way round)."""
    pred = list_as_gold_reads_it(gold, pred)
    if "=" not in gold and "=" not in pred:
        return gold, pred
    (gold_kind, gold_values, gold_labels), (pred_kind, pred_values, pred_labels) = _form(gold), _form(pred)
    # one label only: "p=5,q=2;p=7,q=2" flattened would lose its grouping (math-verify reads it)
    if {gold_kind, pred_kind} == {"assignment", "value"} and "," not in gold_labels + pred_labels:
        return (gold_values if gold_kind == "assignment" else gold), (pred_values if pred_kind == "assignment" else pred)
    return gold, pred


def _encloses(text: str) -> bool:
    """Whether the first bracket of ``text`` closes at its last character: "[1, 9]" yes;
    "(1, 2), (3, 4)" (a list of two pairs) and "[1, 2] + [3, 4]" no."""
    depth, opened = 0, False
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        opened = opened or depth > 0
        if opened and depth == 0:
            return i == len(text) - 1
    return False


# --- fast path ----------------------------------------------------------------------------


def fast_verdict(
    gold: str, pred: str, answer_type: AnswerType, *, rel_tol: float = REL_TOL, final: bool = True
) -> bool | None:
    """True/False when cheap checks decide, None when math-verify must look.

    ``final=False`` (the prediction was only guessed from free text) makes a numeric mismatch
    undecided: math-verify's own search of the text may still find the answer.
    """
    if answer_type == "choice":
        gold_letter, pred_letter = choice_letter(gold), choice_letter(pred)
        if gold_letter and pred_letter:
            return gold_letter == pred_letter
        return normalize_text(gold) == normalize_text(pred)
    if answer_type == "text":
        return normalize_text(gold) == normalize_text(pred)
    canonical = canonical_latex(gold)
    if canonical and canonical == canonical_latex(pred):
        return True
    if answer_type == "expression" and forms_differ(gold, pred):
        return False  # even for a guess: math-verify on the text would only repeat the leniency
    decimal_comma = answer_type == "number"  # number answers are never lists
    gold_number, pred_number = parse_number(gold, decimal_comma), parse_number(pred, decimal_comma)
    if gold_number is not None and pred_number is not None:
        if numbers_equal(gold_number, pred_number, rel_tol):
            return True
        return False if final or answer_type == "number" else None
    return None


# --- slow path (runs in a worker process) ---------------------------------------------------


def math_verify_compare(gold_input: str, pred_input: str, rel_tol: float = REL_TOL) -> tuple[bool, str | None, str | None]:
    """(equal, what math-verify read as gold, what it read as prediction). Can hang: see module doc."""
    from math_verify import parse, verify

    # Our process enforces time limits, so math-verify's signal-based ones stay off (they
    # also fail outside the main thread).
    gold = parse(gold_input, parsing_timeout=None)  # type: ignore[arg-type]
    pred = parse(pred_input, parsing_timeout=None)  # type: ignore[arg-type]
    equal = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
    if not equal and gold and pred:
        equal = _numerically_close(gold[0], pred[0], rel_tol)
    return equal, _shown(gold), _shown(pred)


def _shown(parsed: list) -> str | None:
    if not parsed:
        return None
    return parsed[-1] if isinstance(parsed[-1], str) else str(parsed[0])


def _numerically_close(a: Any, b: Any, rel_tol: float) -> bool:
    """The numeric tolerance math-verify lacks (it rounds to 6 places): 40\\pi vs 125.663,
    2.3148 \\times 10^{-3} vs 1/432; element by element for tuples, sets, intervals, matrices.
    An integer on either side gets float noise only, as on the fast path."""
    import sympy

    try:
        if isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase):
            return a.shape == b.shape and all(_numerically_close(x, y, rel_tol) for x, y in zip(a, b))
        if isinstance(a, sympy.Tuple) and isinstance(b, sympy.Tuple):
            return len(a) == len(b) and all(_numerically_close(x, y, rel_tol) for x, y in zip(a, b))
        if isinstance(a, sympy.FiniteSet) and isinstance(b, sympy.FiniteSet):
            if len(a) != len(b):
                return False
            xs, ys = sorted(a.args, key=_sort_key), sorted(b.args, key=_sort_key)
            return all(_numerically_close(x, y, rel_tol) for x, y in zip(xs, ys))
        if isinstance(a, sympy.Interval) and isinstance(b, sympy.Interval):
            return (a.left_open, a.right_open) == (b.left_open, b.right_open) and all(
                x == y or _numerically_close(x, y, rel_tol) for x, y in ((a.start, b.start), (a.end, b.end))
            )
        if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr) and a.is_number and b.is_number:
            if isinstance(a, sympy.Integer) or isinstance(b, sympy.Integer):
                rel_tol = min(rel_tol, INTEGER_REL_TOL)  # as on the fast path: 10455 is not 10456
            x, y = complex(sympy.N(a, 20)), complex(sympy.N(b, 20))
            # both finite: a value past float range (2^2005) is inf, and inf - 12 <= 1e-4 * inf
            return math.isfinite(abs(x)) and math.isfinite(abs(y)) and abs(x - y) <= rel_tol * max(abs(x), abs(y))
    except (TypeError, ValueError, ArithmeticError):
        return False
    return False


def _sort_key(value: Any) -> tuple[float, float]:
    try:
        number = complex(value.evalf())
        return (number.real, number.imag)
    except (TypeError, ValueError, AttributeError):
        return (math.inf, math.inf)


# --- one pair, in process -------------------------------------------------------------------


@dataclass
class _SlowJob:
    """What the slow path needs: math-verify inputs and what to report as extracted."""

    gold_input: str
    pred_input: str
    gold_shown: str | None
    pred_shown: str | None
    gold_guessed: bool
    pred_guessed: bool

    def verdict(self, equal: bool, gold_read: str | None, pred_read: str | None) -> Verdict:
        # A guessed answer is reported as what math-verify actually read from the text.
        gold = gold_read if self.gold_guessed and gold_read else self.gold_shown
        pred = pred_read if self.pred_guessed and pred_read else self.pred_shown
        return Verdict(equal, gold, pred, "match" if equal else "mismatch")


_MATHRM_LETTER_RE = re.compile(r"\\mathrm\s*\{\s*([A-Za-z])\s*\}")


def _math_input(located: Located) -> str:
    """Strong answers go to math-verify as one math span; guesses as the text they came from.

    ``\\mathrm{e}`` becomes ``e``: math-verify 0.9 cuts "1 - \\frac{1}{\\mathrm{e}}" down to 1.
    """
    if not located.strong and located.context:
        return _MATHRM_LETTER_RE.sub(r"\1", located.context)
    answer = (located.answer or "").replace("\\$", "\0").replace("$", " ").replace("\0", "\\$")
    answer = _MATHRM_LETTER_RE.sub(r"\1", answer)
    return f"$${answer}$$" if "\n" in answer else f"${answer}$"


def _choice_verdict(gold_text: str, pred_text: str | None, choices: Sequence[str] | None) -> Verdict:
    gold = choice_letter(gold_text) or extract_choice(gold_text, len(choices or LETTERS[:5]), choices)
    n_choices = max(len(choices) if choices else 5, LETTERS.index(gold) + 1 if gold else 0)
    pred = extract_choice(pred_text or "", n_choices, choices)
    if pred is None:
        return Verdict(False, gold or gold_text.strip(), None, "no_answer")
    equal = gold == pred if gold else normalize_text(gold_text) == normalize_text(pred)
    return Verdict(equal, gold or gold_text.strip(), pred, "match" if equal else "mismatch")


def prepare(
    gold_text: str,
    pred_text: str | None,
    answer_type: AnswerType = "expression",
    choices: Sequence[str] | None = None,
    *,
    rel_tol: float = REL_TOL,
) -> Verdict | _SlowJob:
    """Grade a pair on the fast path, or say what the slow path must compare."""
    if answer_type == "choice":
        return _choice_verdict(gold_text, pred_text, choices)
    gold = locate_answer(gold_text, answer_type)
    pred = locate_answer(pred_text, answer_type)
    if answer_type == "text":  # text answers are often prose: the whole text is the answer
        gold = gold if gold.answer else Located((gold_text or "").strip() or None, "bare")
        pred = pred if pred.answer else Located((pred_text or "").strip() or None, "bare")
    if gold.answer is None:
        return Verdict(False, None, pred.answer, "error", "no answer found in the gold text")
    if pred.answer is None:
        return Verdict(False, gold.answer, None, "no_answer")
    # what is compared; the verdict still shows both answers as written
    gold_compared, pred_compared = gold, pred
    if answer_type == "expression":
        gold_text, pred_text = comparable(gold.answer, pred.answer)
        gold_compared, pred_compared = replace(gold, answer=gold_text), replace(pred, answer=pred_text)
    final = gold.strong and pred.strong
    fast = fast_verdict(gold_compared.answer or "", pred_compared.answer or "", answer_type, rel_tol=rel_tol, final=final)
    if fast is not None:
        return Verdict(fast, gold.answer, pred.answer, "match" if fast else "mismatch")
    return _SlowJob(_math_input(gold_compared), _math_input(pred_compared), gold.answer, pred.answer,
                    not gold.strong, not pred.strong)


def answers_equal(gold: str, pred: str, answer_type: AnswerType, *, rel_tol: float = REL_TOL) -> bool:
    """Whether two already extracted answers are equal. Unbounded time on the slow path."""
    if answer_type == "expression":
        gold, pred = comparable(gold, pred)
    fast = fast_verdict(gold, pred, answer_type, rel_tol=rel_tol)
    if fast is not None:
        return fast
    gold_input, pred_input = _math_input(Located(gold, "bare")), _math_input(Located(pred, "bare"))
    return math_verify_compare(gold_input, pred_input, rel_tol)[0]


def grade_text(
    gold_text: str, pred_text: str | None, answer_type: AnswerType = "expression", choices: Sequence[str] | None = None
) -> Verdict:
    """Extract from free text on both sides, then compare. Unbounded time on the slow path."""
    prepared = prepare(gold_text, pred_text, answer_type, choices)
    if isinstance(prepared, Verdict):
        return prepared
    return prepared.verdict(*math_verify_compare(prepared.gold_input, prepared.pred_input))


# --- worker processes ---------------------------------------------------------------------


def _worker_main(conn: Connection, memory_limit_mb: int | None, rel_tol: float) -> None:
    """Grade batches of (key, gold_input, pred_input), one result message per pair, so the
    parent always knows which pair a stuck worker is on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_limit_mb:  # sympy can also eat all memory (2^(1/2^1000): GBs in seconds)
        try:
            import resource

            limit = memory_limit_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    math_verify_compare("$1$", "$1$", rel_tol)  # import and warm up before the first deadline
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        timeout_s, batch = message
        for key, gold_input, pred_input in batch:
            _limit_cpu(int(2 * timeout_s) + 5)
            try:
                result: tuple = ("ok", *math_verify_compare(gold_input, pred_input, rel_tol))
            except BaseException as error:  # MemoryError, RecursionError, sympy internals
                result = ("error", f"{type(error).__name__}: {error}"[:300])
            conn.send((key, result))


def _limit_cpu(seconds: int) -> None:
    """A CPU-time ceiling for the next pair, far above its deadline. The parent kills a late
    worker long before; this only matters when the parent itself died (kill -9) and nobody is
    left to kill a worker stuck in sympy: the kernel ends it with SIGXCPU."""
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(usage.ru_utime + usage.ru_stime) + seconds
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    except (ImportError, ValueError, OSError):
        pass


class _Worker:
    def __init__(self, context: Any, memory_limit_mb: int | None, rel_tol: float) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, memory_limit_mb, rel_tol), daemon=True)
        self.process.start()
        child.close()  # so that the worker's death reads as EOF here
        self.started_at = time.monotonic()
        self.ready = False
        self.batch: deque[tuple[int, str, str]] = deque()
        self.item_started = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=2)
        self.conn.close()


class Grader:
    """Grades pairs with a time bound on every slow-path comparison.

    ``with Grader() as grader: verdicts = grader.grade_many([(gold, completion), ...])``

    Workers start on the first pair that needs math-verify (many runs never do) and stay for
    the next call. They come from a forkserver (or spawn) context: safe when the caller has
    threads, and a replacement for a killed worker forks from a server that already imported
    sympy, so it is ready in milliseconds. One call at a time per Grader (one Grader per
    thread); as with any multiprocessing code, a script needs an ``if __name__ == "__main__"``
    guard.
    """

    START_TIMEOUT_S = 120.0

    def __init__(
        self,
        workers: int | None = None,
        *,
        rel_tol: float = REL_TOL,
        memory_limit_mb: int | None = 4096,
        start_method: str | None = None,
    ) -> None:
        self.n_workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.rel_tol = rel_tol
        self.memory_limit_mb = memory_limit_mb
        methods = mp.get_all_start_methods()
        self.start_method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        self._context: Any = None
        self._workers: list[_Worker] = []
        self._failed_starts = 0
        self.stats = {"pairs": 0, "fast": 0, "slow": 0, "timeouts": 0, "errors": 0, "respawns": 0}

    # -- public API

    def grade_many(
        self,
        pairs: Iterable[Sequence[Any]],
        timeout_s: float = 5.0,
        answer_type: AnswerType = "expression",
    ) -> list[Verdict]:
        """One verdict per pair, in order. A pair is ``(gold, pred)``, ``(gold, pred, answer_type)``
        or ``(gold, pred, answer_type, choices)``; gold and pred may be free text."""
        verdicts: list[Verdict | None] = []
        jobs: dict[int, _SlowJob] = {}
        for pair in pairs:
            gold, pred, *rest = pair
            kind = rest[0] if rest and rest[0] else answer_type
            choices = rest[1] if len(rest) > 1 else None
            try:
                prepared = prepare(gold, pred, kind, choices, rel_tol=self.rel_tol)
            except Exception as error:  # a bug or odd input must not sink the whole batch
                prepared = Verdict(False, None, None, "error", f"{type(error).__name__}: {error}"[:300])
            if isinstance(prepared, _SlowJob):
                jobs[len(verdicts)] = prepared
                verdicts.append(None)
            else:
                verdicts.append(prepared)
        self.stats["pairs"] += len(verdicts)
        self.stats["fast"] += len(verdicts) - len(jobs)
        self.stats["slow"] += len(jobs)
        if jobs:
            results = self._run(jobs, timeout_s)
            for key, job in jobs.items():
                verdicts[key] = self._slow_verdict(job, results[key])
        return verdicts  # type: ignore[return-value]

    def grade(self, gold: str, pred: str | None, answer_type: AnswerType = "expression", timeout_s: float = 5.0) -> Verdict:
        return self.grade_many([(gold, pred, answer_type)], timeout_s=timeout_s)[0]

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def close(self) -> None:
        for worker in self._workers:
            try:
                if not worker.batch and worker.ready:
                    worker.conn.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(timeout=0.5)
            worker.kill()
        self._workers = []

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- internals

    def _slow_verdict(self, job: _SlowJob, result: tuple) -> Verdict:
        if result[0] == "ok":
            return job.verdict(*result[1:])
        reason: Reason = "timeout" if result[0] == "timeout" else "error"
        self.stats["timeouts" if reason == "timeout" else "errors"] += 1
        return Verdict(False, job.gold_shown, job.pred_shown, reason, result[1])

    def _spawn(self) -> _Worker:
        if self._context is None:
            self._context = mp.get_context(self.start_method)
            if self.start_method == "forkserver":
                # sympy and math-verify imported once in the server, not in every new worker
                self._context.set_forkserver_preload(["eval.grading", "math_verify"])
        return _Worker(self._context, self.memory_limit_mb, self.rel_tol)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        fresh = self._spawn()
        self._workers[self._workers.index(worker)] = fresh
        self.stats["respawns"] += 1
        return fresh

    def _run(self, jobs: dict[int, _SlowJob], timeout_s: float) -> dict[int, tuple]:
        """Run the slow path for ``jobs`` on the pool. Batches amortise IPC; each pair gets
        ``timeout_s`` from the moment its worker is free to start it."""
        for dead in [w for w in self._workers if not w.process.is_alive()]:  # killed while idle
            dead.kill()
            self._workers.remove(dead)
            self.stats["respawns"] += 1
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn())
        items = [(key, job.gold_input, job.pred_input) for key, job in jobs.items()]
        size = max(1, min(32, math.ceil(len(items) / (self.n_workers * 4))))
        pending = deque(items[i : i + size] for i in range(0, len(items), size))
        results: dict[int, tuple] = {}
        self._failed_starts = 0
        while len(results) < len(items):
            self._dispatch(pending, timeout_s)
            self._collect(results, pending, timeout_s)
            self._expire(results, pending, timeout_s)
        return results

    def _dispatch(self, pending: deque, timeout_s: float) -> None:
        """Give a batch to every ready, idle worker."""
        for worker in list(self._workers):
            if worker.ready and not worker.batch and pending:
                batch = pending.popleft()
                try:
                    worker.conn.send((timeout_s, batch))
                except OSError:  # died while idle
                    pending.appendleft(batch)
                    self._replace(worker)
                    continue
                worker.batch.extend(batch)
                worker.item_started = time.monotonic()

    def _collect(self, results: dict[int, tuple], pending: deque, timeout_s: float) -> None:
        """Wait for messages until the nearest deadline; a dead worker's pair is an error."""
        busy = [w for w in self._workers if w.batch or not w.ready]
        deadlines = [w.item_started + timeout_s if w.ready else w.started_at + self.START_TIMEOUT_S for w in busy]
        remaining = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.0
        by_conn = {w.conn: w for w in busy}
        for conn in wait(list(by_conn), timeout=remaining):
            worker = by_conn[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):  # crashed: segfault, the OOM killer, killed from outside
                if worker.batch:
                    key, _, _ = worker.batch.popleft()
                    results[key] = ("error", "grading worker died")
                    if worker.batch:
                        pending.appendleft(list(worker.batch))
                elif not worker.ready:
                    self._failed_starts += 1
                    if self._failed_starts >= 3:
                        raise RuntimeError("grading workers die on start (see their stderr)") from None
                self._replace(worker)
                continue
            if message[0] == "ready":
                worker.ready = True
                continue
            key, result = message
            results[key] = result
            worker.batch.popleft()
            worker.item_started = time.monotonic()

    def _expire(self, results: dict[int, tuple], pending: deque, timeout_s: float) -> None:
        """Kill every worker past its pair's deadline; its other pairs go back in the queue."""
        now = time.monotonic()
        for worker in [w for w in self._workers if w.batch and now - w.item_started > timeout_s]:
            key, _, _ = worker.batch.popleft()
            results[key] = ("timeout", f"no verdict within {timeout_s:g} s")
            if worker.batch:
                pending.appendleft(list(worker.batch))
            worker.batch.clear()
            self._replace(worker)
        for worker in self._workers:
            if not worker.ready and now - worker.started_at > self.START_TIMEOUT_S:
                raise RuntimeError(f"a grading worker did not start within {self.START_TIMEOUT_S:g} s")


_DEFAULT_GRADER: Grader | None = None


def grade(gold: str, pred: str | None, answer_type: AnswerType = "expression", timeout_s: float = 5.0) -> Verdict:
    """Grade one pair (free text allowed on both sides) with a time bound, on a shared pool."""
    global _DEFAULT_GRADER
    if _DEFAULT_GRADER is None:
        _DEFAULT_GRADER = Grader(workers=1)
        atexit.register(_DEFAULT_GRADER.close)
    return _DEFAULT_GRADER.grade(gold, pred, answer_type, timeout_s)
