"""Baselines for the per-example LoRA gradient featurizer benchmark (CPU).

Each baseline takes a PEFT model with LoRA adapters (only the LoRA parameters require grad),
a list of right-padded batches ``dict(input_ids, attention_mask, labels)`` (labels = input_ids
with padding set to -100) and a projection size, and returns
``(features, seconds, peak_rss_delta_bytes)``:

* ``trak_featurize``: TRAK (PyPI ``traker``) with ``device="cpu"``: ``TRAKer.load_checkpoint``
  + ``TRAKer.featurize`` per batch, i.e. ``vmap(grad)`` per-example gradients and TRAK's CPU
  projector (``BasicProjector``, Gaussian, regenerated in blocks of 100 columns every call).
* ``bergson_featurize``: EleutherAI's bergson (hook-based: per-module gradients formed from
  captured activations and output gradients) through its in-process API
  (``InMemoryCollector`` + ``CollectorComputer``), on CPU.
* ``less_loop_featurize``: LESS's ``collect_grads``: one example at a time forward+backward,
  flattened LoRA gradients, projected every 16 examples with TRAK's ``BasicProjector``
  (Rademacher, block size 128, seed 0), exactly the settings LESS uses.
* ``forward_backward_limit``: a plain batched forward + ``loss.backward()`` over the same
  batches, no per-example work and no projection: the throughput ceiling.

All methods use the same loss: per example, the mean cross-entropy over its labelled tokens
(what LESS and TRAK's LM setting use), and all run the model without an attention mask: with
right padding and a causal model the padded positions cannot affect the real ones and their
labels are -100, so this is exact (and ``vmap`` cannot take an sdpa mask anyway).

``features`` are raw (unnormalised) projections; compare methods by cosine. ``seconds`` covers
everything the method needs for these batches, including building its projector or TRAKer.
``peak_rss_delta_bytes`` is the process's peak RSS (``getrusage`` maxrss) at the end minus its
current RSS at the start: maxrss never goes down, so this is only meaningful in a fresh
process. ``run_isolated`` runs one method in its own subprocess for that reason.

Helpers: ``build_model``/``load_texts``/``make_batches`` (the shared model and data),
``exact_per_example_grads`` and ``fidelity`` (projected vs exact pairwise cosines),
``run_isolated`` (one method in a fresh process) and ``register_method`` (add ours to it).

Run ``python bench/influence_baselines.py --check`` for a smoke run of every baseline (64
examples, tiny model) with examples/s, peak memory and fidelity against exact gradients.
bergson is installed in a separate venv (its dependencies pull a CUDA torch): see
bench/RESULTS.md for the commands; ``--python`` picks the interpreter for the subprocesses.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Model sizes: "tiny" is the project's test model; "small" is large enough that the
# forward+backward pass, not the per-example work, should dominate.
MODEL_SIZES = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4},
}
LESS_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


# --------------------------------------------------------------------------- model and data


def build_model(
    size: str = "tiny",
    *,
    r: int = 128,
    alpha: int = 512,
    target_modules=LESS_TARGET_MODULES,
    seed: int = 0,
    out_dir: str | Path | None = None,
    attn_implementation: str | None = None,
):
    """A random-init Qwen2 (``MODEL_SIZES[size]``) with LoRA adapters; returns (model, tokenizer).

    Defaults are LESS's LoRA settings (r=128, alpha=512, q/k/v/o, dropout 0). The adapters are
    initialised with random A *and* B (``init_lora_weights=False``): peft's default B=0 makes
    every lora_A gradient exactly zero, which a warmed-up adapter (what LESS featurizes) is not.
    ``attn_implementation`` None keeps transformers' default (sdpa). Under ``vmap`` (TRAK)
    sdpa's CPU kernel has no batching rule and torch warns it falls back to a slower path;
    "eager" avoids that, but measured here it was no faster (tiny and small models, 256 tokens).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.tiny import build_tiny_model, default_training_texts

    out_dir = Path(out_dir or tempfile.mkdtemp(prefix=f"influence-bench-{size}-"))
    if not (out_dir / "config.json").exists():
        build_tiny_model(out_dir, texts=default_training_texts(), seed=seed, **MODEL_SIZES[size])
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation=attn_implementation
    )
    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.eval()  # no dropout anywhere; gradients still flow
    return model, tokenizer


