"""Load a checkpoint and its tokenizer from a local folder, or a hub name when online."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from llm.errors import EngineError

_EDGE_BYTES = 1 << 20


def resolve_model_path(name_or_path: str, *, marker: str = "config.json") -> str:
    """A local folder must exist and hold ``marker`` (a checkpoint's config.json, or a
    tokenizer's tokenizer_config.json); anything else is a hub name.

    Failing here, with the path in the message, beats a deep stack trace from a loader.
    """
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists()
    if looks_local:
        if not (path / marker).is_file():
            raise EngineError(f"{name_or_path}: no {marker} there (not a {'tokenizer' if 'tokenizer' in marker else 'checkpoint'} folder)")
        # A local checkpoint must load without a network: stop the hub client from trying.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(path)
    return name_or_path


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        # fp32 on CPU: reduced precision there is slow or unsupported on many CPUs.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def pick_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path, marker="tokenizer_config.json"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, *, dtype: str = "auto", device: str = "auto"):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load buries the run's own progress and errors
    device = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(name_or_path), dtype=torch_dtype(dtype, device)
    )
    return model.to(device).eval()


def render_chat(tokenizer, messages) -> str:
    """Chat messages as the raw prompt the model was trained on (its own chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError("chat request for a tokenizer without a chat_template; send a raw prompt instead")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def model_fingerprint(model_dir: str | Path) -> str:
    """The model's config, tokenizer and weight files (name, size, first and last MiB): cheap
    enough for a 14 GB checkpoint on every worker, and any re-save or retrain changes it."""
    folder = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            digest.update(path.name.encode() + path.read_bytes())
        elif path.suffix in (".safetensors", ".bin"):
            size = path.stat().st_size
            with open(path, "rb") as handle:
                head = handle.read(_EDGE_BYTES)
                handle.seek(max(size - _EDGE_BYTES, 0))
                tail = handle.read(_EDGE_BYTES)
            digest.update(f"{path.name}:{size}".encode() + head + tail)
    return digest.hexdigest()[:16]
