"""Tokens/s and model FLOPs utilisation (MFU) for the training log.

FLOPs per token follow the PaLM appendix B estimate that nanoGPT and torchtitan also use:
6 x (matmul parameters) for the forward and backward pass, plus 12 x layers x hidden x sequence
for attention scores. With packed rows attention is block-diagonal, so this slightly overstates
the work done: the figure is comparable with other reports, not an exact count.
"""
from __future__ import annotations

# Dense bf16 peak per device, TFLOPS (vendor data sheets, without sparsity).
KNOWN_PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def matmul_parameters(model) -> int:
    """Parameters that take part in a matmul per token: all but the input embedding (a lookup),
    the tied output head counted once as the matmul it is."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    return total if tied else total - embedding.numel()


def flops_per_token(model, sequence_length: int) -> float:
    config = model.config
    text = getattr(config, "text_config", None) or config
    layers, hidden = text.num_hidden_layers, text.hidden_size
    return 6.0 * matmul_parameters(model) + 12.0 * layers * hidden * sequence_length


def detect_peak_tflops() -> float | None:
    """The bf16 peak of the local GPU when it is a known one; None on CPU or an unknown GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in KNOWN_PEAKS.items():
        if key in name:
            return peak
    return None


def mfu(tokens_per_second: float, flops_per_token_: float, peak_tflops: float | None, devices: int) -> float | None:
    if not peak_tflops:
        return None
    return tokens_per_second * flops_per_token_ / (peak_tflops * 1e12 * devices)