def load_texts(n: int, *, offset: int = 0, min_chars: int = 40) -> list[str]:
    """The first ``n`` texts (after ``offset``) of the shipped sample corpus."""
    from data.samples import SAMPLE_CORPUS

    texts = []
    with open(SAMPLE_CORPUS, encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line)["text"]
            if len(text) >= min_chars:  # every example needs labelled tokens
                texts.append(text)
    texts = texts[offset : offset + n]
    if len(texts) < n:
        raise ValueError(f"the sample corpus has only {len(texts)} texts after offset {offset}")
    return texts


def make_batches(tokenizer, texts: list[str], *, batch_size: int = 16, max_length: int = 256):
    """Right-padded batches (padded to each batch's longest), labels = input_ids, pad -> -100."""
    tokenizer.padding_side = "right"
    batches = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            truncation=True,
            max_length=max_length,
            padding="longest",
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        batches.append(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": labels,
            }
        )
    return batches


def lora_named_params(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable (LoRA) parameters in ``named_parameters`` order: the feature order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def per_example_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] mean next-token cross-entropy over each example's labelled (!= -100) tokens."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    tok = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none", ignore_index=-100
    ).view_as(labels)
    valid = (labels != -100).to(tok.dtype)
    return (tok * valid).sum(1) / valid.sum(1).clamp(min=1)


def _num_examples(batches) -> int:
    return sum(int(b["input_ids"].shape[0]) for b in batches)


# --------------------------------------------------------------------------- memory helpers


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next baseline RSS is honest."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class _Measure:
    """Wall time and peak-RSS delta (peak at exit minus current RSS at entry) of a block."""

    def __enter__(self):
        _release_memory()
        self.rss0 = _rss_now()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak_delta = max(0, _maxrss() - self.rss0)
        return False


# --------------------------------------------------------------------------- the limit


def forward_backward_limit(
    model, batches, proj_dim: int | None = None, *, info: dict | None = None
):
    """Plain batched forward + backward (gradients of the summed per-example mean losses on the
    LoRA parameters), no per-example gradients, no projection: the throughput ceiling.

    Returns an (N, 0) feature array. ``proj_dim`` is accepted for a uniform signature."""
    n = _num_examples(batches)
    with _Measure() as m:
        for batch in batches:
            logits = model(input_ids=batch["input_ids"]).logits
            per_example_mean_loss(logits, batch["labels"]).sum().backward()
            model.zero_grad(set_to_none=True)
    if info is not None:
        info.update(method="forward_backward_limit", n=n)
    return np.zeros((n, 0), dtype=np.float32), m.seconds, m.peak_delta


# --------------------------------------------------------------------------- LESS


def _unpadded_examples(batches):
    """One [1, T] example at a time with its padding cut off, as LESS's batch-size-1 loader."""
    for batch in batches:
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            keep = mask.bool()
            yield ids[keep][None], labels[keep][None]


