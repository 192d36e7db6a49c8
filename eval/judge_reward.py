"""The judge's other scorer: a reward model run through transformers on the shown fields.

The first shown field is the prompt and the rest, joined, the response.

* ``kind: outcome``: a sequence-classification checkpoint with a scalar head (an outcome reward
  model). When the tokenizer has a chat template the pair is rendered as a user and an
  assistant turn (how reward models are trained), else as the two texts one after the other.
  The score is the head's logit (for a head with several labels, the one ``label`` names).
  With ``backend: vllm`` the same model runs on vLLM's pooling runner (``LLM.classify``, which
  gives the sigmoid of a one-label head: the logit is taken back from it).
* ``kind: process``: a token-classification checkpoint (a process reward model, Math-Shepherd
  style): the response is cut into steps (non-empty lines), each step is followed by
  ``step_tag``, and a step's score is the probability of label ``label`` (default 1, "good") at
  the last token of its tag. ``judge.step_scores`` holds them and ``judge.score`` their
  ``aggregate`` (min by default: a solution is as good as its worst step).
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from data.config_base import StrictConfig, operational


class RewardModelConfig(StrictConfig):
    model: str = Field(..., min_length=1, description="a reward model checkpoint folder (or hub name)")
    kind: Literal["outcome", "process"] = Field("outcome", description="outcome: one score per solution; "
                                                                       "process: a score per step")
    step_tag: str = Field("\n", min_length=1, description="process: what follows each step (the model's own tag)")
    aggregate: Literal["min", "mean", "last", "product"] = "min"
    backend: Literal["transformers", "vllm"] = Field("transformers", description="vllm: its pooling runner "
                                                                                "(outcome models with one label)")
    engine_kwargs: dict = Field(default_factory=dict, description="vllm: passed to vllm.LLM as is")
    max_length: int = Field(2048, ge=16, description="tokens scored per record (longer ones are cut at the end)")
    label: int | None = Field(None, ge=0, description="the logit that is the reward (default: the only one)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = operational("auto")
    batch_size: int = operational(8, ge=1)


def load_head(config: RewardModelConfig, auto_class: str):
    """(device, tokenizer, model) of a reward model checkpoint, the head class named by ``auto_class``."""
    import transformers

    from llm.loading import load_tokenizer, pick_device, resolve_model_path, torch_dtype

    device = pick_device(config.device)
    model = getattr(transformers, auto_class).from_pretrained(
        resolve_model_path(config.model), dtype=torch_dtype(config.dtype, device)).to(device).eval()
    return device, load_tokenizer(config.model), model


class RewardScorer:
    def __init__(self, config: RewardModelConfig) -> None:
        self.config = config
        self.device, self.tokenizer, self.model = load_head(config, "AutoModelForSequenceClassification")
        self.tokenizer.padding_side = "right"
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

    def judge_batch(self, batch: list[list[str]]) -> list[tuple[dict[str, Any], int]]:
        """(the ``judge`` column, tokens scored) of each record of the batch."""
        scores, tokens = self.score(batch)
        return [(self.judge(score), used) for score, used in zip(scores, tokens)]


class ProcessRewardScorer:
    """Per-step scores from a token-classification head at each step's tag (module doc)."""

    def __init__(self, config: RewardModelConfig) -> None:
        self.config = config
        self.device, self.tokenizer, self.model = load_head(config, "AutoModelForTokenClassification")
        if not self.tokenizer.is_fast:
            raise ValueError(f"reward_model.model: {config.model} has no fast tokenizer (step positions need offsets)")
        labels = self.model.config.num_labels
        self.label = 1 if config.label is None else config.label
        if self.label >= labels:
            raise ValueError(f"reward_model.label: {self.label} but {config.model} has {labels} labels")
        self.model_name = config.model

    def text(self, values: list[str]) -> tuple[str, list[int]]:
        """The prompt and the tagged steps, and the character where each step's tag ends."""
        tag = self.config.step_tag
        text, ends = values[0] + "\n\n", []
        for step in (line.strip() for value in values[1:] for line in value.splitlines()):
            if step:
                text += step + tag
                ends.append(len(text) - 1)
        return text, ends

    def step_scores(self, values: list[str]) -> tuple[list[float], int]:
        import torch

        text, ends = self.text(values)
        encoded = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=self.config.max_length,
                                 return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")[0].tolist()
        with torch.inference_mode():
            probs = self.model(**encoded.to(self.device)).logits.float().softmax(-1)[0, :, self.label].tolist()
        scores = []
        for end in ends:  # the token covering the tag's last character (steps cut off by max_length: none)
            token = next((k for k, (a, b) in enumerate(offsets) if a <= end < b), None)
            if token is not None:
                scores.append(probs[token])
        return scores, len(offsets)

    def judge_batch(self, batch: list[list[str]]) -> list[tuple[dict[str, Any], int]]:
        out = []
        for values in batch:  # one at a time: records have different step positions
            steps, used = self.step_scores(values)
            judge = {"score": None, "step_scores": [round(p, 6) for p in steps], "solvable": None, "correct": None,
                     "clarity": None, "difficulty": None, "rationale": None, "judge_model": self.model_name,
                     "rubric": None, "scorer": "process_reward_model", "error": None if steps else "no_steps"}
            if steps:
                judge["score"] = round(aggregate(steps, self.config.aggregate), 6)
            out.append((judge, used))
        return out


def aggregate(steps: list[float], how: str) -> float:
    if how == "min":
        return min(steps)
    if how == "last":
        return steps[-1]
    if how == "mean":
        return sum(steps) / len(steps)
    product = 1.0
    for p in steps:
        product *= p
    return product


class VllmRewardScorer(RewardScorer):
    """An outcome reward model on vLLM's pooling runner; texts rendered as in ``RewardScorer``."""

    def __init__(self, config: RewardModelConfig) -> None:
        import vllm
        from transformers import AutoConfig

        from llm.loading import load_tokenizer, pick_device, resolve_model_path

        self.config, self.model_name = config, config.model
        path = resolve_model_path(config.model)
        labels = AutoConfig.from_pretrained(path).num_labels
        if labels != 1 or config.label not in (None, 0):
            raise ValueError(f"reward_model.backend: vllm scores one-label heads; {config.model} has {labels} labels "
                             f"(use backend: transformers)")
        self.tokenizer = load_tokenizer(config.model)
        kwargs = {"model": path, "runner": "pooling", "max_model_len": config.max_length,
                  "dtype": "float32" if config.dtype == "auto" and pick_device(config.device) == "cpu" else config.dtype,
                  **config.engine_kwargs}
        self.llm = vllm.LLM(**kwargs)

    def score(self, batch: list[list[str]]) -> tuple[list[float], list[int]]:
        ids = [self.tokenizer(self.text(values))["input_ids"][: self.config.max_length] for values in batch]
        outputs = self.llm.classify([{"prompt_token_ids": row} for row in ids], use_tqdm=False)
        scores = []
        for output in outputs:
            p = min(max(float(output.outputs.probs[0]), 1e-12), 1 - 1e-12)
            scores.append(math.log(p) - math.log1p(-p))  # the logit the sigmoid came from
        return scores, [len(row) for row in ids]

    def close(self) -> None:
        self.__dict__.pop("llm", None)


def make_scorer(config: RewardModelConfig):
    if config.kind == "process":
        if config.backend == "vllm":
            raise ValueError("reward_model.backend: vllm scores outcome models; a process model needs transformers")
        return ProcessRewardScorer(config)
    return VllmRewardScorer(config) if config.backend == "vllm" else RewardScorer(config)
