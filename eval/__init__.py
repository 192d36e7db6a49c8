"""Evaluation: the benchmark suite, prompting in natural-language and tool settings, answer
extraction and grading (the project's one notion of a correct answer), a sandbox for
model-written code, metrics and reports."""
