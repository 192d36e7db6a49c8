"""Evaluation: the benchmark suite, prompting in natural-language and tool settings, answer
extraction and grading (the project's one notion of a correct answer), metrics and reports.
Model-written code runs in the shared :mod:`sandbox` package."""
