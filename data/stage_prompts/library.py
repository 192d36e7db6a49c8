"""The education-stage prompt library: stages (who, what, how hard, how long) crossed with
variants (solve in words, or with a program), both read from data files a user can edit.

Everything is checked when the library loads, before any teacher call: a stage missing a key,
a template that does not show the source text, or one that names something it will not be
given fails in one line naming the file and key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data.config_base import StrictConfig
from data.config_files import read_yaml_mapping, validate_model
from data.errors import ConfigError
from data.records import content_id

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
TEMPLATE_NAMES = {"text", "stage", "demo"}  # what a variant template is rendered with


class StageSpec(StrictConfig):
    model_config = ConfigDict(frozen=True)

    title: str = Field(..., min_length=1)
    audience: str = Field(..., min_length=1)
    topics: tuple[str, ...] = Field(..., min_length=1)
    difficulty: str = Field(..., min_length=1)
    problem_words: tuple[int, int]
    solution_words: tuple[int, int]

    @model_validator(mode="after")
    def _budgets_are_ranges(self):
        for name in ("problem_words", "solution_words"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be [min, max] with 0 < min <= max")
        return self


class VariantSpec(StrictConfig):
    model_config = ConfigDict(frozen=True)

    window_chars: int = Field(..., ge=100, description="the source text is cut to this many characters")
    template: str = Field(..., min_length=1)
    demo: str | None = None


class PromptLibrary:
    def __init__(self, stages: dict[str, StageSpec], variants: dict[str, VariantSpec], sources: dict[str, str]) -> None:
        import jinja2

        self.stages = stages
        self.variants = variants
        self._env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        self._templates = {name: self._compile(name, spec, sources["variants"]) for name, spec in variants.items()}

    @classmethod
    def load(cls, stages_path: str | Path | None = None, variants_path: str | Path | None = None) -> "PromptLibrary":
        stages_path = Path(stages_path or PROMPTS_DIR / "stages.yaml")
        variants_path = Path(variants_path or PROMPTS_DIR / "variants.yaml")
        stages = _entries(stages_path, StageSpec)
        variants = _entries(variants_path, VariantSpec)
        return cls(stages, variants, {"stages": str(stages_path), "variants": str(variants_path)})

    def _compile(self, name: str, spec: VariantSpec, source: str):
        import jinja2
        from jinja2 import meta

        where = f"{source}: {name}.template"
        try:
            names = meta.find_undeclared_variables(self._env.parse(spec.template))
            template = self._env.from_string(spec.template)
        except jinja2.TemplateSyntaxError as err:
            raise ConfigError(f"{where}: line {err.lineno}: {err.message}") from None
        if "text" not in names:
            raise ConfigError(f"{where}: never shows the source text ({{{{ text }}}})")
        if unknown := sorted(names - TEMPLATE_NAMES):
            raise ConfigError(f"{where}: unknown name(s) {', '.join(unknown)} (templates see {', '.join(sorted(TEMPLATE_NAMES))})")
        if "demo" in names and not spec.demo:
            raise ConfigError(f"{source}: {name}.demo: the template shows a demo but none is given")
        return template

    def check(self, stage: str, variant: str) -> None:
        if stage not in self.stages:
            raise ConfigError(f"stage {stage!r} is not in the library ({', '.join(self.stages)})")
        if variant not in self.variants:
            raise ConfigError(f"variant {variant!r} is not in the library ({', '.join(self.variants)})")

    def render(self, stage: str, variant: str, text: str) -> str:
        """The teacher prompt for ``text`` (already windowed by the caller)."""
        self.check(stage, variant)
        spec = self.stages[stage]
        return self._templates[variant].render(text=text, stage=spec.model_dump(), demo=self.variants[variant].demo)

    def prompt_id(self, stage: str, variant: str) -> str:
        """Changes whenever the wording a teacher sees for this pair changes."""
        self.check(stage, variant)
        return content_id(stage, variant, self.stages[stage].model_dump(), self.variants[variant].model_dump())


def _entries(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    raw = read_yaml_mapping(path)
    if not raw:
        raise ConfigError(f"{path}: no entries")
    entries = {}
    for name, body in raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {name}: expected a mapping of keys")
        entries[str(name)] = validate_model(model, body, f"{path}: {name}")
    return entries
