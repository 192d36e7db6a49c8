"""The benchmark registry: each name knows its file, how to read it into canonical
``BenchmarkRecord``s, how its answers are compared, how it is prompted by default, where its
few-shot exemplars come from, and its licence (details in ``LICENSES.md``).

The shipped files under ``data/`` are byte-exact copies of their sources; everything a grader
needs (the gold answer, the choices, the table) is derived here, one small loader per source
format. A benchmark without code: ``load_benchmark_config("my_bench.yaml")``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

from pydantic import Field, model_validator

from data.config_base import StrictConfig
from data.config_files import read_yaml_mapping, validate_model
from data.errors import ConfigError, InputError
from data.jsonl import iter_json_objects
from data.records import AnswerType, BenchmarkRecord
from data.text import (
    last_boxed,  # the same reader the grader uses, so gold and prediction agree
)

DATA_DIR = Path(__file__).resolve().parent / "data"
LETTERS = "ABCDEFGHIJ"

PromptStyle = Literal["zero_shot", "few_shot", "chat"]


Loader = Callable[["BenchmarkSpec"], Iterator[BenchmarkRecord]]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    file: Path
    answer_type: AnswerType  # the benchmark's main type; ASDiv and TabMWP records override it per row
    loader: Loader
    expected_rows: int | None  # checked on every full load: a truncated or swapped file fails loudly
    few_shot: str | None  # name of the exemplar pool in EXEMPLAR_POOLS, None: no few-shot prompting
    default_prompt: PromptStyle  # JiuZhang3.0: zero-shot except AQuA, SAT-Math, MMLU-STEM (5-shot)
    licence: str
    split: str = "test"
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)  # loader settings (custom benchmarks)


# ---------------------------------------------------------------- reading and normalising


def _rows(spec: BenchmarkSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) for each non-blank line; a bad line stops with file:line."""
    if not spec.file.is_file():
        raise InputError(f"{spec.file}: benchmark file not found")
    yield from iter_json_objects(spec.file)


def _field(spec: BenchmarkSpec, line_no: int, row: dict[str, Any], name: str) -> Any:
    if name not in row or row[name] is None:
        raise InputError(f"{spec.file}:{line_no}: missing field {name!r}")
    return row[name]


def _record(spec: BenchmarkSpec, index: int, line_no: int, **fields: Any) -> BenchmarkRecord:
    fields.setdefault("answer_type", spec.answer_type)
    fields.setdefault("id", f"{spec.name}/{spec.split}/{index}")
    gold = fields.get("gold")
    if not isinstance(gold, str) or not gold.strip():
        raise InputError(f"{spec.file}:{line_no}: empty gold answer")
    if not str(fields.get("question") or "").strip():
        raise InputError(f"{spec.file}:{line_no}: empty question")
    if fields["answer_type"] == "choice":
        choices = fields.get("choices") or []
        if len(gold) != 1 or gold not in LETTERS[: len(choices)]:
            raise InputError(f"{spec.file}:{line_no}: gold {gold!r} is not a letter of its {len(choices)} choices")
    return BenchmarkRecord(benchmark=spec.name, **fields)


def number_text(value: Any) -> str:
    """A gold number as plain text: 145.0 -> "145", "4,656" -> "4656", float noise rounded
    to 12 significant digits (gsm-hard's 3244047.0999999996 -> "3244047.1")."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if isinstance(value, int):
            return str(value)
        text = f"{value:.12g}"
        return repr(value) if "e" in text else text
    text = str(value).strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    float(text)  # raises ValueError for anything that is not a plain number
    return text


def despace_latex(text: str) -> str:
    """CARP writes answers space-tokenised (``b ^ { 2 } - 9 a ^ { 2 }``). Spaces are dropped
    except the one that ends a control word before a letter (``\\le a``), so the LaTeX means
    the same and reads like everyone else's (``b^{2}-9a^{2}``)."""
    kept = re.sub(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])", lambda m: m.group(1) + "\0", text.strip())
    return re.sub(r"\s+", "", kept).replace("\0", " ")


