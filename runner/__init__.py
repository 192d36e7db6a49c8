"""The one runner of every stage: a shard's whole life, written once.

A stage is a small object (:class:`runner.stage.Stage`) that declares its typed config, its
inputs, how work is owned across shards (:mod:`runner.ownership`), how results become records
and side files, and what runs once all shards are sealed. :func:`runner.run.run_stage` does
the rest: validate before writing, open the output folder, lock the shard, skip it if sealed,
resume it otherwise, seal it, and run the finish step once.
"""