def less_loop_featurize(
    model,
    batches,
    proj_dim: int = 8192,
    *,
    project: bool = True,
    project_interval: int = 16,
    block_size: int = 128,
    seed: int = 0,
    info: dict | None = None,
):
    """LESS's ``collect_grads`` (SGD gradients) on CPU: a Python loop over single examples
    (padding cut off: LESS's loader has batch size 1), ``model(**batch).loss.backward()``
    (HF's loss: the mean over the labelled tokens), the LoRA gradients flattened, and every
    ``project_interval`` examples projected with TRAK's ``BasicProjector`` (Rademacher, block
    size 128, seed 0, model_id 0: LESS's fixed settings; on a CPU LESS falls back to this
    projector because fast_jl needs CUDA). LESS casts the stacked gradients to fp16 before
    projecting to save GPU memory; here they stay fp32 (the projector computes in fp32 anyway).

    ``project=False`` returns the exact per-example gradients (N, num_lora_params): the
    reference for fidelity checks."""
    from trak.projectors import BasicProjector, ProjectionType

    params = [p for _, p in lora_named_params(model)]
    grad_dim = sum(p.numel() for p in params)
    n = _num_examples(batches)
    out: list[torch.Tensor] = []
    with _Measure() as m:
        projector = None
        if project:
            projector = BasicProjector(
                grad_dim=grad_dim,
                proj_dim=proj_dim,
                seed=seed,
                proj_type=ProjectionType.rademacher,
                device="cpu",
                dtype=torch.float32,
                block_size=block_size,
            )
        pending: list[torch.Tensor] = []

        def flush():
            if not pending:
                return
            stacked = torch.stack(pending)
            pending.clear()
            out.append(projector.project(stacked, model_id=0) if projector else stacked)

        model.zero_grad(set_to_none=True)
        for ids, labels in _unpadded_examples(batches):
            model(input_ids=ids, labels=labels).loss.backward()
            pending.append(torch.cat([p.grad.reshape(-1) for p in params]))
            model.zero_grad(set_to_none=True)
            if len(pending) == project_interval:
                flush()
        flush()
        features = torch.cat(out).numpy()
    if info is not None:
        info.update(
            method="less_loop",
            n=n,
            grad_dim=grad_dim,
            dim=features.shape[1],
            projector=f"trak.BasicProjector rademacher block_size={block_size}"
            if project
            else None,
        )
    return features, m.seconds, m.peak_delta


def exact_per_example_grads(model, batches) -> np.ndarray:
    """(N, num_lora_params) exact per-example gradients of the per-example mean loss."""
    return less_loop_featurize(model, batches, project=False)[0]


# --------------------------------------------------------------------------- TRAK


def _trak_classes():
    """TRAK's model-output function for a causal LM and a LoRA-only gradient computer.

    Defined lazily so importing this module does not need traker."""
    from trak.gradient_computers import FunctionalGradientComputer
    from trak.modelout_functions import AbstractModelOutput

    class CausalLMLossModelOutput(AbstractModelOutput):
        """Model output f(z, theta) = the example's mean cross-entropy over labelled tokens.

        ``get_output`` runs under ``vmap`` on one example (no batch dim), so it adds one, and
        calls the model without an attention mask (exact with right padding, see the module
        docstring). ``get_out_to_loss_grad`` is TRAK's Q term; TRAK ships none for LMs, so this
        uses the analogue of its classification output, 1 - exp(-loss) (one batched forward,
        which TRAK's own output functions also pay)."""

        def __init__(self) -> None:
            super().__init__()

        @staticmethod
        def get_output(model, weights, buffers, input_ids, labels):
            logits = torch.func.functional_call(
                model, (weights, buffers), args=(), kwargs={"input_ids": input_ids.unsqueeze(0)}
            ).logits
            return per_example_mean_loss(logits, labels.unsqueeze(0)).sum()

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            input_ids, labels = batch
            with torch.no_grad():
                logits = torch.func.functional_call(
                    model, (weights, buffers), args=(), kwargs={"input_ids": input_ids}
                ).logits
                loss = per_example_mean_loss(logits, labels)
            return (1 - torch.exp(-loss)).unsqueeze(-1)

    class LoraOnlyGradientComputer(FunctionalGradientComputer):
        """TRAK's ``FunctionalGradientComputer`` differentiates w.r.t. *every* parameter in
        ``func_weights`` and only afterwards drops those not in ``grad_wrt``. Passing only the
        LoRA parameters to ``functional_call`` (the frozen ones come from the module itself)
        computes the same LoRA gradients without the frozen ones' per-example gradients."""

        def load_model_params(self, model) -> None:
            self.func_weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
            self.func_buffers = dict(model.named_buffers())

    return CausalLMLossModelOutput, LoraOnlyGradientComputer


