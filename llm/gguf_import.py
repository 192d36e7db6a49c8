"""A GGUF file (llama.cpp's format) -> an ordinary HF checkpoint folder (model + tokenizer).

transformers reads GGUF with the ``gguf`` package and dequantizes the weights, but marks the
model as quantized and refuses to save it. We rebuild the same architecture from its config
without that marker, load the dequantized weights into it and save: the folder then loads with
``AutoModelForCausalLM`` and vLLM like any other (float32; on CPU give vLLM ``dtype: float32``).

The folder is written under a temporary name beside ``out`` and renamed into place when whole:
an interrupted import leaves no half-written checkpoint behind.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from data.errors import UserError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def check_inputs(gguf_file: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path]:
    """Refuse what cannot work, before anything is loaded or written."""
    source, target = Path(gguf_file), Path(out)
    if not source.exists():
        raise UserError(f"{source}: no such file")
    if not source.is_file():
        raise UserError(f"{source}: not a file; give the path of a .gguf file")
    with open(source, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{source}: not a GGUF file (it does not start with the GGUF magic bytes)")
    if target.exists():
        if not target.is_dir():
            raise UserError(f"{target}: exists and is not a folder; give a new or empty folder")
        if any(target.iterdir()):
            raise UserError(f"{target}: exists and is not empty; give a new or empty folder")
    return source, target


def read_architecture(source: Path) -> str:
    """``general.architecture`` from the file's header; a truncated or corrupt file is the user's
    to replace, not a traceback."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(source).get_field("general.architecture")
        return field.contents() if field is not None else "unknown"
    except Exception as err:  # the reader raises struct, value and index errors alike
        raise UserError(f"{source}: cannot be read as GGUF ({type(err).__name__}: {err}); "
                        "is it truncated or corrupt?") from err


def import_gguf(gguf_file: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``out`` (config, float32 safetensors weights, generation config, tokenizer) from
    ``gguf_file``; returns ``out``."""
    source, target = check_inputs(gguf_file, out)
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as err:
        raise UserError("reading GGUF files needs the gguf package: pip install 'gguf>=0.10'") from err
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    started = time.monotonic()
    architecture = read_architecture(source)
    folder, name = str(source.resolve().parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its load report warns of missing weights; we refuse them below
        try:
            loaded, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
    except ValueError as err:  # an architecture or tokenizer transformers cannot convert
        raise UserError(f"{source}: transformers cannot convert this {architecture} GGUF: "
                        f"{str(err).splitlines()[0]}") from err
    tied = loaded.config.get_text_config().tie_word_embeddings
    absent = [key for key in info.get("missing_keys", ()) if not (tied and key.endswith("lm_head.weight"))]
    if absent:  # transformers would fill them with random values and only warn
        shown = ", ".join(sorted(absent)[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise UserError(f"{source}: the file lacks weights the {architecture} model needs: {shown}")

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF marker that makes save_pretrained refuse
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied output head has no weight of its own; any other mismatch is a bug, not the user's.
    missing = [key for key in missing if not (tied and key.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit the rebuilt model: missing {missing}, unexpected {unexpected}")
    if model.generation_config is not None and loaded.generation_config is not None:
        model.generation_config = loaded.generation_config
    del loaded, state

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.importing-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        if target.exists():  # checked empty above
            target.rmdir()
        os.rename(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    parameters = sum(p.numel() for p in model.parameters())
    log.info("imported %s: architecture %s (%s), %.1fM parameters, %d layers, vocab %d, dtype float32 "
             "(dequantized), tokenizer %s, in %.1f s -> %s",
             source.name, config.model_type, type(model).__name__, parameters / 1e6,
             getattr(config, "num_hidden_layers", -1), config.vocab_size, type(tokenizer).__name__,
             time.monotonic() - started, target)
    return target
