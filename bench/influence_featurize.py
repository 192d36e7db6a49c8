"""Candidate featurize throughput on CPU: ours against TRAK, bergson, a LESS-style loop and the
forward+backward limit, on the same model, batches and projection size.

Every method runs in its own fresh process (so peak memory is its own) on the same random-init
Qwen2 with LESS's LoRA (r=128, alpha=512, q/k/v/o), the same 256-token right-padded batches of
sample-corpus texts, 8192 projected dimensions. Ours is timed on the candidate path it really
runs (Adam update direction, sketch projection) and on plain gradients (what the baselines
compute). Fidelity: Pearson of all pairwise cosines and top-10 neighbour overlap against the
exact per-example gradients.

    # bergson lives in its own venv (its dependencies pull a CUDA torch): see bench/RESULTS.md
    /work/bench-venv/bin/python bench/influence_featurize.py [--sizes tiny small] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import influence_baselines as baselines  # noqa: E402


def ours(model, batches, proj_dim=8192, *, adam: bool = True, info: dict | None = None):
    """Our featurizer on the baselines' batches: (features, seconds, peak RSS delta)."""
    import torch

    from influence.config import ProjectionSettings
    from influence.examples import TokenizedExample
    from influence.featurizer import Featurizer
    from influence.gradients import AdamDirection
    from influence.lora import AdamState, lora_parameters

    examples = []
    for batch in batches:
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            examples.append(TokenizedExample(str(len(examples)), tuple(row[: int(mask.sum())].tolist()), 1))
    direction = None
    if adam:  # a checkpoint's Adam moments (random but fixed): the candidate side's transform
        generator = torch.Generator().manual_seed(0)
        state = AdamState(
            exp_avg={n: torch.randn(p.shape, generator=generator) * 1e-4 for n, p in lora_parameters(model)},
            exp_avg_sq={n: torch.rand(p.shape, generator=generator) * 1e-8 for n, p in lora_parameters(model)},
            step=100, betas=(0.9, 0.999), eps=1e-8)
    with baselines._Measure() as measure:
        featurizer = Featurizer(model, 0, ProjectionSettings(dim=proj_dim), batch_size=len(batches[0]["input_ids"]))
        if adam:
            direction = AdamDirection(state, "cpu")
        features = featurizer.featurize(examples, adam=direction, normalize=False)
    if info is not None:
        info.update(method="ours", adam=adam, lora_parameters=featurizer.num_parameters)
    for _, p in lora_parameters(model):  # the next method in this process needs them trainable
        p.requires_grad_(True)
    return features, measure.seconds, measure.peak_delta


baselines.register_method("ours_adam", lambda m, b, d=8192, info=None: ours(m, b, d, adam=True, info=info))
baselines.register_method("ours_sgd", lambda m, b, d=8192, info=None: ours(m, b, d, adam=False, info=info))

# (name, method, extra kwargs, repeats): fast methods best of 3, the slow ones once
METHODS = [
    ("forward+backward limit", "forward_backward_limit", None, 3),
    ("ours (Adam direction, sketch 8192)", "ours_adam", None, 3),
    ("ours (gradient, sketch 8192)", "ours_sgd", None, 3),
    ("bergson per-module (its default)", "bergson", {"mode": "per_module"}, 3),
    ("bergson global 8192", "bergson", {"mode": "global"}, 1),
    ("TRAK (traker, device cpu)", "trak", None, 1),
    ("LESS-style loop", "less_loop", None, 1),
]
NEEDS_EXACT = {"ours_adam"}  # fidelity of Adam directions is measured against exact Adam directions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(baselines.MODEL_SIZES))
    parser.add_argument("--n", type=int, default=None, help="examples (default: 64 tiny, 32 small)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="method ids to skip (e.g. trak less_loop)")
    args = parser.parse_args()
    try:
        import bergson  # noqa: F401
    except ImportError:
        print("bergson is not installed in this interpreter: skipping it (see bench/RESULTS.md)")
        args.skip += ["bergson"]

    for size in args.sizes:
        n = args.n or (64 if size == "tiny" else 32)
        workdir = Path(tempfile.mkdtemp(prefix=f"influence-bench-{size}-"))
        model_dir = str(workdir / "model")
        common = dict(size=size, n=n, batch_size=16, max_length=256, proj_dim=8192, r=128, alpha=512,
                      threads=args.threads, model_dir=model_dir, import_module="influence_featurize")
        exact_path = str(workdir / "exact.npy")
        baselines.run_isolated("exact", **{**common, "repeats": 1}, features_out=exact_path)
        exact = np.load(exact_path)
        rows = []
        for label, method, kwargs, repeats in METHODS:
            if method in args.skip:
                continue
            out = str(workdir / f"{method}-{len(rows)}.npy")
            result = baselines.run_isolated(method, **common, repeats=repeats, method_kwargs=kwargs,
                                            features_out=out)
            features = np.load(out)
            quality = baselines.fidelity(features, exact) if features.shape[1] and method not in NEEDS_EXACT else None
            rows.append((label, result, quality))
        print(f"\n## {size} model: {n} examples, 256 tokens, batch 16, 8192 dims, {args.threads} threads")
        limit = rows[0][1]["examples_per_s"]
        ours_rate = next(r["examples_per_s"] for label, r, _ in rows if label.startswith("ours (Adam"))
        print("| method | ex/s | ours (Adam) / it | of the limit | peak MB | Pearson | top-10 | load |")
        print("|---|---|---|---|---|---|---|---|")
        for label, result, quality in rows:
            rate = result["examples_per_s"]
            pearson = f"{quality['pearson']:.3f}" if quality else "-"
            top = f"{quality['topk_overlap']:.2f}" if quality else "-"
            print(f"| {label} | {rate:.2f} | {ours_rate / rate:.2f} | {rate / limit:.2f} | "
                  f"{result['peak_rss_delta'] / 2**20:.0f} | {pearson} | {top} | {result['load_before']:.2f} |")
        print(json.dumps({label: {k: result[k] for k in ("examples_per_s", "all_seconds", "peak_rss_delta")}
                          for label, result, _ in rows}))


if __name__ == "__main__":
    main()