def trak_featurize(
    model,
    batches,
    proj_dim: int = 8192,
    *,
    lora_only: bool = True,
    project: bool = True,
    use_half_precision: bool = False,
    seed: int = 0,
    info: dict | None = None,
):
    """TRAK on CPU: ``TRAKer(device="cpu", proj_dim=...)``, ``load_checkpoint``, then
    ``featurize`` per batch (vmap(grad) per-example gradients w.r.t. the LoRA parameters,
    projected by TRAK's CPU ``BasicProjector``: Gaussian, 100-column blocks regenerated on
    every call). Features are TRAK's stored projected gradients (``grads``; TRAK divides them
    by sqrt(num params), which cosines ignore). Featurizing only, no ``finalize_features``.

    ``lora_only=False`` uses TRAK's stock gradient computer, which also forms the frozen
    parameters' per-example gradients before discarding them (what ``grad_wrt`` alone gives).
    ``project=False`` uses TRAK's ``NoOpProjector``: the cost of TRAK's gradients alone (the
    features are then the full LoRA gradients).
    Note proj_dim <= 100 breaks TRAK's scoring on CPU (one projector block, no proj_matrix)."""
    import logging

    from trak import TRAKer
    from trak.gradient_computers import FunctionalGradientComputer
    from trak.projectors import NoOpProjector

    model_output, lora_computer = _trak_classes()
    names = [n for n, _ in lora_named_params(model)]
    n = _num_examples(batches)
    with tempfile.TemporaryDirectory(prefix="trak-bench-") as save_dir, _Measure() as m:
        t0 = time.perf_counter()
        traker = TRAKer(
            model=model,
            task=model_output(),
            train_set_size=n,
            save_dir=save_dir,
            load_from_save_dir=False,
            device="cpu",  # must be the string: TRAK compares device == "cpu"
            gradient_computer=lora_computer if lora_only else FunctionalGradientComputer,
            proj_dim=proj_dim,
            projector=None if project else NoOpProjector(device="cpu"),
            projector_seed=seed,
            grad_wrt=names,
            use_half_precision=use_half_precision,
            logging_level=logging.WARNING,
        )
        traker.load_checkpoint(model.state_dict(), model_id=0)
        setup_s = time.perf_counter() - t0
        for batch in batches:
            traker.featurize(
                batch=(batch["input_ids"], batch["labels"]), num_samples=batch["input_ids"].shape[0]
            )
        features = np.array(traker.saver.current_store["grads"], dtype=np.float32)
        projector = type(traker.projector).__name__
        proj_type = str(traker.projector.proj_type)
        del traker
    if info is not None:
        info.update(
            method="trak",
            n=n,
            dim=features.shape[1],
            setup_s=setup_s,
            grad_dim=sum(p.numel() for _, p in lora_named_params(model)),
            projector=f"{projector} {proj_type}",
            lora_only=lora_only,
        )
    return features, m.seconds, m.peak_delta


# --------------------------------------------------------------------------- bergson


def bergson_projection_dim(model, proj_dim: int, mode: str) -> tuple[int, int]:
    """(bergson's ``projection_dim`` setting, resulting feature size) closest to ``proj_dim``.

    ``global`` gives exactly ``proj_dim``. ``per_module`` (bergson's default) projects each
    module's [out, in] gradient on both sides to [p, p], so the features have
    num_modules * p**2 entries: p is chosen to make that closest to ``proj_dim``."""
    if mode == "global":
        return proj_dim, proj_dim
    if mode == "none":  # no projection: the full per-module gradients
        return 0, sum(p.numel() for _, p in lora_named_params(model))
    n_modules = len(lora_named_params(model))  # one LoRA Linear (A or B) per weight
    p = max(1, round(math.sqrt(proj_dim / n_modules)))
    return p, n_modules * p * p


