"""Find the final answer in a completion or a gold solution, and read plain numbers.

Order (JiuZhang3.0, NeMo-Skills): the last ``\\boxed{}`` (brace matched), then an explicit
answer phrase ("The answer is", "answer is:", "Answer:", "####", and the same phrase in a few
other languages: "答案是", "La respuesta es", "Die Antwort ist", "La réponse est", "Ответ:",
...), then the last number. Multiple choice has its own reader (:func:`extract_choice`) that
never takes a letter out of LaTeX (``\\Delta E``) or the article "A".

Several boxes, one rule (:func:`boxed_answer`): the answer is the last box joined (", ") with
each box before it that only list glue separates from the next box of the group. Glue: once
LaTeX spacing, math delimiters, ``\\text{}`` wrappers, list bullets at the start of a line
("- ", "2. ", "(b) ") and labels naming the next box ("x =", "(x, y) =") are read away, what
is left is at most 40 characters, holds no digit, and is only punctuation or ends in "and",
"or", "as well as", "also", a comma or a semicolon. So ``\\boxed{(1,2)}, \\boxed{(3,4)}``,
"x = \\boxed{2} or x = \\boxed{3}" and boxes on bulleted lines are one list answer, while
"\\boxed{1}, no wait: \\boxed{2}" (a correction) or working between two boxes (a step, then
the result) leave only the last box. A box repeated verbatim in a group counts once.

A "bare" answer (the whole text is the answer) is never prose: no sentence, no more than two
words, and no letters of a script other than Latin or Greek (a Chinese or Arabic sentence
that ends in a number is prose whose last number is a guess, not a stated answer).

Everything here is plain string work (regexes without nested quantifiers, linear scans): it
runs in the caller's process on every graded pair, so it must be fast and can never hang.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from data.records import AnswerType
from data.text import find_boxes as _boxes
from data.text import last_boxed  # noqa: F401  (re-exported: eval's reader of answers)

# How an answer was found. "boxed", "anchor" and "bare" are strong: the text says where its
# answer is (or is nothing but an answer), so a mismatch on them is final. "math" (the last
# math span) and "number" (the last number) are guesses on free text without any marker.
How = Literal["boxed", "anchor", "bare", "math", "number", "none"]


@dataclass(frozen=True)
class Located:
    answer: str | None
    how: How
    # For a guess: the text it was guessed from (the whole text, or the prose after an answer
    # phrase). Grading hands it to math-verify's own search when the guess does not match.
    context: str | None = None

    @property
    def strong(self) -> bool:
        return self.how in ("boxed", "anchor", "bare")


_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|textit|textnormal|mbox|mathrm|mathbf)\s*\{([^{}]*)\}")
_LATEX_SPACING_RE = re.compile(r"\\(?:q?quad|[,;:! ])|\\[()\[\]]|\$|\\\\|~")
# A name for what follows: "x", "a_1", "f(x)", "\theta", or a tuple of them "(x, y)".
_NAME = r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:\([A-Za-z](?:\s*,\s*[A-Za-z])*\))?"
_BOX_LABEL_RE = re.compile(rf"(?:{_NAME}|\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\))\s*=\s*$")
# A list bullet opening a line ("- ", "* ", "2. ", "3) "), or a part label anywhere ("(b) ")
_BULLET_RE = re.compile(r"\n\s*(?:[-*•]|\d{1,2}[.)])\s+|(?:^|\s)\([a-z]\)\s+")
_CONNECTOR_RE = re.compile(
    r"(?:^|[\s,;])(?:and|or|as\s+well\s+as|also)[\s,;]*$|^[\s,;.&]*$|[,;]\s*$", re.IGNORECASE
)


def _joins_boxes(between: str) -> bool:
    """Whether the text between two boxes is only list glue (the module doc's one rule).

    "x = \\boxed{2} or \\boxed{3}" is one answer {2, 3}; "\\boxed{1}, no, wait: \\boxed{2}" is a
    correction whose answer is 2. Short digit-free glue ending in a connector counts
    ("\\text{ for part (a) and }"); anything longer is prose.
    """
    cleaned = _LATEX_SPACING_RE.sub(" ", _WRAPPER_RE.sub(r" \1 ", between))
    cleaned = _BULLET_RE.sub(" ", cleaned)
    cleaned = _BOX_LABEL_RE.sub("", cleaned.rstrip()).strip()  # "and y_2 = \boxed{..}": a label
    return len(cleaned) <= 40 and not re.search(r"\d", cleaned) and bool(_CONNECTOR_RE.search(cleaned))


def boxed_contents(text: str) -> list[str]:
    """Every box's content in order (the explorer tells "several boxed answers" apart with it)."""
    return [content.strip() for _, _, content in _boxes(text)]


def boxed_answer(text: str) -> str | None:
    """The last box, joined (", ") with the boxes before it that only list glue separates
    (the module doc's rule); a box repeated verbatim counts once."""
    boxes = _boxes(text)
    if not boxes:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if not _joins_boxes(text[box[1] : group[0][0]]):
            break
        group.insert(0, box)
    contents = list(dict.fromkeys(content.strip() for _, _, content in group))
    return ", ".join(contents)


# --- "The answer is ..." ----------------------------------------------------------------

# "The answer is" and "Answer:" in the languages models answer in most; each is one cheap
# alternative, so a completion in Chinese or Spanish states its answer as an English one does.
# CJK phrases have no \b: there are no spaces between CJK words.
ANSWER_PHRASES = (
    r"\banswer\s+is\s*:?|\banswer\s*\**\s*:\**|####(?![ \t*_]*[^\W\d_])"
    r"|\brespuesta(?:\s+(?:final|correcta))?\s+es\s*:?|\brespuesta(?:\s+final)?\s*:"  # es
    r"|\br[ée]ponse(?:\s+(?:finale|correcte))?\s+est\s*:?|\br[ée]ponse(?:\s+finale)?\s*:"  # fr
    r"|\bantwort\s+(?:ist|lautet)\s*:?|\bantwort\s*:"  # de
    r"|\brisposta(?:\s+(?:finale|corretta))?\s+(?:è|e)\s*:?|\brisposta\s*:"  # it
    r"|\bresposta(?:\s+(?:final|correta))?\s+(?:é|e)\s*:?|\bresposta\s*:"  # pt
    r"|\bответ(?:\s+(?:равен|будет))?\s*[:—-]?(?=\s)|\bответ\s*:"  # ru
    r"|答案\s*(?:是|为|為)\s*[:：]?|答案\s*[:：]|答\s*[:：]|答えは|答え\s*[:：]|정답은|답은"  # zh, ja, ko
    r"|(?:الجواب|الإجابة)(?:\s+(?:هو|هي))?\s*:?"  # ar
)
_ANCHOR_RE = re.compile(f"(?:{ANSWER_PHRASES})", re.IGNORECASE)
# The many-language pattern is 5x slower to scan (its branches share no first character), so
# a text gets it only when a cheap look finds a sign of another language.
# "####" is GSM8K's answer marker only when a value follows it: "#### Part (c)" is a Markdown heading.
_ENGLISH_ANCHOR_RE = re.compile(r"\banswer\s+is\s*:?|\banswer\s*\**\s*:\**|####(?![ \t*_]*[^\W\d_])", re.IGNORECASE)
_OTHER_LANGUAGE_WORDS = ("respuesta", "resposta", "risposta", "antwort", "ponse")
# Cyrillic, Arabic, kana, CJK ideographs, Hangul: one character class, so one fast scan
_OTHER_SCRIPT_RE = re.compile("[\u0400-\u04ff\u0600-\u06ff\u3040-\u30ff\u4e00-\u9fff\uac00-\ud7af]")


def _anchor_re(text: str) -> re.Pattern[str]:
    if not text.isascii() and _OTHER_SCRIPT_RE.search(text):
        return _ANCHOR_RE
    lowered = text.lower()
    return _ANCHOR_RE if any(word in lowered for word in _OTHER_LANGUAGE_WORDS) else _ENGLISH_ANCHOR_RE
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|[。！？]|\n|\s+I hope\b")
_OPENERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


@dataclass(frozen=True)
class _Anchored:
    start: int  # where the answer phrase is: a later phrase beats an earlier \boxed{}
    segment: str  # the text after it, math delimiters kept
    is_span: bool  # the segment is exactly one math span ("The answer is $\frac{1}{2}$.")

    @property
    def answer(self) -> str:
        if self.is_span:
            return self.segment
        answer = strip_math_delimiters(self.segment).strip(" \t*").rstrip(".,;:，；：").strip()
        return _QUOTES_RE.sub("", answer).strip()  # 'The final answer is \"$12$ and $13$\".'


_QUOTES_RE = re.compile(r"^(?:\\?[\"'`])+|(?:\\?[\"'`])+$")


def _segment_after(rest: str) -> tuple[str, bool]:
    """The answer after an answer phrase: a math span, else the rest of the sentence."""
    rest = rest.lstrip(" \t*")
    if rest.startswith("\n"):  # "The answer is:\n$$42$$"
        rest = rest.lstrip()
    for opener, closer in _OPENERS:
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            # "$18." is a price, not an open math span: a span must close in the same paragraph
            if end != -1 and "\n\n" not in rest[:end]:
                after = rest[end + len(closer) :]
                if re.match(r"\s*(?:[.,;:。，；]|\n|$|I hope)", after):
                    return rest[len(opener) : end].strip().rstrip(".").strip(), True
            break
    cut = _SENTENCE_END_RE.search(rest)
    return (rest[: cut.start()] if cut else rest).strip(), False


def _last_anchor(text: str) -> _Anchored | None:
    for match in reversed(list(_anchor_re(text).finditer(text))):
        segment, is_span = _segment_after(text[match.end() :])
        anchored = _Anchored(match.start(), segment, is_span)
        if anchored.answer:
            return anchored
    return None


def anchored_answer(text: str) -> str | None:
    """What follows the last answer phrase ("The answer is", "Answer:", "####"), or None."""
    anchored = _last_anchor(text)
    return anchored.answer if anchored else None


# --- free text fallbacks ----------------------------------------------------------------

# A number not glued to a preceding letter, digit or dot ("AZYUK2A" has none, "x2" neither),
# with optional comma digit grouping and decimals: Western groups of three ("1,234,567") or
# Indian lakh/crore groups ("12,34,567": twos, then a final three). Number answers also take a
# decimal comma ("2,74"); expressions do not, where "1,22" is the list {1, 22}.
_GROUPED = r"\d{1,3}(?:,\d{3})+(?![\d,])|\d{1,2}(?:,\d{2})+,\d{3}(?![\d,])"
_NUMBER_BODY = rf"(?<![A-Za-z0-9_.])[-+]?(?:{_GROUPED}|\d+)(?:\.\d+)?|(?<![\w.])[-+]?\.\d+"
_NUMBER_RE = re.compile(_NUMBER_BODY)
_NUMBER_DECIMAL_COMMA_RE = re.compile(r"(?<![A-Za-z0-9_.,])[-+]?\d+,(?:\d{1,2}|\d{4,})(?![\d,])|" + _NUMBER_BODY)


def _number_re(decimal_comma: bool) -> re.Pattern[str]:
    return _NUMBER_DECIMAL_COMMA_RE if decimal_comma else _NUMBER_RE


_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<![\\$])\$([^$]+?)(?<!\\)\$", re.DOTALL)