def _sentence(body: str, question: str) -> str:
    """SVAMP/ASDiv split a problem into a body and a question; join them as one text."""
    body, question = body.strip(), question.strip()
    if body and body[-1] not in ".?!,;:":
        body += "."
    return f"{body} {question}".strip()


def _split_options(text: str, letters: str = "ABCD") -> list[str]:
    """SAT-Math gives its options as one string: ``A) $x<3$ B) $x<-1$ ...`` (sometimes ``A.``).
    Markers are searched in letter order, each after the previous one, so a letter inside an
    option's text (``data set A``) is not mistaken for a marker."""
    starts = []
    position = 0
    for letter in letters:
        pattern = re.compile(rf"(?:^|\s){letter}[.)]\s*")
        match = pattern.search(text, position)
        if match is None:
            raise ValueError(f"option {letter} not found")
        starts.append((match.start(), match.end()))
        position = match.end()
    ends = [s for s, _ in starts[1:]] + [len(text)]
    return [text[body:end].strip() for (_, body), end in zip(starts, ends)]


# ---------------------------------------------------------------- one loader per source format


def load_gsm8k(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """``question`` / ``answer``: the worked solution (with <<calculator>> notes), gold after ``#### ``."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        answer = _field(spec, line_no, row, "answer")
        solution, sep, gold = answer.rpartition("#### ")
        if not sep:
            raise InputError(f"{spec.file}:{line_no}: no '#### ' gold line")
        solution = re.sub(r"<<[^<>]*>>", "", solution).strip()
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "question"),
                      gold=number_text(gold), reference_solution=solution)


def load_math(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """MATH (Hendrycks) and Minerva: ``problem`` / ``solution``; gold = last ``\\boxed{}``."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        solution = _field(spec, line_no, row, "solution")
        gold = last_boxed(solution)
        if gold is None and spec.options.get("skip_empty_gold"):
            continue  # two MATH train solutions box nothing (\boxed{}): useless as exemplars
        if gold is None:
            raise InputError(f"{spec.file}:{line_no}: no (non-empty) \\boxed{{}} answer in the solution")
        meta = {k: row[k] for k in ("idx", "unique_id") if k in row}
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "problem"), gold=gold.strip(),
                      subject=row.get("type"), level=row.get("level"), reference_solution=solution, meta=meta)


def load_math500(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """PRM800K's MATH-500: ``answer`` given; level is an int there, "Level N" as in MATH."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        level = row.get("level")
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "problem"),
                      gold=str(_field(spec, line_no, row, "answer")).strip(), subject=row.get("subject"),
                      level=f"Level {level}" if isinstance(level, int) else level,
                      reference_solution=row.get("solution"), meta={"unique_id": row.get("unique_id")})


def load_svamp(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    for index, (line_no, row) in enumerate(_rows(spec)):
        question = _sentence(_field(spec, line_no, row, "Body"), _field(spec, line_no, row, "Question"))
        yield _record(spec, index, line_no, question=question, gold=number_text(_field(spec, line_no, row, "Answer")),
                      subject=row.get("Type"), meta={"source_id": row.get("ID"), "equation": row.get("Equation")})


_ASDIV_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:\(([^()]*)\))?")
_FRACTION = re.compile(r"(-?)\(?(-?\d+\s*/\s*\d+)\)?")


def asdiv_gold(raw: str) -> tuple[str, AnswerType, str | None]:
    """ASDiv golds: ``9 (apples)`` -> ("9", number, unit "apples"); ``5/2``, ``-(1/3)`` ->
    expression; ratios (``3:4``), clock times (``3:30 p.m.``) and names (``Mrs. Hilt``) -> text."""
    raw = raw.strip()
    number = _ASDIV_NUMBER.fullmatch(raw)
    if number:
        return number.group(1), "number", number.group(2)
    fraction = _FRACTION.fullmatch(raw)
    if fraction:
        sign, body = fraction.groups()
        return f"{sign}{body.replace(' ', '')}", "expression", None
    return raw, "text", None


def load_asdiv(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    for index, (line_no, row) in enumerate(_rows(spec)):
        raw = _field(spec, line_no, row, "answer")
        gold, answer_type, unit = asdiv_gold(raw)
        question = _sentence(_field(spec, line_no, row, "body"), _field(spec, line_no, row, "question"))
        yield _record(spec, index, line_no, question=question, gold=gold, answer_type=answer_type,
                      subject=row.get("solution_type"),
                      meta={"gold_raw": raw, "unit": unit, "formula": row.get("formula")})


def load_input_target(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """MAWPS and GSM-Hard: ``input`` / ``target`` (a float); GSM-Hard also has a PAL program."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        target = _field(spec, line_no, row, "target")
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "input"), gold=number_text(target),
                      subject=row.get("type"), reference_solution=row.get("code"),
                      meta={"gold_raw": target})