def bergson_featurize(
    model,
    batches,
    proj_dim: int = 8192,
    *,
    mode: str = "global",
    seed: int = 0,
    info: dict | None = None,
):
    """bergson's gradient collection on CPU through its in-process API: an ``InMemoryCollector``
    (no on-disk index) hooked into the LoRA ``Linear`` modules (``detect_peft_modules``), run by
    a ``CollectorComputer`` over the same batches (bergson re-pads them itself, to each batch's
    longest, and runs the model without an attention mask, as here). Loss: cross-entropy,
    ``loss_reduction="mean"`` (per example mean over labelled tokens), Rademacher projections.

    ``mode="global"``: each module's per-example gradient is formed and projected with its own
    block of a ``[proj_dim, n]`` matrix, summed: exactly ``proj_dim`` features. ``mode=
    "per_module"`` (bergson's default): two-sided per-module projections to p x p each; see
    ``bergson_projection_dim``. ``mode="none"``: no projection, the full LoRA gradients (the
    cost of bergson's gradients alone). ``info['dim']`` records the feature size produced."""
    from bergson.collector.collector import CollectorComputer
    from bergson.collector.in_memory_collector import InMemoryCollector
    from bergson.config.config import IndexConfig, PreprocessConfig
    from bergson.gradients import GradientProcessor
    from bergson.utils.peft import detect_peft_modules
    from datasets import Dataset

    setting, _ = bergson_projection_dim(model, proj_dim, mode)
    target = "per_module" if mode == "none" else mode
    rows_ids, rows_labels, index_batches = [], [], []
    for batch in batches:
        idx = []
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            keep = mask.bool()
            idx.append(len(rows_ids))
            rows_ids.append(ids[keep].tolist())
            rows_labels.append(labels[keep].tolist())
        index_batches.append(idx)
    data = Dataset.from_dict({"input_ids": rows_ids, "labels": rows_labels})
    n = len(rows_ids)

    with tempfile.TemporaryDirectory(prefix="bergson-bench-") as tmp, _Measure() as m:
        cfg = IndexConfig(
            run_path=os.path.join(tmp, "run"),
            projection_dim=setting,
            projection_target=target,
            projection_type="rademacher",
            projection_seed=seed,
            loss_reduction="mean",
        )
        cfg.partial_run_path.mkdir(parents=True, exist_ok=True)  # it saves a counter there
        processor = GradientProcessor(
            projection_dim=setting,
            projection_type="rademacher",
            projection_target=target,
            projection_seed=seed,
        )
        collector = InMemoryCollector(
            model=model.base_model,
            cfg=cfg,
            processor=processor,
            target_modules=detect_peft_modules(model),
            data=data,
            preprocess_cfg=PreprocessConfig(),
        )
        computer = CollectorComputer(
            model=model, data=data, collector=collector, batches=index_batches, cfg=cfg
        )
        computer.run_with_collector_hooks(desc="bergson bench")
        grads = collector.gradients
        features = np.concatenate([grads[k].float().numpy() for k in grads], axis=1)
        n_modules = len(collector.target_info)
    model.zero_grad(set_to_none=True)
    if info is not None:
        info.update(
            method=f"bergson_{mode}",
            n=n,
            dim=features.shape[1],
            projection_dim_setting=setting,
            modules=n_modules,
        )
    return features, m.seconds, m.peak_delta


# --------------------------------------------------------------------------- fidelity


def _pairwise_cosines(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    return x @ x.T


def fidelity(features: np.ndarray, exact: np.ndarray, *, top_k: int = 10) -> dict:
    """How well ``features`` keep the geometry of the exact gradients.

    pearson: Pearson correlation of all pairwise cosines (i < j), projected vs exact.
    topk_overlap: mean over examples of |top-k neighbours by cosine, projected ∩ exact| / k."""
    cp, ce = _pairwise_cosines(features), _pairwise_cosines(exact)
    iu = np.triu_indices(len(ce), k=1)
    pearson = float(np.corrcoef(cp[iu], ce[iu])[0, 1])
    np.fill_diagonal(cp, -np.inf)
    np.fill_diagonal(ce, -np.inf)
    k = min(top_k, len(ce) - 1)
    nb_p = np.argsort(-cp, axis=1)[:, :k]
    nb_e = np.argsort(-ce, axis=1)[:, :k]
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nb_p, nb_e)]))
    return {
        "pearson": pearson,
        "topk_overlap": overlap,
        "k": k,
        "exact_cos_mean": float(ce[iu].mean()),
        "exact_cos_std": float(ce[iu].std()),
    }