def last_number(text: str, decimal_comma: bool = False) -> str | None:
    """The last number in ``text`` ("1,000.5", "-3", ".5"), as written, or None."""
    match = _last_match(_number_re(decimal_comma), _unspace_digits(text))
    return match.group(0) if match else None


def _unspace_digits(text: str) -> str:
    """LaTeX digit grouping ("11,\\!111", "11{,}111") back to plain commas."""
    return text.replace("\\!", "").replace("{,}", ",")


def strip_math_delimiters(text: str) -> str:
    return re.sub(r"\$|\\[()\[\]]", " ", text).strip()


_WORD_RE = re.compile(r"(?<![\\\w])[^\W\d_]{3,}(?![^\W\d_])")  # any script: "réponse" is one word
_PROSE_WORD_RE = re.compile(
    r"\b(?:is|are|was|were|be|the|so|we|it|of|to|that|this|thus|hence|therefore|which|then|get|has|have)\b",
    re.IGNORECASE,
)


def bare_answer(text: str) -> str | None:
    """``text`` itself when it is nothing but an answer ("$\\frac{1}{2}$", "10, 4, -2"), else None.

    Gold fields are usually bare answers, and so are many `pred` fields given to the grade CLI.
    Prose (more than two words outside LaTeX, a word like "is" or "the", a sentence ending in a
    full stop, several math spans, paragraphs, any letter of a script other than Latin or
    Greek) is not.
    """
    stripped = text.strip()
    for opener, closer in _OPENERS:
        if stripped.startswith(opener) and stripped.endswith(closer) and len(stripped) > len(opener) + len(closer):
            inner = stripped[len(opener) : -len(closer)]
            if opener not in inner and closer not in inner:
                return inner.strip() or None
    if not stripped or re.search(r"(?<!\\)\$", stripped) or "\\(" in stripped or "\\[" in stripped or "\n\n" in stripped:
        return None
    outside_latex = re.sub(r"\\[A-Za-z]+", " ", _WRAPPER_RE.sub(" ", stripped))
    if len(stripped) > 300 or len(_WORD_RE.findall(outside_latex)) > 2 or _PROSE_WORD_RE.search(outside_latex):
        return None
    if any(ch.isalpha() and not _math_letter(ch) for ch in outside_latex):
        return None
    if re.search(r"[A-Za-z]{2,}[.!?]\s*$", outside_latex):  # a sentence: "I give up."
        return None
    return stripped