def load_tabmwp(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """TabMWP: the table (with its title) travels with the question. ``ans_type``
    integer_number/decimal_number -> number (``3/10`` fractions -> expression); the
    multi-choice kinds (boolean_text, extractive_text, other_text) -> text: the gold is the
    option's text, as TabMWP grades it, with the options in ``choices`` and the letter in
    ``meta.gold_letter``."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        answer = str(_field(spec, line_no, row, "answer")).strip()
        choices = row.get("choices") or None
        ans_type = row.get("ans_type")
        meta: dict[str, Any] = {"pid": row.get("pid"), "ans_type": ans_type, "unit": row.get("unit"),
                                "grade": row.get("grade"), "ques_type": row.get("ques_type")}
        if ans_type in ("integer_number", "decimal_number"):
            gold = answer.replace(",", "")
            answer_type: AnswerType = "expression" if "/" in gold else "number"
        else:
            gold, answer_type = answer, "text"
            if choices:
                if answer not in choices:
                    raise InputError(f"{spec.file}:{line_no}: answer {answer!r} is not one of its choices")
                meta["gold_letter"] = LETTERS[choices.index(answer)]
        title = (row.get("table_title") or "").strip()
        table = _field(spec, line_no, row, "table")
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "question"), gold=gold,
                      answer_type=answer_type, choices=choices, table=f"{title}\n{table}" if title else table,
                      reference_solution=row.get("solution"), meta=meta)


def load_aqua(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """``options`` like ``["A)21", "B)22", ...]``; gold letter in ``correct``."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        options = _field(spec, line_no, row, "options")
        choices = [re.sub(r"^\s*[A-J]\s*\)\s*", "", option, count=1).strip() for option in options]
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "question"),
                      gold=str(_field(spec, line_no, row, "correct")).strip().upper(), choices=choices,
                      reference_solution=row.get("rationale"))


def load_sat_math(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """The 32 May-2023 SAT problems: options in one string, gold letter in ``Answer``."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        try:
            choices = _split_options(_field(spec, line_no, row, "options"))
        except ValueError as err:
            raise InputError(f"{spec.file}:{line_no}: cannot split options ({err})") from None
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "question"),
                      gold=str(_field(spec, line_no, row, "Answer")).strip().upper(), choices=choices,
                      meta={"source_id": row.get("id")})


_SAT_VERDICT = re.compile(r"^\s*Choice\s*\$?\s*(?:\\math[a-z]+\s*\{\s*)?[A-D]\s*\}?\s*\$?\s*is\s+(?:the\s+)?correct\s*\.?\s*")
_SAT_DISTRACTORS = re.compile(r"\s*(?:Choices?|Options?)\s*\$?\s*(?:\\math[a-z]+\s*\{\s*)?[A-D][^.]{0,80}?\b(?:is|are)\s+"
                              r"(?:each\s+)?incorrect.*$", re.S)


def sat_reasoning(solution: str) -> str:
    """An official SAT explanation as chain of thought: "Choice B is correct. <why>. Choice A
    is incorrect ..." -> "<why>." (the exemplar then ends with "The answer is (B).")."""
    text = _SAT_DISTRACTORS.sub("", _SAT_VERDICT.sub("", solution, count=1))
    return re.sub(r"\.(?=[A-Z])", ". ", text).strip()


def load_agieval_sat(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """AGIEval SAT-Math (220 official practice-test questions with worked solutions): the
    pool of multiple-choice exemplars, not a benchmark. Rows with a reading passage are
    kept here; the exemplar filter drops them."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        # Two options carry the next section's heading ("$y=(x+a)^{2}$ DIRECTIONS"): cut it.
        choices = [re.sub(r"^\s*\([A-J]\)\s*|\s+DIRECTIONS\b.*$", "", option, flags=re.S).strip()
                   for option in _field(spec, line_no, row, "options")]
        solution = (row.get("other") or {}).get("solution") or ""
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "question"),
                      gold=str(_field(spec, line_no, row, "label")).strip().upper(), choices=choices,
                      reference_solution=sat_reasoning(solution) or None,
                      meta={"passage": row.get("passage") or "", "solution_raw": solution})


def load_mmlu_stem(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """``choices`` list, ``answer`` a 0-based index; ``type`` is the MMLU subject."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        choices = [str(c) for c in _field(spec, line_no, row, "choices")]
        answer = _field(spec, line_no, row, "answer")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise InputError(f"{spec.file}:{line_no}: answer index {answer!r} out of range")
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "question"), gold=LETTERS[answer],
                      choices=choices, subject=row.get("type"))