# --------------------------------------------------------------------------- isolation


METHODS = {
    "forward_backward_limit": forward_backward_limit,
    "less_loop": less_loop_featurize,
    "trak": trak_featurize,
    "bergson": bergson_featurize,
    "exact": lambda model, batches, proj_dim=None, info=None: less_loop_featurize(
        model, batches, proj_dim, project=False, info=info
    ),
}


def register_method(name: str, fn) -> None:
    """Make another featurizer (e.g. ours) runnable by ``run_isolated``; the subprocess imports
    this module fresh, so register it at import time of a module named in ``import_module``."""
    METHODS[name] = fn


def _worker(spec: dict) -> dict:
    """Inside the subprocess: build model and data, optionally warm up, run, measure."""
    torch.set_num_threads(spec["threads"])
    if spec.get("import_module"):
        __import__(spec["import_module"])  # may call register_method
    fn = METHODS[spec["method"]]
    model, tokenizer = build_model(
        spec["size"],
        r=spec["r"],
        alpha=spec["alpha"],
        seed=spec["seed"],
        out_dir=spec.get("model_dir"),
        attn_implementation=spec.get("attn_implementation"),
    )
    texts = load_texts(spec["n"], offset=spec.get("offset", 0))
    batches = make_batches(
        tokenizer, texts, batch_size=spec["batch_size"], max_length=spec["max_length"]
    )
    kwargs = spec.get("method_kwargs") or {}
    if spec.get("warmup"):
        # One batch first, untimed: first-call costs (kernel selection, lazy imports) are not
        # what a long featurize run pays per example.
        fn(model, batches[:1], spec["proj_dim"], **kwargs)
        model.zero_grad(set_to_none=True)
    info: dict = {}
    load_before = os.getloadavg()[0]  # another job on a 2-core machine distorts everything
    rss_before = _rss_now()
    runs = []
    for _ in range(max(1, spec.get("repeats", 1))):  # best of k: the least disturbed run
        features, seconds, peak = fn(model, batches, spec["proj_dim"], info=info, **kwargs)
        model.zero_grad(set_to_none=True)
        runs.append((seconds, peak))
    seconds = min(s for s, _ in runs)
    result = {
        "method": spec["method"],
        "size": spec["size"],
        "n": len(features),
        "seconds": seconds,
        "examples_per_s": len(features) / seconds,
        "all_seconds": [s for s, _ in runs],
        "peak_rss_delta": max(p for _, p in runs),
        "rss_before": rss_before,
        "peak_rss_total": _maxrss(),
        "feature_dim": int(features.shape[1]),
        "threads": spec["threads"],
        "load_before": load_before,
        "info": info,
    }
    if spec.get("features_out"):
        np.save(spec["features_out"], features)
    return result