def _math_letter(ch: str) -> bool:
    """Letters that math answers are written in: Latin (with accents), Greek (pi, theta) and
    letterlike symbols (ℝ, ℕ). A CJK, Arabic, Cyrillic... letter means words, so prose: their
    sentences have no spaces or few words of three Latin letters, so no word count catches
    them."""
    code = ord(ch)
    return code <= 0x024F or 0x0370 <= code <= 0x03FF or 0x1E00 <= code <= 0x1EFF or 0x2100 <= code <= 0x214F


# --- numbers ----------------------------------------------------------------------------

_UNIT_WRAPPER_RE = re.compile(
    r"\s*\\(?:text|textnormal|textrm|textit|textbf|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?[23]\}?)?\s*$"
)
# Spaced unit words ("5 apples", "125 miles", "28 percent"); "and"/"or" make a list, not a unit.
_UNIT_WORDS_RE = re.compile(r"^(?:\s+(?!(?:and|or)\b)[A-Za-z]{2,}\.?(?:[²³]|\^\{?[23]\}?)?)+\s*$")
# Glued units: symbols, "m²", a braced word ("144{m}^3"), or a word of four letters or more
# ("10weeks"); "2x", "10cm" and "3ab" stay expressions (a variable, or too ambiguous to drop).
_GLUED_UNIT_RE = re.compile(r"^\s*(?:[€£¥₹]|[A-Za-z]{1,3}[²³]|°[CF]?|[a-z]{4,}|\{[A-Za-z]+\}(?:\^\{?[23]\}?)?)\s*$")
# "x =", "a_1 =", "f(x) =" in front of an answer names it; one "=" only ("2x+4y=3" is an equation)
_ASSIGNMENT_RE = re.compile(r"^\s*[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?(?:\([A-Za-z]\))?\s*=\s*(?=[^=]+$)")
_PERCENT_RE = re.compile(r"\s*(?:\\?%|\s(?:percent|percentage|pct))\s*$", re.IGNORECASE)
_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_MIXED_RES = (  # "2 1/2", "2\frac{1}{2}": MATH writes mixed numbers; the fraction must be proper
    re.compile(r"([+-]?)(\d+)\s+(\d+)/(\d+)"),
    re.compile(r"([+-]?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}"),
    re.compile(r"([+-]?)(\d+)\s*\\frac(\d)(\d)"),
)
_FRACTION_RES = (
    re.compile(r"([+-]?)(\d+)/(\d+)"),
    re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{(\d+)\}"),
    re.compile(r"([+-]?)\\frac(\d)(\d)"),
)