def load_carp(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    """CARP (English): ``content`` / ``answer`` in space-tokenised LaTeX, de-spaced (raw kept in meta)."""
    for index, (line_no, row) in enumerate(_rows(spec)):
        raw = str(_field(spec, line_no, row, "answer"))
        yield _record(spec, index, line_no, question=_field(spec, line_no, row, "content"), gold=despace_latex(raw),
                      reference_solution=row.get("steps"), meta={"gold_raw": raw})


# ---------------------------------------------------------------- the shipped benchmarks

_LICENCE = {
    "gsm8k": "MIT (openai/grade-school-math LICENSE)",
    "math": "MIT (hendrycks MATH; harness repo MIT)",
    "math_train": "MIT (hendrycks/math); aiwaves-cn/agents repo Apache-2.0",
    "math500": "MIT (MATH via openai/prm800k split; harness MIT)",
    "svamp": "MIT (arkilpatel/SVAMP LICENSE)",
    "asdiv": "no license declared in chaochun/nlu-asdiv-dataset (HF mirrors often list CC BY-NC 4.0 - unverified); harness repo MIT",
    "mawps": "no license file in sroy9/mawps; harness repo MIT",
    "tabmwp": "CC BY-NC-SA 4.0 (TabMWP dataset, per PromptPG README; code MIT)",
    "aqua": "Apache-2.0 (deepmind/AQuA)",
    "sat_math": "harness MIT; questions are College Board SAT (May 2023) content - copyright College Board, research use",
    "sat_math_agieval": "MIT (AGIEval data/v1/LICENSE: Gaokao, SAT section)",
    "carp_en": "no license file in RUCAIBox/CARP; Qwen2.5-Math evaluation/LICENSE (MIT) covers the harness",
    "mmlu_stem": "MIT (MMLU, hendrycks/test)",
    "minerva_math": "MIT OpenCourseWare problems (CC BY-NC-SA 4.0 per OCW); harness MIT",
    "gsm_hard": "PAL GSM-Hard (reasoning-machines/pal) - license not verified; harness MIT",
}


def _spec(name: str, path: str, answer_type: AnswerType, loader: Loader, rows: int, few_shot: str | None,
          default_prompt: PromptStyle = "zero_shot", *, split: str = "test", licence_key: str | None = None,
          description: str = "", **options: Any) -> BenchmarkSpec:
    return BenchmarkSpec(name=name, file=DATA_DIR / path, answer_type=answer_type, loader=loader, expected_rows=rows,
                         few_shot=few_shot, default_prompt=default_prompt, licence=_LICENCE[licence_key or name],
                         split=split, description=description, options=options)


_SHIPPED = [
    _spec("gsm8k", "gsm8k/test.jsonl", "number", load_gsm8k, 1319, "gsm8k_train",
          description="GSM8K grade-school word problems (test)"),
    _spec("math", "math/test.jsonl", "expression", load_math, 5000, "math_train",
          description="MATH (Hendrycks), all 5,000 test problems"),
    _spec("math500", "math500/test.jsonl", "expression", load_math500, 500, "math_train", licence_key="math500",
          description="MATH-500 (PRM800K split): JiuZhang3.0's 'MATH' column"),
    _spec("svamp", "svamp/test.jsonl", "number", load_svamp, 1000, "gsm8k_train",
          description="SVAMP variations of one-step word problems"),
    _spec("asdiv", "asdiv/test.jsonl", "number", load_asdiv, 2215, "gsm8k_train",
          description="ASDiv (mostly numbers; 131 ratio/time/name/fraction golds typed per row)"),
    _spec("mawps", "mawps/test.jsonl", "number", load_input_target, 2065, "gsm8k_train",
          description="MAWPS = AddSub + MultiArith + SingleEq + SingleOp"),
    _spec("tabmwp", "tabmwp/test.jsonl", "number", load_tabmwp, 1000, "gsm8k_train",
          description="TabMWP test1k: word problems over a table (number, fraction or option-text golds)"),
    _spec("aqua", "aqua/test.jsonl", "choice", load_aqua, 254, "sat_math_agieval", "few_shot",
          description="AQuA-RAT algebra word problems, five options"),
    _spec("sat_math", "sat_math/test.jsonl", "choice", load_sat_math, 32, "sat_math_agieval", "few_shot",
          description="SAT Math (May 2023), 32 four-option problems"),
    _spec("carp_en", "carp_en/test.jsonl", "expression", load_carp, 976, "carp_en_demo",
          description="CARP (English) middle-school algebra with LaTeX answers"),
    _spec("mmlu_stem", "mmlu_stem/test.jsonl", "choice", load_mmlu_stem, 3018, "sat_math_agieval", "few_shot",
          description="MMLU STEM subjects (18), four options"),
    _spec("minerva_math", "minerva_math/test.jsonl", "expression", load_math, 272, "math_train",
          description="Minerva OCW undergraduate STEM problems"),
    _spec("gsm_hard", "gsm_hard/test.jsonl", "number", load_input_target, 1319, "gsm8k_train",
          description="GSM-Hard: GSM8K test with large numbers (PAL)"),
]

BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SHIPPED}


