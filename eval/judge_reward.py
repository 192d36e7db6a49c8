"""The judge's other scorer: a reward model (a sequence-classification checkpoint with a scalar
head, e.g. a math outcome reward model), run through transformers on the shown fields.

The first shown field is the prompt and the rest, joined, the response; when the tokenizer has a
chat template the pair is rendered as a user and an assistant turn (how reward models are
trained), else as the two texts one after the other. The score is the head's logit (for a
head with several labels, the one ``label`` names).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from data.config_base import StrictConfig, operational


class RewardModelConfig(StrictConfig):
    model: str = Field(..., min_length=1, description="a sequence-classification checkpoint folder (or hub name)")
    max_length: int = Field(2048, ge=16, description="tokens scored per record (longer ones are cut at the end)")
    label: int | None = Field(None, ge=0, description="the logit that is the reward (default: the only one)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = operational("auto")
    batch_size: int = operational(8, ge=1)


class RewardScorer:
    def __init__(self, config: RewardModelConfig) -> None:
        from transformers import AutoModelForSequenceClassification

        from llm.loading import (
            load_tokenizer,
            pick_device,
            resolve_model_path,
            torch_dtype,
        )

        self.config = config
        self.device = pick_device(config.device)
        self.tokenizer = load_tokenizer(config.model)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_path(config.model), dtype=torch_dtype(config.dtype, self.device)).to(self.device).eval()
        if self.model.config.pad_token_id is None:  # batched scoring finds each row's last token by it
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        labels = self.model.config.num_labels
        if config.label is None and labels != 1:
            raise ValueError(f"reward_model.label: {config.model} has {labels} labels; say which one is the reward")
        if config.label is not None and config.label >= labels:
            raise ValueError(f"reward_model.label: {config.label} but {config.model} has {labels} labels")
        self.label = config.label or 0
        self.model_name = config.model

    def text(self, values: list[str]) -> str:
        prompt, response = values[0], "\n\n".join(values[1:])
        if getattr(self.tokenizer, "chat_template", None) and response:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
        return f"{prompt}\n\n{response}" if response else prompt

    def score(self, batch: list[list[str]]) -> tuple[list[float], list[int]]:
        """(scores, tokens scored) for a batch of records' shown values."""
        import torch

        encoded = self.tokenizer([self.text(values) for values in batch], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.config.max_length).to(self.device)
        with torch.inference_mode():
            logits = self.model(**encoded).logits.float()
        return logits[:, self.label].tolist(), encoded["attention_mask"].sum(dim=1).tolist()

    def judge(self, score: float) -> dict[str, Any]:
        return {"score": round(score, 6), "solvable": None, "correct": None, "clarity": None, "difficulty": None,
                "rationale": None, "judge_model": self.model_name, "rubric": None, "scorer": "reward_model",
                "error": None}
