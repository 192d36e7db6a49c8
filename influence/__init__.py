"""The influence stage: pick the corpus texts whose training gradient points where the gradient
of downstream math data points (LESS), streamed and sharded.

warmup (LoRA, per-epoch checkpoints with Adam state) -> featurize (batched per-example
gradients, seeded projections, chunked feature files) -> select (scores, global top-k, dedup,
quotas, bias report; a stage output distill reads)."""