# ---------------------------------------------------------------- few-shot exemplar pools


@dataclass(frozen=True)
class ExemplarPool:
    """Where few-shot exemplars come from. Records carry a worked ``reference_solution``;
    ``keep`` drops the ones unfit for a prompt (diagrams, very long solutions)."""

    spec: BenchmarkSpec
    note: str
    keep: Callable[[BenchmarkRecord], bool] = lambda record: True


def _short_math(record: BenchmarkRecord) -> bool:
    solution = record.reference_solution or ""
    return len(solution) <= 700 and len(record.question) <= 400 and "[asy]" not in solution + record.question


def _short_sat(record: BenchmarkRecord) -> bool:
    solution = record.reference_solution or ""
    return (not record.meta.get("passage") and 80 <= len(solution) <= 600 and len(record.question) <= 400
            and "tabular" not in record.question)


EXEMPLAR_POOLS: dict[str, ExemplarPool] = {
    "gsm8k_train": ExemplarPool(
        _spec("gsm8k_train", "gsm8k/train.jsonl", "number", load_gsm8k, 7473, None, split="train", licence_key="gsm8k"),
        "GSM8K train (7,473): GSM8K's own exemplars, and the arithmetic word-problem exemplars of "
        "SVAMP, ASDiv, MAWPS, GSM-Hard and TabMWP, which ship no train split"),
    "math_train": ExemplarPool(
        _spec("math_train", "math/train.jsonl", "expression", load_math, 7498, None, split="train",
              skip_empty_gold=True),
        "MATH train (7,500; 2 rows with an empty \\boxed{} dropped): for MATH, MATH-500 and "
        "Minerva-Math; solutions over 700 characters or with [asy] diagrams are skipped", _short_math),
    "carp_en_demo": ExemplarPool(
        _spec("carp_en_demo", "carp_en/demo.json", "expression", load_carp, 8, None, split="demo", licence_key="carp_en"),
        "CARP's own 8 demonstrations (carp_en/demo.json)"),
    "sat_math_agieval": ExemplarPool(
        _spec("sat_math_agieval", "sat_math_agieval/test.jsonl", "choice", load_agieval_sat, 220, None,
              licence_key="sat_math_agieval"),
        "AGIEval SAT-Math (220 official SAT practice questions with worked solutions): the "
        "multiple-choice exemplars of AQuA, SAT-Math and MMLU-STEM, none of which ships a split "
        "with solutions; rows with a passage, a table or a long solution are skipped", _short_sat),
}


