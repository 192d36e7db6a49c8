"""``pretrain train``: continued pre-training + SFT of the final model, on the shared training
core (:mod:`training.loop`), from the token arrays of ``pretrain tokenize`` (never the text).

    python -m pretrain train --config FILE.yaml
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m pretrain train --config FILE.yaml
"""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import yaml

from data.errors import InputError
from data.storage import MANIFEST, ShardWriter, describe_input, read_json
from pretrain.config import PretrainConfig
from pretrain.plan import (
    PHASE_NAMES,
    SOURCE,
    PlannedRows,
    TokenArrays,
    build_plan,
    sft_documents_without_loss,
)
from pretrain.tokenize import TokenizeStage, read_sources_file
from training.loop import global_batch_rows, steps_for, train_model
from training.stage import TrainingStage, make_accelerator, run_training

log = logging.getLogger(__name__)


class PretrainStage(TrainingStage):
    name = "pretrain"

    def inputs(self) -> list[str]:
        return [self.config.model, self.config.tokenized]

    def check(self) -> None:
        """The tokenize pass is complete and was made from these sources with this tokenizer."""
        folder = self.config.tokenized_folder()
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"tokenized: {folder} holds no tokenize output; run `mathsynth pretrain tokenize` first")
        manifest = read_json(manifest_path)
        if manifest.get("stage") != TokenizeStage.name:
            raise InputError(f"tokenized: {folder} is a {manifest.get('stage')!r} output, not {TokenizeStage.name!r}")
        if not manifest.get("complete"):
            raise InputError(f"tokenized: {folder} is incomplete; finish `mathsynth pretrain tokenize` "
                             f"(every shard) first")
        if manifest.get("config") != self.config.tokenize_config():
            raise InputError(f"tokenized: {folder} was tokenized from other sources or another tokenizer; "
                             f"tokenize again into a new folder")

    def input_facts(self) -> list[dict[str, Any]]:
        return [describe_input(self.config.model), describe_input(self.config.tokenized)]

    def load_data(self, world: int) -> PlannedRows:
        folder = self.config.tokenized_folder()
        arrays = TokenArrays(folder, read_json(folder / MANIFEST)["num_shards"])
        plan = build_plan(arrays.index, self.config)
        global_rows = global_batch_rows(self.config, world)
        total_steps = steps_for(plan.rows, self.config, world)
        stats = plan_stats(plan, arrays.index, self.config, total_steps * global_rows)
        stats["sft_documents_without_loss"] = sft_documents_without_loss(plan, arrays)
        return PlannedRows(plan, arrays, global_rows, total_steps, stats)

    def train(self, train_log: ShardWriter | None) -> dict[str, Any]:
        from llm.loading import load_tokenizer

        tokenizer = load_tokenizer(self.config.tokenizer_path())
        data = self.load_data(self.accelerator.num_processes)
        if data.stats["rows_not_trained"]:
            log.warning("%d rows after the last whole global batch are not trained on",
                        data.stats["rows_not_trained"])
        if data.stats["sft_documents_without_loss"]:
            log.warning("%d SFT documents keep no answer token within max_length %d (the prompt fills the row): "
                        "they train nothing; raise max_length", data.stats["sft_documents_without_loss"],
                        self.config.max_length)
        return train_model(self.config, self.accelerator, data, tokenizer, train_log)

    def model_card(self, stats: dict[str, Any]) -> str:
        return model_card(self.config, read_sources_file(self.config.tokenized_folder()), stats)

    def summary(self, manifest: dict[str, Any]) -> str:
        stats = manifest.get("stats", {})
        loss = stats.get("final_loss")
        return (f"{stats.get('steps', 0)} steps on {stats.get('tokens_trained', 0)} tokens "
                f"({stats.get('processes', 1)} processes), final loss {'?' if loss is None else f'{loss:.4f}'}")


def plan_stats(plan, index: np.ndarray, config: PretrainConfig, rows_trained: int) -> dict[str, Any]:
    """What the run trains on, per source and per phase (for the manifest and the model card); the
    per-source figures include the rows after the last whole global batch."""
    seg_source = index[plan.seg_doc, SOURCE]
    documents = np.bincount(seg_source[plan.seg_start == 0], minlength=len(config.sources))
    tokens = np.bincount(seg_source, weights=plan.seg_length, minlength=len(config.sources))
    sources = [{"name": source.label, "weight": source.weight, "documents": int((index[:, SOURCE] == k).sum()),
                "documents_trained": int(documents[k]), "tokens_trained": int(tokens[k])}
               for k, source in enumerate(config.sources)]
    row_tokens = np.add.reduceat(plan.seg_length, plan.row_ptr[:-1]) if plan.rows else np.zeros(0, dtype=np.int64)
    phases = {name: {"rows": int((plan.row_phase == p).sum()), "tokens": int(row_tokens[plan.row_phase == p].sum())}
              for p, name in enumerate(PHASE_NAMES)}
    return {"rows": plan.rows, "rows_not_trained": plan.rows - rows_trained,
            "tokens_trained": int(row_tokens[:rows_trained].sum()), "phases": phases, "sources": sources}


def run_pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Train (or resume, or do nothing if done) from a complete tokenize output."""
    return run_training(PretrainStage(config, make_accelerator(config, "pretrain")))


def model_card(config: PretrainConfig, tokenized: dict[str, Any], stats: dict[str, Any]) -> str:
    lines = ["| source | weight | documents | trained on | tokens trained |", "|---|---|---|---|---|"]
    for source in stats["sources"]:
        lines.append(f"| `{source['name']}` | {source['weight']} | {source['documents']} | "
                     f"{source['documents_trained']} | {source['tokens_trained']} |")
    phases = ", ".join(f"{name}: {p['rows']} rows, {p['tokens']} tokens" for name, p in stats["phases"].items())
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [mathsynth, math, continued-pretraining]\n---\n\n"
        "# mathsynth pretrained model\n\n"
        f"Continued pre-training and SFT of `{config.model}` by `mathsynth pretrain` on synthetic math data "
        "(JiuZhang3.0 recipe: the shuffled pre-training data first, then the shuffled SFT data, in one run). "
        "Prompt it with `## Question\\n{question}\\n\\n## Solution\\n`.\n\n"
        "## Data\n\n" + "\n".join(lines) + "\n\n"
        f"- order: {phases}\n- rows trained: {stats['rows'] - stats['rows_not_trained']} of {stats['rows']} "
        f"(<= {config.max_length} tokens each), tokens trained: {stats['tokens_trained']}\n"
        f"- tokenized: `{config.tokenized}` with `{tokenized.get('tokenizer')}`\n\n"
        "## Training\n\n"
        f"- steps: {stats['steps']}, global batch: {stats['global_batch_rows']} rows, processes: {stats['processes']}\n"
        f"- final loss: {stats['final_loss']}\n\n"
        "## Config\n\n```yaml\n" + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False) + "```\n"
        "\nSource details: " + json.dumps(tokenized.get("sources", [])) + "\n"
    )