def _strip_decorations(text: str) -> str:
    """LaTeX spacing, dollar signs, \\left/\\right, degree marks: never part of the value."""
    s = text.strip().rstrip(".").strip()
    s = s.replace("\\$", "").replace("$", "").replace("{,}", ",")
    s = re.sub(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\\[!,;: ]|~", "", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree(?![A-Za-z])", "", s)
    return s.strip()


def parse_number(text: str | None, decimal_comma: bool = False) -> tuple[Fraction, bool] | None:
    """(value, is_percent) when ``text`` is one plain number, else None.

    Plain means: an integer or decimal (leading zeros allowed, so "016" == 16), a fraction
    "3/4" or "\\frac{3}{4}", with digit grouping ("7,425,000", "1 000", "11,\\!111", Indian
    "1,23,456"), a currency sign, a degree sign, a percent sign (flagged), a unit ("5 apples",
    "15\\text{ cm}^2", "2.74€") and a single-variable assignment ("x = 5") around it. A comma that
    is not digit grouping ("1,22") makes it a list, not a number (math-verify decides),
    unless ``decimal_comma`` (number answers, which are never lists): then "1,22" is 1.22.
    "2x", "3\\sqrt{2}", "1e5" are not plain numbers either.
    """
    if not text or len(text) > 200:
        return None
    s = _strip_decorations(text)
    s = _ASSIGNMENT_RE.sub("", s)
    while (unit := _UNIT_WRAPPER_RE.search(s)) and unit.start() > 0:
        s = s[: unit.start()]
    percent = False
    if (mark := _PERCENT_RE.search(s)) and mark.start() > 0:
        s, percent = s[: mark.start()], True
    s = s.strip()
    head = re.match(
        r"[+-]?(?:[1-9]\d{0,2}(?:(,|\s)\d{3})(?:\1\d{3})*(?!\d)|[1-9]\d?(?:,\d{2})+,\d{3}(?!\d)|\d+(?!\d))"
        r"(?:\.\d+)?|[+-]?\.\d+",
        s,
    )
    if head and head.end() < len(s):
        tail = s[head.end() :]
        if _UNIT_WORDS_RE.match(tail) or _GLUED_UNIT_RE.match(tail):
            s = s[: head.end()]
            if not percent and re.match(r"\s+(?:percent|percentage|pct)\b", tail, re.IGNORECASE):
                percent = True
    if head and head.end() == len(s):  # a well-formed grouping: every separator goes
        s = re.sub(r"(?<=\d)[,\s](?=\d)", "", s)
    s = re.sub(r"\s*([{}/])\s*", r"\1", s).strip()
    if decimal_comma and re.fullmatch(r"[+-]?\d+,\d+", s):
        s = s.replace(",", ".")
    try:
        if _PLAIN_NUMBER_RE.fullmatch(s):
            return Fraction(s), percent
        for pattern in _MIXED_RES:
            if match := pattern.fullmatch(s):
                sign, whole, num, den = match.groups()
                if 0 < int(num) < int(den):
                    value = int(whole) + Fraction(int(num), int(den))
                    return (-value if sign == "-" else value), percent
        for pattern in _FRACTION_RES:
            if match := pattern.fullmatch(s):
                sign, num, den = match.groups()
                if int(den) == 0:
                    return None
                value = Fraction(int(num), int(den))
                return (-value if sign == "-" else value), percent
    except (ValueError, ZeroDivisionError):  # e.g. more digits than int() converts
        return None
    return None