# ---------------------------------------------------------------- loading


def get_spec(name_or_spec: str | BenchmarkSpec) -> BenchmarkSpec:
    if isinstance(name_or_spec, BenchmarkSpec):
        return name_or_spec
    try:
        return BENCHMARKS[name_or_spec]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name_or_spec!r}; known: {', '.join(sorted(BENCHMARKS))}") from None


def list_benchmarks() -> list[str]:
    return sorted(BENCHMARKS)


def load_benchmark(name_or_spec: str | BenchmarkSpec, *, limit: int | None = None) -> list[BenchmarkRecord]:
    """The benchmark's records in file order (the first ``limit`` when given). A full load
    checks the documented row count."""
    spec = get_spec(name_or_spec)
    records: list[BenchmarkRecord] = []
    seen: set[str] = set()
    for record in spec.loader(spec):
        if record.id in seen:
            raise InputError(f"{spec.file}: duplicate id {record.id!r}")
        seen.add(record.id)
        records.append(record)
        if limit is not None and len(records) >= limit:
            return records
    if spec.expected_rows is not None and len(records) != spec.expected_rows:
        raise InputError(f"{spec.file}: {len(records)} rows, expected {spec.expected_rows}")
    return records


def load_exemplar_pool(name: str) -> tuple[ExemplarPool, list[BenchmarkRecord]]:
    try:
        pool = EXEMPLAR_POOLS[name]
    except KeyError:
        raise ConfigError(f"unknown exemplar pool {name!r}; known: {', '.join(sorted(EXEMPLAR_POOLS))}") from None
    return pool, [r for r in load_benchmark(pool.spec) if pool.keep(r)]


# ---------------------------------------------------------------- benchmarks from a YAML file, no code


