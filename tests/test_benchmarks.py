"""The shipped benchmark suite, the custom-benchmark config, and the prompts."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from data.benchmarks import (
    BENCHMARKS,
    DATA_DIR,
    EXEMPLAR_POOLS,
    list_benchmarks,
    load_benchmark,
    load_benchmark_config,
)
from data.benchmarks.registry import asdiv_gold, despace_latex, number_text
from data.errors import ConfigError, InputError
from data.records import ANSWER_TYPES, BenchmarkRecord
from eval.extraction import last_boxed
from eval.prompts import PromptSetting, build_prompt, select_exemplars

REPO_ROOT = Path(__file__).resolve().parent.parent

# Documented in data/benchmarks/LICENSES.md (and ../shared/data/MANIFEST.md section 1).
ROWS = {
    "gsm8k": 1319, "math": 5000, "math500": 500, "svamp": 1000, "asdiv": 2215, "mawps": 2065, "tabmwp": 1000,
    "aqua": 254, "sat_math": 32, "carp_en": 976, "mmlu_stem": 3018, "minerva_math": 272, "gsm_hard": 1319,
}
CHOICE_BENCHMARKS = {"aqua", "sat_math", "mmlu_stem"}
FIVE_SHOT = {"aqua", "sat_math", "mmlu_stem"}  # JiuZhang3.0: every other benchmark is zero-shot

# sha256 of the byte-exact copies (MANIFEST.md section 5).
SHA256 = {
    "aqua/test.jsonl": "de41581881ef95c5588c44ddc701c77fd480839241dd422a0d181262af24520c",
    "asdiv/test.jsonl": "5759580385e706f961a30d4c07d6925b35c3f7c86d6c50bc413957169693dad2",
    "carp_en/demo.json": "a0d8466e16061eb6e24b481fc0904eda9df984ba809466fe1609c14bf320d348",
    "carp_en/test.jsonl": "f93f00bed6273d7f6795f674d8458662be596950f81ef433d8b80592ba3aae64",
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "gsm8k/train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "gsm_hard/test.jsonl": "45db606263a4902580aba3974e8b7fb3f66012877889209af206b1c1b2f208f5",
    "math/test.jsonl": "3371949f33dd702d04b43fddd7d53a028de0aaca0e76abb1b875a050297b3aa4",
    "math/train.jsonl": "3086b1daf75bccbc83351fd63b480b7590e52645981a463650354cd5bc32b7d8",
    "math500/test.jsonl": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    "mawps/test.jsonl": "00ffe31161be8623a3d36741830edbba87a3aee0109f693810fe40b9d5d91b8b",
    "minerva_math/test.jsonl": "0e656b430d3a0a1dab6aa853f453ba3805e28e2cabe4fc72486a897cc09d8ba2",
    "mmlu_stem/test.jsonl": "fd7c16f96067d285638abb5aaef9cd8a063b11454e14cb64df93141a58691478",
    "sat_math/test.jsonl": "96720a1dc496ea72f80db55250290cf9c48e95b657ac2183b7deb1dc4627351f",
    "sat_math_agieval/test.jsonl": "9cde4c0522b6196852a5562db6e72bf8817b4802822db0fc10013d1becdab3c3",
    "svamp/test.jsonl": "d0826ff1264f3860e46fc4e71db9e31d2d188960db87090e22677f9493e67a0d",
    "tabmwp/test.jsonl": "2aebf4d0fabad23920ee8ce140166bcf1264de978fda8137080c10a28655d20b",
}


@pytest.fixture(scope="module")
def suite() -> dict[str, list[BenchmarkRecord]]:
    return {name: load_benchmark(name) for name in ROWS}


# ---------------------------------------------------------------- the shipped files


def test_registry_holds_the_documented_suite():
    assert set(ROWS) <= set(list_benchmarks())
    for name, rows in ROWS.items():
        spec = BENCHMARKS[name]
        assert spec.expected_rows == rows
        assert spec.answer_type in ANSWER_TYPES
        assert spec.licence
        assert spec.default_prompt == ("few_shot" if name in FIVE_SHOT else "zero_shot")
        assert spec.few_shot in EXEMPLAR_POOLS
        assert spec.file.is_file()


def test_shipped_files_are_byte_exact_copies():
    shipped = {str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.is_file()}
    assert shipped == set(SHA256)
    for relative, digest in SHA256.items():
        assert hashlib.sha256((DATA_DIR / relative).read_bytes()).hexdigest() == digest, relative


@pytest.mark.parametrize("name", sorted(ROWS))
def test_benchmark_loads_with_its_row_count_and_sound_records(suite, name):
    records = suite[name]
    assert len(records) == ROWS[name]
    assert len({r.id for r in records}) == len(records)
    for record in records:
        assert record.benchmark == name
        assert record.id.startswith(f"{name}/")
        assert record.question.strip()
        assert record.gold.strip() and record.gold == record.gold.strip()
        assert record.answer_type in ANSWER_TYPES
        if record.answer_type == "choice":
            assert record.choices and all(c.strip() for c in record.choices)
            assert record.gold in "ABCDEFGHIJ"[: len(record.choices)]
        if record.answer_type == "number":
            float(record.gold)
            assert "," not in record.gold
    if name in CHOICE_BENCHMARKS:
        assert {r.answer_type for r in records} == {"choice"}


def test_choice_counts(suite):
    assert {len(r.choices) for r in suite["aqua"]} == {5}
    assert {len(r.choices) for r in suite["sat_math"]} == {4}
    assert {len(r.choices) for r in suite["mmlu_stem"]} == {4}
    assert len({r.subject for r in suite["mmlu_stem"]}) == 18


def test_known_golds(suite):
    assert suite["gsm8k"][0].gold == "18"
    assert suite["svamp"][0].gold == "145"
    assert suite["asdiv"][0].gold == "9" and suite["asdiv"][0].meta["unit"] == "apples"
    assert suite["mawps"][0].gold == "43"
    assert suite["gsm_hard"][0].gold == "-9867630"
    assert suite["math"][0].gold == "2" and suite["math"][0].subject == "Algebra" and suite["math"][0].level == "Level 3"
    assert suite["math500"][0].gold == r"\left( 3, \frac{\pi}{2} \right)" and suite["math500"][0].level == "Level 2"
    assert suite["minerva_math"][0].gold == "1.6"
    assert suite["carp_en"][0].gold == "b^{2}-9a^{2}"
    assert suite["aqua"][0].gold == "A" and suite["aqua"][0].choices[0] == "5(√3 + 1)"
    assert suite["sat_math"][0].choices == ["$f(-6)=0$", "$f(6)=-6$", "$f(-6)=6$", "$f(0)=-6$"]
    assert suite["sat_math"][0].gold == "A"
    assert suite["mmlu_stem"][0].gold == "C" and suite["mmlu_stem"][0].subject == "college_biology"


def test_tabmwp_records_carry_their_table_and_typed_golds(suite):
    records = suite["tabmwp"]
    assert all(r.table and "|" in r.table for r in records)
    assert records[0].table.startswith("Coin collections\nName | Number of coins")
    assert records[0].gold == "84" and records[0].answer_type == "number"
    shortage = records[1]
    assert (shortage.gold, shortage.answer_type, shortage.choices) == ("shortage", "text", ["shortage", "surplus"])
    assert shortage.meta["gold_letter"] == "A"
    counts = {t: sum(r.answer_type == t for r in records) for t in ("number", "expression", "text")}
    assert counts == {"number": 706, "expression": 45, "text": 249}
    assert all(r.choices and r.gold in r.choices for r in records if r.answer_type == "text")
    assert "4656" in {r.gold for r in records}  # "4,656" in the source


def test_asdiv_odd_golds_are_typed(suite):
    by_type = {t: [r.gold for r in suite["asdiv"] if r.answer_type == t] for t in ("number", "expression", "text")}
    assert (len(by_type["number"]), len(by_type["expression"]), len(by_type["text"])) == (2084, 9, 122)
    assert {"3:4", "Mrs. Hilt", "3:30 p.m.", "They are equal"} <= set(by_type["text"])
    assert {"5/2", "-1/3"} <= set(by_type["expression"])
    assert asdiv_gold("14  (seats)") == ("14", "number", "seats")
    assert asdiv_gold("-(1/3)") == ("-1/3", "expression", None)
    assert asdiv_gold("9:7") == ("9:7", "text", None)


def test_gold_helpers():
    assert number_text(145.0) == "145"
    assert number_text(-9867630.0) == "-9867630"
    assert number_text(3244047.0999999996) == "3244047.1"
    assert number_text(0.0016791648) == "0.0016791648"
    assert number_text("4,656") == "4656"
    assert number_text(" 1,522.81 ") == "1522.81"
    with pytest.raises(ValueError):
        number_text("3:4")
    assert despace_latex(r"m \le \sqrt { 3 }") == r"m\le\sqrt{3}"
    assert despace_latex(r"a \cdot b") == r"a\cdot b"
    assert despace_latex(r"y = - 5 ( x + 1 )  ^ { 2 } + 3") == "y=-5(x+1)^{2}+3"


def test_limit_and_unknown_name():
    assert [r.id for r in load_benchmark("gsm8k", limit=3)] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    with pytest.raises(ConfigError, match="unknown benchmark 'gsm9k'"):
        load_benchmark("gsm9k")


# ---------------------------------------------------------------- benchmarks from a YAML file


def test_example_custom_benchmark_config():
    spec = load_benchmark_config(REPO_ROOT / "configs/benchmarks/example_custom.yaml")
    try:
        assert BENCHMARKS["example_custom"] is spec
        records = load_benchmark("example_custom")
    finally:
        BENCHMARKS.pop("example_custom")
    assert [r.gold for r in records] == ["22", "26", "30", "13"]
    assert records[0].id == "example_custom/shop-1" and records[0].subject == "arithmetic"
    assert records[0].question == ("A notebook costs 3 dollars and a pen costs 2 dollars. "
                                   "How much do 4 notebooks and 5 pens cost in dollars?")
    assert build_prompt(records[0]) == f"## Question\n{records[0].question}\n\n## Solution\n"


def _write_config(tmp_path: Path, text: str, rows: list[dict]) -> Path:
    with open(tmp_path / "bench.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    path = tmp_path / "bench.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_custom_choice_benchmark_accepts_letters_indexes_and_texts(tmp_path):
    rows = [{"q": "1+1?", "opts": ["1", "2"], "a": "B"}, {"q": "2+2?", "opts": ["4", "5"], "a": 0},
            {"q": "3+3?", "opts": ["5", "6"], "a": "6"}]
    path = _write_config(tmp_path, "name: tiny_mc\npath: bench.jsonl\nquestion_field: q\nanswer_field: a\n"
                                   "answer_type: choice\nchoices_field: opts\n", rows)
    spec = load_benchmark_config(path, register=False)
    assert "tiny_mc" not in BENCHMARKS
    assert [r.gold for r in load_benchmark(spec)] == ["B", "A", "B"]
    assert [r.id for r in load_benchmark(spec)] == ["tiny_mc/test/0", "tiny_mc/test/1", "tiny_mc/test/2"]


@pytest.mark.parametrize("text, expected", [
    ("name: b\npath: bench.jsonl\nquestion_feild: q\nanswer_field: a\nanswer_type: number\n", "question_feild: unknown key"),
    ("name: b\npath: bench.jsonl\nquestion_field: q\nanswer_field: a\nanswer_type: numbr\n", "answer_type: Input should be"),
    ("name: b\npath: bench.jsonl\nquestion_field: q\nanswer_field: a\nanswer_type: choice\n", "choices_field: required"),
    ("name: b\npath: missing.jsonl\nquestion_field: q\nanswer_field: a\nanswer_type: number\n", "path: "),
    ("name: gsm8k\npath: bench.jsonl\nquestion_field: q\nanswer_field: a\nanswer_type: number\n", "name: 'gsm8k' is a shipped"),
])
def test_bad_custom_config_is_a_one_line_error_naming_the_key(tmp_path, text, expected):
    path = _write_config(tmp_path, text, [{"q": "1+1?", "a": 2}])
    with pytest.raises(ConfigError) as err:
        load_benchmark(load_benchmark_config(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message


def test_bad_custom_rows_name_file_and_line(tmp_path):
    path = _write_config(tmp_path, "name: b\npath: bench.jsonl\nquestion_field: \"{body} {q}\"\nanswer_field: a\n"
                                   "answer_type: number\n",
                         [{"body": "Tom has 2.", "q": "How many?", "a": 2}, {"body": "x", "q": "y", "a": "two"}])
    spec = load_benchmark_config(path, register=False)
    with pytest.raises(InputError, match=r"bench.jsonl:2: answer 'two' is not a number"):
        load_benchmark(spec)
    assert load_benchmark(spec, limit=1)[0].question == "Tom has 2. How many?"


# ---------------------------------------------------------------- prompts


def _record(**fields) -> BenchmarkRecord:
    base = dict(id="t/test/0", benchmark="gsm8k", question="What is 2+3?", gold="5", answer_type="number")
    return BenchmarkRecord(**{**base, **fields})


def test_zero_shot_format_is_exact(suite):
    record = suite["gsm8k"][0]
    assert build_prompt(record, "zero_shot") == f"## Question\n{record.question}\n\n## Solution\n"
    assert build_prompt(record, PromptSetting.zero_shot, tool=True) == f"## Question\n{record.question}\n\n## Code Solution\n"


def test_choice_and_table_problems_are_shown_in_full(suite):
    prompt = build_prompt(suite["mmlu_stem"][0], "zero_shot")
    assert prompt.startswith("## Question\nBased on the characteristic population curves")
    assert "\n(A) maintain the population" in prompt and "\n(D) increase the mortality rate\n" in prompt
    assert "letter of the correct option" in prompt and prompt.endswith("\n\n## Solution\n")
    table = suite["tabmwp"][1]
    prompt = build_prompt(table, "zero_shot")
    assert prompt.index("Price | Quantity demanded") < prompt.index("is there a shortage or a surplus?")
    assert "options: shortage, surplus" in prompt and "(A)" not in prompt


def test_few_shot_has_k_deterministic_exemplars_none_the_test_question(suite):
    for name in ("gsm8k", "math500", "aqua", "carp_en", "svamp"):
        exemplars = select_exemplars(name, 4)
        assert len(exemplars) == 4
        assert [e.id for e in exemplars] == [e.id for e in select_exemplars(name, 4)]
        assert [e.id for e in exemplars] != [e.id for e in select_exemplars(name, 4, seed=1)]
        tests = {" ".join(r.question.lower().split()) for r in suite[name]}
        assert not tests & {" ".join(e.question.lower().split()) for e in exemplars}
        record = suite[name][7]
        prompt = build_prompt(record, "few_shot", shots=4)
        assert prompt.count("## Question\n") == 5 and prompt.count("## Solution\n") == 5
        assert prompt.endswith(build_prompt(record, "zero_shot"))
        assert prompt == build_prompt(record, "few_shot", exemplars=exemplars)


def test_few_shot_exemplar_solutions_state_their_answer():
    gsm = select_exemplars("gsm8k", 2)
    prompt = build_prompt(_record(), "few_shot", exemplars=gsm)
    for exemplar in gsm:
        assert f"The answer is {exemplar.gold}.\n" in prompt
    assert "<<" not in prompt and "####" not in prompt
    sat = select_exemplars("sat_math", 2)
    prompt = build_prompt(_record(benchmark="sat_math"), "few_shot", exemplars=sat)
    assert all(f"The answer is ({e.gold})." in prompt for e in sat)
    assert "is correct." not in prompt.split("## Solution\n")[1][:40]
    math = select_exemplars("math", 3)
    assert all(last_boxed(e.reference_solution) == e.gold for e in math)
    assert build_prompt(_record(), "few_shot", exemplars=math, tool=True).endswith("## Code Solution\n")


def test_few_shot_refuses_an_exemplar_equal_to_the_question():
    record = _record()
    with pytest.raises(ValueError, match="is the test question itself"):
        build_prompt(record, "few_shot", exemplars=[_record(id="x/0", question="what is  2+3?", reference_solution="5")])


def test_few_shot_exemplar_pool_excludes_every_test_question(monkeypatch):
    """Even a pool made entirely of test questions yields none of them."""
    import eval.prompts as prompts

    pool = load_benchmark("sat_math")
    monkeypatch.setattr(prompts, "load_exemplar_pool", lambda name: (None, pool))
    with pytest.raises(ConfigError, match="only 0 usable exemplars"):
        select_exemplars("sat_math", 1)


def test_chat_messages_and_template():
    record = _record()
    messages = build_prompt(record, "chat")
    assert messages == [{"role": "user", "content": "What is 2+3?\n\nPlease reason step by step, and put your "
                                                     "final answer within \\boxed{}."}]
    tool = build_prompt(record, "chat", tool=True)[0]["content"]
    assert "```python" in tool and "\\boxed{}" in tool

    class FakeTokenizer:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"

    rendered = build_prompt(record, "chat", tokenizer=FakeTokenizer())
    assert rendered.startswith("<|user|>What is 2+3?") and rendered.endswith("<|assistant|>")
    shots = build_prompt(record, "chat", exemplars=select_exemplars("gsm8k", 2))
    assert [m["role"] for m in shots] == ["user", "assistant", "user", "assistant", "user"]


def test_unknown_setting_and_missing_pool(tmp_path):
    with pytest.raises(ValueError, match="unknown prompt setting 'five_shot'"):
        build_prompt(_record(), "five_shot")
    path = _write_config(tmp_path, "name: nopool\npath: bench.jsonl\nquestion_field: q\nanswer_field: a\n"
                                   "answer_type: number\n", [{"q": "1+1?", "a": 2}])
    load_benchmark_config(path)
    try:
        with pytest.raises(ConfigError, match="nopool: no few-shot exemplar pool"):
            build_prompt(load_benchmark("nopool")[0], "few_shot")
    finally:
        BENCHMARKS.pop("nopool")