def numbers_equal(gold: tuple[Fraction, bool], pred: tuple[Fraction, bool], rel_tol: float = 1e-4) -> bool:
    """Equal within ``rel_tol`` relative tolerance (JiuZhang3.0's 1e-4) when both are
    non-integers (1/3 vs 0.3333). An integer on either side must be hit up to float noise
    (:data:`INTEGER_REL_TOL`): with 1e-4, 10456 would "equal" 10455 and 9999.86 would equal
    10000, while a program's 17.999999999999996 still equals 18.

    When exactly one side carries a percent sign, "28%" also equals 0.28: models write either.
    """
    (a, a_pct), (b, b_pct) = gold, pred
    candidates = [(a, b)]
    if a_pct and not b_pct:
        candidates.append((a / 100, b))
    elif b_pct and not a_pct:
        candidates.append((a, b / 100))
    return any(_close(x, y, rel_tol) for x, y in candidates)


INTEGER_REL_TOL = 1e-9


def _close(x: Fraction, y: Fraction, rel_tol: float) -> bool:
    if x == y:
        return True
    if x.denominator == 1 or y.denominator == 1:
        rel_tol = min(rel_tol, INTEGER_REL_TOL)
    try:
        fx, fy = float(x), float(y)
    except OverflowError:
        return False
    return abs(fx - fy) <= rel_tol * max(abs(fx), abs(fy))