def run_isolated(
    method_name: str,
    *,
    size: str = "tiny",
    n: int = 64,
    batch_size: int = 16,
    max_length: int = 256,
    proj_dim: int = 8192,
    r: int = 128,
    alpha: int = 512,
    seed: int = 0,
    threads: int = 2,
    warmup: bool = True,
    repeats: int = 1,
    model_dir: str | None = None,
    attn_implementation: str | None = None,
    features_out: str | None = None,
    method_kwargs: dict | None = None,
    import_module: str | None = None,
    python: str | None = None,
    timeout: float | None = None,
) -> dict:
    """Run one method in a fresh Python process (so maxrss starts clean) and return its numbers:
    seconds, examples_per_s, peak_rss_delta (bytes), peak_rss_total, feature_dim, info.

    The subprocess builds the same model (``model_dir`` reuses a saved base model: give every
    method the same one) and data from the arguments, sets torch and OMP threads to
    ``threads``, and with ``warmup`` runs the method once on the first batch before the timed
    run; ``repeats`` > 1 times it that many times and keeps the fastest (peak: the largest).
    ``features_out`` saves the features (.npy) for fidelity checks. ``python`` picks the
    interpreter (bergson lives in its own venv)."""
    spec = {
        "method": method_name,
        "size": size,
        "n": n,
        "batch_size": batch_size,
        "max_length": max_length,
        "proj_dim": proj_dim,
        "r": r,
        "alpha": alpha,
        "seed": seed,
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "model_dir": model_dir,
        "attn_implementation": attn_implementation,
        "features_out": features_out,
        "method_kwargs": method_kwargs,
        "import_module": import_module,
    }
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TQDM_DISABLE="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    proc = subprocess.run(
        [python or sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
        check=False,  # a failure is reported below, with the child's stderr
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{method_name} failed (exit {proc.returncode}):\n"
        f"{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    )


# --------------------------------------------------------------------------- smoke check


def _check(args) -> None:
    """Every baseline on ``--n`` examples, each in its own process; then fidelity vs exact."""
    out = Path(tempfile.mkdtemp(prefix="influence-baselines-"))
    for size in args.sizes:
        model_dir = out / f"model-{size}"
        build_model(size, out_dir=model_dir)  # saved once, every subprocess loads the same one
        common = {
            "size": size,
            "n": args.n,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "proj_dim": args.proj_dim,
            "threads": args.threads,
            "model_dir": str(model_dir),
            "python": args.python,
        }
        exact = out / f"exact-{size}.npy"
        run_isolated("exact", features_out=str(exact), **common)
        print(
            f"\n== {size}: {args.n} examples, {args.max_length} tokens, "
            f"proj_dim {args.proj_dim}, "
            f"{args.threads} threads"
        )
        print(
            f"{'method':<24}{'ex/s':>9}{'seconds':>9}{'peak MB':>9}{'dim':>7}{'pearson':>9}"
            f"{'top10':>7}{'load':>6}"
        )
        # The fast variants run in about a second: best of --repeats so that a burst of other
        # work on the machine does not decide their figure. The slow ones run once.
        fast = {"repeats": args.repeats}
        for label, method, kwargs, extra in [
            ("forward_backward_limit", "forward_backward_limit", None, fast),
            ("less_loop", "less_loop", None, {}),
            ("trak", "trak", None, {}),
            ("trak[eager attention]", "trak", None, {"attn_implementation": "eager"}),
            ("bergson[global]", "bergson", {"mode": "global"}, {}),
            ("bergson[per_module]", "bergson", {"mode": "per_module"}, fast),
        ]:
            if method in args.skip or label in args.skip:
                continue
            feats = out / f"{label}-{size}.npy"
            try:
                res = run_isolated(
                    method, features_out=str(feats), method_kwargs=kwargs, **extra, **common
                )
            except (
                RuntimeError,
                subprocess.TimeoutExpired,
            ) as exc:  # report and go on: one broken baseline must not hide the rest
                print(f"{label:<24} FAILED: {str(exc).strip().splitlines()[-1][:200]}")
                continue
            fid = (
                fidelity(np.load(feats), np.load(exact))
                if res["feature_dim"]
                else {"pearson": float("nan"), "topk_overlap": float("nan")}
            )
            print(
                f"{label:<24}{res['examples_per_s']:>9.1f}{res['seconds']:>9.2f}"
                f"{res['peak_rss_delta'] / 2**20:>9.0f}{res['feature_dim']:>7}"
                f"{fid['pearson']:>9.3f}{fid['topk_overlap']:>7.2f}{res['load_before']:>6.1f}",
                flush=True,
            )
            if args.verbose:
                print("   ", json.dumps(res["info"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="smoke-run every baseline")
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=sorted(MODEL_SIZES))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--proj-dim", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of k for the fast methods")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the subprocesses")
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        # Run through the importable module, not __main__: a module named in import_module
        # registers its methods into `influence_baselines.METHODS`.
        import influence_baselines

        print("RESULT " + json.dumps(influence_baselines._worker(json.loads(args.worker))), flush=True)
    elif args.check:
        _check(args)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
