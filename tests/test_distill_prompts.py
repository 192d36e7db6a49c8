"""The education-stage prompt library, source windows and the seeded stage/variant mix."""
from collections import Counter

import pytest

from data.stage_prompts.assignment import assign
from data.errors import ConfigError
from data.stage_prompts.library import PROMPTS_DIR, PromptLibrary
from data.stage_prompts.windows import windows

STAGES = ["grade_school", "middle_school", "high_school", "college", "amc_8", "amc_10", "amc_12", "aime"]


def test_every_stage_renders_in_both_variants():
    library = PromptLibrary.load()
    assert list(library.stages) == STAGES and set(library.variants) == {"cot", "tool"}
    ids = set()
    for stage in STAGES:
        for variant in ("cot", "tool"):
            prompt = library.render(stage, variant, "SOURCE TEXT about primes")
            assert "SOURCE TEXT about primes" in prompt and library.stages[stage].audience in prompt
            assert prompt.rstrip().endswith("## Problem") and "\\boxed{}" in prompt
            assert ("```python" in prompt) == (variant == "tool")
            ids.add(library.prompt_id(stage, variant))
    assert len(ids) == 16


def write_library(tmp_path, stages_text, variants_text=None):
    (tmp_path / "stages.yaml").write_text(stages_text)
    (tmp_path / "variants.yaml").write_text(variants_text or (PROMPTS_DIR / "variants.yaml").read_text())
    return PromptLibrary.load(tmp_path / "stages.yaml", tmp_path / "variants.yaml")


GOOD_STAGE = """
olympiad:
  title: olympiad
  audience: a national olympiad team member
  topics: [inequalities]
  difficulty: hard
  problem_words: [40, 120]
  solution_words: [200, 500]
"""


def test_a_user_can_add_a_stage(tmp_path):
    library = write_library(tmp_path, GOOD_STAGE)
    assert "national olympiad" in library.render("olympiad", "cot", "x")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace("  audience: a national olympiad team member\n", ""), r"stages\.yaml: olympiad: audience: Field required"),
    (lambda s: s.replace("difficulty:", "dificulty:"), r"stages\.yaml: olympiad: dificulty: unknown key"),
    (lambda s: s.replace("[200, 500]", "[500, 200]"), r"stages\.yaml: olympiad: \(top level\): solution_words must be \[min, max\]"),
    (lambda s: s.replace("topics: [inequalities]", "topics: []"), r"stages\.yaml: olympiad: topics: .*at least 1"),
])
def test_a_stage_missing_or_mistyping_a_field_fails_at_start_in_one_line(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message) as err:
        write_library(tmp_path, edit(GOOD_STAGE))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("template, message", [
    ("Write a problem.\n## Problem\n", r"cot\.template: never shows the source text"),
    ("{{ text }} for {{ student }}", r"cot\.template: unknown name\(s\) student"),
    ("{{ text } broken", r"cot\.template: line 1:"),
])
def test_a_broken_template_fails_at_start(tmp_path, template, message):
    variants = f"cot:\n  window_chars: 1000\n  template: {template!r}\n"
    with pytest.raises(ConfigError, match=message):
        write_library(tmp_path, GOOD_STAGE, variants)


def test_head_and_section_windows():
    text = "# Intro\nabc\n\n## Part A\n" + "a" * 50 + "\n## Part B\n" + "b" * 200 + "\n\\section{C}\nccc\n"
    assert windows(text, 30, "head") == [(0, 30)]
    found = windows(text, 80, "sections")
    assert all(end - start <= 80 for start, end in found)
    assert "".join(text[s:e] for s, e in found) == text  # nothing lost, nothing repeated
    assert text[found[0][0]:].startswith("# Intro") and text[found[0][0]:found[0][1]].count("##") == 1
    assert any(text[s:e].startswith("\\section{C}") for s, e in found)
    assert windows("   ", 100) == [] and windows(text, 80, "sections", max_windows=2) == found[:2]


def test_assignment_is_deterministic_and_follows_the_mixture():
    stages = {"grade_school": 3, "aime": 1, "college": 0}
    variants = {"cot": 0.7, "tool": 0.3}
    picks = [assign(f"doc{i}", 0, stages, variants) for i in range(8000)]
    assert picks == [assign(f"doc{i}", 0, stages, variants) for i in range(8000)]
    assert picks != [assign(f"doc{i}", 1, stages, variants) for i in range(8000)]
    stage_counts = Counter(stage for stage, _ in picks)
    variant_counts = Counter(variant for _, variant in picks)
    assert stage_counts["college"] == 0
    assert abs(stage_counts["grade_school"] / 8000 - 0.75) < 0.02
    assert abs(variant_counts["tool"] / 8000 - 0.3) < 0.02