# --- string normal forms ----------------------------------------------------------------


def canonical_latex(text: str) -> str:
    """A normal form for exact comparison of LaTeX answers: spacing, \\left/\\right, \\dfrac,
    braces of one-digit \\frac/\\sqrt arguments, \\text wrappers, "x =" and a final period
    removed. Only ever used to declare two answers equal, so it stays conservative."""
    s = _strip_decorations(text)
    s = _WRAPPER_RE.sub(r"\1", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    # y^{\prime\prime} is y'': one spelling of a derivative
    s = re.sub(r"\^\s*\{((?:\s*\\prime)+)\s*\}|\^\s*\\prime(?![A-Za-z])", lambda m: "'" * max(1, m.group(0).count("prime")), s)
    s = s.replace("\\%", "%")
    s = _ASSIGNMENT_RE.sub("", s)
    return re.sub(r"\s+", "", s)


def normalize_text(text: str) -> str:
    """Case-, space- and punctuation-insensitive form for text and choice answers."""
    s = _WRAPPER_RE.sub(r"\1", text)
    s = re.sub(r"[$.,;:!?()\[\]{}\"'`*]|\\[()\[\]]", " ", s)
    return " ".join(s.lower().split())


# --- public API -------------------------------------------------------------------------


def locate_answer(text: str | None, answer_type: AnswerType = "expression") -> Located:
    """Where the answer of ``text`` is and how sure we are (see :data:`How`).

    The last box wins, unless an answer phrase comes after it ("... \\boxed{255} ... The final
    answer is $10,455$."): the statement nearest the end is the final one. An answer phrase
    followed by prose ("The largest $n$ is 34") gives a guess from that prose.
    """
    if not text or not text.strip():
        return Located(None, "none")
    boxes = _boxes(text)
    anchored = _last_anchor(text)
    stated = anchored is not None and (anchored.is_span or bare_answer(anchored.answer) is not None)
    # A later phrase overrides a box only with something mathematical: "so our answer is
    # correct" after \boxed{-5} does not.
    later_statement = (
        stated
        and anchored is not None
        and bool(boxes)
        and anchored.start > boxes[-1][1]
        and bool(re.search(r"[\d\\]", anchored.answer))
    )
    if boxes and not later_statement:
        return _strong(boxed_answer(text), "boxed", answer_type)
    if anchored:
        if stated:
            return _strong(anchored.answer, "anchor", answer_type)
        return _guess(anchored.segment, answer_type)
    if bare := bare_answer(text):
        return _strong(bare, "bare", answer_type)
    return _guess(text, answer_type)


def _strong(answer: str | None, how: How, answer_type: AnswerType) -> Located:
    if answer and answer_type == "number":
        answer = _reduce_to_number(answer)
    return Located(answer, how if answer else "none")


def _guess(text: str, answer_type: AnswerType) -> Located:
    """No marker: the last number, or for expressions the last math span when it ends later
    ("so $x = \\frac{1}{2}$." is 1/2, not 2)."""
    scan = _unspace_digits(text)
    number = _last_match(_number_re(answer_type == "number"), scan)
    span = _last_match(_MATH_SPAN_RE, scan) if answer_type == "expression" else None
    if span and (number is None or span.end() >= number.end()):
        content = next(g for g in span.groups() if g is not None).strip()
        if content:
            return Located(content, "math", text)
    if number and answer_type in ("number", "expression"):
        return Located(number.group(0), "number", text)
    return Located(None, "none", text)


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):
        pass
    return last


