"""``mathsynth models``: bring a model into the ordinary HF checkpoint format the stages load."""
from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", required=True)
    gguf = verbs.add_parser("import-gguf", help="a GGUF file (llama.cpp) -> an HF checkpoint folder, float32 "
                                                "(model + tokenizer; loads with transformers and vLLM)")
    gguf.add_argument("file", metavar="FILE", help="the .gguf file")
    gguf.add_argument("--out", required=True, help="the folder to write (new or empty)")


def run(args: argparse.Namespace) -> int:
    from llm.gguf_import import import_gguf

    print(import_gguf(args.file, args.out))
    return 0
