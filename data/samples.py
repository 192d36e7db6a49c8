"""Small corpora shipped with the package, for tests, examples and smoke runs."""
from pathlib import Path

# 1,298 Stack Exchange (math.stackexchange.com + MathOverflow) Q&A threads, CC BY-SA;
# provenance and attribution in samples/README.md.
SAMPLE_CORPUS = Path(__file__).parent / "samples" / "stackexchange_math.jsonl"