def _reduce_to_number(answer: str) -> str:
    """For number answers: "5 + 3 = 8" -> "8"; LaTeX ("3\\sqrt{2}") is left for math-verify."""
    if parse_number(answer, decimal_comma=True) is not None or re.search(r"\\(?!text|mbox)[A-Za-z]", answer):
        return answer
    return last_number(answer, decimal_comma=True) or answer


def extract_answer(text: str | None, answer_type: AnswerType = "expression", choices: Sequence[str] | None = None) -> str | None:
    """The final answer of ``text`` as a string, or None when it states none."""
    if answer_type == "choice":
        return extract_choice(text or "", len(choices) if choices else 5, choices)
    return locate_answer(text, answer_type).answer


# --- multiple choice --------------------------------------------------------------------

_LETTER_WRAP = r"(?:\\(?:text|textbf|mathrm|mathbf|mathit)\s*\{\s*)?"
# After the letter: the end, punctuation, a closing bracket, or a space then something that is
# not a word: "A triangle" is the article; "A) 12", "A $12$", "C is correct", "C since ..." and
# "C because ..." are choices.
_LETTER_END = (
    r"\s*\}?\)?(?=\s*$|\s*[.,;:!*$}\])\n—–]|\s+[(\d$\\-]"
    r"|\s+(?:is|was|as|since|because|which|so|given|and|but)\b)"
)
# Where a choice is stated: an answer phrase (any language the anchor reader knows), "option",
# "choice", "my pick", "I'd choose / select / go with", then an optional "is" / "would be".
_CHOICE_PHRASES = (
    rf"{ANSWER_PHRASES}|\boption|\bchoice|\bpick|\bselection"
    r"|\bI(?:\s+would|\s+will|'d|'ll)?\s+(?:choose|select|go\s+with)"
    r"|\bans(?:wer)?\b(?:\s*[-=:.>]+)?"  # "Answer D", "ANS:D", "Answer - E.", "answer = B"
)


@lru_cache(maxsize=16)
def _letter_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    letter = rf"\$?\s*\(?{_LETTER_WRAP}\(?([{letters}])"
    anchor = re.compile(
        rf"(?i:{_CHOICE_PHRASES})(?i:\s+(?:is|was|would\s+be|will\s+be))?[*\s:]*{letter}{_LETTER_END}"
    )
    # the final line is a letter ("C", "(C)", "**C.**"), or starts with one and its option text
    # ("C. x = 42", "(C) 12"); "A triangle ..." has no period or bracket after the "A"
    lone = re.compile(rf"^[*\s]*\$?\(?{_LETTER_WRAP}([{letters}])(?:\}}?\)?\$?[.:]?[*\s]*$|[.)]\s)")
    paren = re.compile(rf"(?<![\\A-Za-z])\(([{letters}])\)")
    # the letter before its verdict: "D is the answer", "C is correct", "(B) is the right choice"
    stated_before = re.compile(
        rf"(?<![\\\w])\(?([{letters}])\)?\s+is\s+(?i:the\s+)?(?i:correct|right|answer|best)\b"
    )
    return anchor, lone, paren, stated_before


