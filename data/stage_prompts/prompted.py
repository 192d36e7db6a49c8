"""From corpus documents to prompted windows: the one place that decides which part of a text
is shown, with which stage and variant, in which words.

``PromptKeys`` are the config keys that decide it; distill and synth generate configs both
inherit them, so the same values give the same prompts, keys and ids in both stages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from pydantic import Field, field_validator

from data.config_base import StrictConfig
from data.records import Document, content_id
from data.stage_prompts.assignment import assign
from data.stage_prompts.library import PromptLibrary
from data.stage_prompts.windows import Window, WindowMode, windows

ALL_STAGES = ("grade_school", "middle_school", "high_school", "college", "amc_8", "amc_10", "amc_12", "aime")


class PromptKeys(StrictConfig):
    window_mode: WindowMode = "head"
    windows_per_text: int = Field(1, ge=1)
    stages: dict[str, float] = Field(default_factory=lambda: {stage: 1.0 for stage in ALL_STAGES})
    variants: dict[str, float] = Field(default_factory=lambda: {"cot": 0.7, "tool": 0.3})
    stages_file: str | None = Field(None, description="your own stages.yaml (default: the shipped library)")
    variants_file: str | None = None
    seed: int = Field(0, description="the (stage, variant) draw per text")

    @field_validator("stages", "variants")
    @classmethod
    def _drawable(cls, weights: dict[str, float]) -> dict[str, float]:
        """The draw picks among positive weights: a negative one would silently act as 0, and
        with none positive no text could be given a prompt."""
        if not all(math.isfinite(w) and w >= 0 for w in weights.values()):
            raise ValueError("weights must be finite numbers >= 0")
        if not any(w > 0 for w in weights.values()):
            raise ValueError("needs at least one positive weight")
        return weights


@dataclass(frozen=True)
class PromptedWindow:
    key: str  # content id of (document, window, prompt): the teacher's record id
    source_id: str
    window: Window
    stage: str
    variant: str
    prompt_id: str
    prompt: str
    source_text: str

    def provenance(self) -> dict[str, Any]:
        return {"source_id": self.source_id, "window": list(self.window), "stage": self.stage,
                "variant": self.variant, "prompt_id": self.prompt_id, "prompt": self.prompt,
                "source_text": self.source_text}


def load_library(keys: PromptKeys) -> PromptLibrary:
    """The library the keys name, with every configured stage and variant checked to exist."""
    library = PromptLibrary.load(keys.stages_file, keys.variants_file)
    for stage in keys.stages:
        library.check(stage, next(iter(library.variants)))
    for variant in keys.variants:
        library.check(next(iter(library.stages)), variant)
    return library


def prompted_windows(docs: Iterable[Document], library: PromptLibrary, keys: PromptKeys) -> Iterator[PromptedWindow]:
    """Each document's windows, its stage and variant drawn from the document id and seed."""
    for doc in docs:
        stage, variant = assign(doc.id, keys.seed, keys.stages, keys.variants)
        spec = library.variants[variant]
        prompt_id = library.prompt_id(stage, variant)
        for start, end in windows(doc.text, spec.window_chars, keys.window_mode)[: keys.windows_per_text]:
            yield PromptedWindow(
                key=content_id(doc.id, start, end, prompt_id), source_id=doc.id, window=(start, end),
                stage=stage, variant=variant, prompt_id=prompt_id,
                prompt=library.render(stage, variant, doc.text[start:end]), source_text=doc.text[start:end],
            )