class CustomBenchmarkConfig(StrictConfig):
    """A JSONL benchmark described in YAML. ``question_field`` is a field name, or a format
    with ``{field}`` placeholders (``"{body} {question}"``); nothing else is interpreted."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str = Field(..., min_length=1, description="JSONL file; relative paths are from the YAML file")
    question_field: str = Field(..., min_length=1)
    answer_field: str = Field(..., min_length=1)
    answer_type: AnswerType
    choices_field: str | None = None
    id_field: str | None = None
    subject_field: str | None = None
    table_field: str | None = None
    solution_field: str | None = None
    expected_rows: int | None = Field(None, ge=1)
    default_prompt: PromptStyle = "zero_shot"
    few_shot: str | None = Field(None, description=f"an exemplar pool: {', '.join(EXEMPLAR_POOLS)}")
    licence: str = "not stated"

    @model_validator(mode="after")
    def _consistent(self) -> "CustomBenchmarkConfig":
        if self.answer_type == "choice" and not self.choices_field:
            raise ValueError("choices_field: required when answer_type is choice")
        if self.few_shot is not None and self.few_shot not in EXEMPLAR_POOLS:
            raise ValueError(f"few_shot: must be one of {', '.join(EXEMPLAR_POOLS)} (got {self.few_shot!r})")
        if self.default_prompt == "few_shot" and self.few_shot is None:
            raise ValueError("few_shot: default_prompt few_shot needs an exemplar pool here")
        return self


def _format_question(template: str, row: dict[str, Any], where: str) -> str:
    if "{" not in template:
        if row.get(template) is None:
            raise InputError(f"{where}: missing field {template!r}")
        return str(row[template])

    def fill(match: re.Match) -> str:
        key = match.group(1)
        if row.get(key) is None:
            raise InputError(f"{where}: missing field {key!r}")
        return str(row[key])

    return re.sub(r"\{([^{}]+)\}", fill, template)


def _choice_gold(answer: Any, choices: list[str], where: str) -> str:
    """A letter, a 0-based index, or the text of one of the choices -> the letter."""
    if isinstance(answer, bool):
        raise InputError(f"{where}: choice answer {answer!r} is neither a letter, an index nor a choice")
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return LETTERS[answer]
    text = str(answer).strip()
    letter = text.strip("() .").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return letter
    if text in choices:
        return LETTERS[choices.index(text)]
    raise InputError(f"{where}: choice answer {answer!r} is neither a letter, an index nor a choice")


def _custom_loader(spec: BenchmarkSpec) -> Iterator[BenchmarkRecord]:
    config: CustomBenchmarkConfig = spec.options["config"]
    for index, (line_no, row) in enumerate(_rows(spec)):
        where = f"{spec.file}:{line_no}"
        answer = _field(spec, line_no, row, config.answer_field)
        choices = None
        if config.choices_field:
            choices = _field(spec, line_no, row, config.choices_field)
            if not isinstance(choices, list) or not choices:
                raise InputError(f"{where}: {config.choices_field!r} is not a non-empty list")
            choices = [str(c) for c in choices]
        if config.answer_type == "choice":
            gold = _choice_gold(answer, choices or [], where)
        elif config.answer_type == "number":
            try:
                gold = number_text(answer)
            except ValueError:
                raise InputError(f"{where}: answer {answer!r} is not a number (answer_type number)") from None
        else:
            gold = str(answer).strip()
        ids = {"id": f"{spec.name}/{_field(spec, line_no, row, config.id_field)}"} if config.id_field else {}
        yield _record(spec, index, line_no, **ids, question=_format_question(config.question_field, row, where),
                      gold=gold, choices=choices,
                      subject=str(row[config.subject_field]) if config.subject_field and row.get(config.subject_field) is not None else None,
                      table=str(row[config.table_field]) if config.table_field and row.get(config.table_field) is not None else None,
                      reference_solution=row.get(config.solution_field) if config.solution_field else None)


def load_benchmark_config(path: str | Path, *, register: bool = True) -> BenchmarkSpec:
    """Read a benchmark description (see ``configs/benchmarks/example_custom.yaml``) and,
    unless ``register=False``, make it loadable by name. Problems are one-line errors naming
    the file and key."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    config = validate_model(CustomBenchmarkConfig, raw, str(path))
    if config.name in BENCHMARKS and BENCHMARKS[config.name].loader is not _custom_loader:
        raise ConfigError(f"{path}: name: {config.name!r} is a shipped benchmark; pick another name")
    file = Path(config.path).expanduser()
    if not file.is_absolute():
        file = (path.parent / file).resolve()
    if not file.is_file():
        raise ConfigError(f"{path}: path: {file} not found")
    spec = BenchmarkSpec(name=config.name, file=file, answer_type=config.answer_type, loader=_custom_loader,
                         expected_rows=config.expected_rows, few_shot=config.few_shot,
                         default_prompt=config.default_prompt, licence=config.licence,
                         description=f"custom benchmark from {path}", options={"config": config})
    if register:
        BENCHMARKS[config.name] = spec
    return spec


__all__ = [
    "BENCHMARKS", "BenchmarkSpec", "CustomBenchmarkConfig", "DATA_DIR",
    "EXEMPLAR_POOLS", "ExemplarPool", "LETTERS", "asdiv_gold", "despace_latex", "get_spec",
    "list_benchmarks", "load_benchmark", "load_benchmark_config", "load_exemplar_pool", "number_text",
]