def choice_letter(answer: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The letter of an already extracted choice answer: "C", "(C)", "\\text{(C)}", "C) 12"."""
    inner = _WRAPPER_RE.sub(r"\1", answer).strip().strip("$ ")
    match = re.fullmatch(rf"\(?([{letters}])\)?(?:[.:)]?\s.*)?", inner, re.DOTALL)
    return match.group(1) if match else None


def _option_match(answer: str, choices: Sequence[str], letters: str) -> str | None:
    """The one letter whose option text the answer states (same text, or same number)."""
    norm, value = normalize_text(answer), parse_number(answer)
    hits = []
    for letter, option in zip(letters, choices):
        option_value = parse_number(option)
        if (norm and normalize_text(option) == norm) or (
            value is not None and option_value is not None and numbers_equal(option_value, value)
        ):
            hits.append(letter)
    return hits[0] if len(hits) == 1 else None


def extract_choice(text: str, n_choices: int = 5, choices: Sequence[str] | None = None) -> str | None:
    """The option letter ``text`` picks, or None.

    Preference: a boxed letter; an answer phrase ("answer is (C)", "Answer: C", "option C",
    "my pick is C, since ...", "La respuesta es C"); a final line that is just a letter; a
    "(C)" on the final line; last, the text of one option stated as the answer (boxed, after an
    answer phrase, or the whole text). Letters count only as whole tokens at those places, so
    ``\\Delta E`` or ``\\mathrm{E}`` in the working and the article "A" never do.

    The last number counts as an option's text only in a completion that ended on its own:
    one that loops or was cut off mid-working (:func:`_looks_degenerate`) states no answer,
    so it gives None even when its last number or math span is some option's text. Its final
    line is not read as a letter either when it repeats an earlier line or ends a list of
    the options.
    """
    letters = "ABCDEFGHIJ"[: max(1, min(n_choices, 10))]
    anchor_re, lone_re, paren_re, stated_before_re = _letter_patterns(letters)
    boxed = boxed_answer(text)
    if boxed and (letter := choice_letter(boxed, letters)):
        return letter
    anchors = [*anchor_re.finditer(text), *stated_before_re.finditer(text)]
    if anchors:
        return max(anchors, key=lambda match: match.start()).group(1)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    no_final_line = not lines or _repeats_or_lists_options(lines, lone_re)
    if not no_final_line:
        if lone := lone_re.match(lines[-1]):
            return lone.group(1)
        if parens := paren_re.findall(lines[-1]):
            return parens[-1]
    if choices:
        # a last number is a guess, and on a looping or cut-off completion it is whatever step
        # the text stopped at, not an answer
        guess = None if no_final_line or _looks_degenerate(text) else last_number(text)
        for candidate in (boxed, anchored_answer(text), bare_answer(text), guess):
            if candidate and (letter := _option_match(candidate, choices, letters)):
                return letter
    return None


_UNFINISHED_END_RE = re.compile(r"(?:[,+\-*/=(^_\\{]|\b(?:and|or|so|then|the|is|of|to|we|that|which))\s*$", re.IGNORECASE)


def _looks_degenerate(text: str) -> bool:
    """A completion that loops (its last line repeats an earlier one, or a sentence or line of
    10+ characters comes three times) or was cut off mid-working (an unclosed math span or brace, or it ends on an operator or a word that
    needs more: "... = 12 and then")."""
    body = text.strip()
    if len(re.findall(r"(?<!\\)\$", body)) % 2 or body.count("{") > body.count("}"):
        return True
    if body.count("\\(") != body.count("\\)") or body.count("\\[") != body.count("\\]"):
        return True
    if _UNFINISHED_END_RE.search(body):
        return True
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    if lines and lines[-1] in lines[:-1]:
        return True
    pieces = [piece.strip() for piece in re.split(r"(?<=[.!?])\s+|\n", body)]
    counts = Counter(piece for piece in pieces if len(piece) >= 10)
    return any(count >= 3 for count in counts.values())


def _repeats_or_lists_options(lines: list[str], lone_re: re.Pattern[str]) -> bool:
    """The final line is no answer when it repeats an earlier line (the text loops) or the
    line before it also starts with an option letter (the text ends listing the options)."""
    if lines[-1] in lines[:-1]:
        return True
    return len(lines) > 1 and bool(lone_re.match(lines[-2]) and lone_re.match(lines[-1]))
