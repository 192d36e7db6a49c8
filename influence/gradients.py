"""Per-example gradients of the LoRA weights from ONE batched forward and backward pass.

For a linear layer ``y = x W^T``, example b's weight gradient is ``sum_t dy[b,t]^T x[b,t]``.
Forward hooks keep each LoRA layer's input ``x``; a hook on its output receives ``dy`` during the
backward pass, where the (B, out, in) per-example gradient is formed, turned into an update
direction, projected and dropped, one module at a time. The full per-example gradient of the
whole model never exists at once.

The LoRA weights themselves are set not to require gradients: autograd then computes only the
activation gradients the hooks need, not the batch-summed weight gradients nobody reads. The
graph is rooted at the input embeddings instead.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from influence.examples import TokenizedExample, collate
from influence.lora import AdamState, lora_parameters


def _lora_linears(model) -> list[tuple[str, object]]:
    """(parameter name, the nn.Linear that owns it) for every LoRA weight, in parameter order."""
    modules = dict(model.named_modules())
    return [(name, modules[name.rsplit(".", 1)[0]]) for name, _ in lora_parameters(model)]


def per_example_losses(model, input_ids, attention_mask, scored, inputs_embeds=None):
    """Each example's mean loss over its scored tokens, shape (B,): the loss warm-up trains and
    influence scores. One cross-entropy over every position, masked after: measured faster
    than gathering the scored positions first, whose backward scatters into a zeroed copy of
    the logits."""
    if inputs_embeds is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    else:
        logits = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits
    logits = logits[:, :-1]
    mask = scored[:, 1:].to(torch.float32)
    token_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1),
                                 reduction="none").view_as(mask)
    return (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)


class PerExampleGradients:
    """Runs a batch and hands every LoRA module's per-example gradient to a sink.

    ``sink(name, grads)`` gets ``grads`` of shape (B, numel) in float32, in backward order
    (last module first).
    """

    def __init__(self, model, pad_id: int) -> None:
        self.model = model.eval()  # dropout off: a gradient must not depend on a random mask
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.modules = _lora_linears(model)
        self.order = [(name, tuple(module.weight.shape)) for name, module in self.modules]
        for _, p in lora_parameters(model):
            p.requires_grad_(False)
        for p in model.parameters():
            p.requires_grad_(False)

    def run(self, examples: Sequence[TokenizedExample], sink: Callable[[str, object], None]):
        """One forward and backward pass for ``examples``; returns their losses (B,)."""
        input_ids, attention_mask, scored = collate(examples, self.pad_id, str(self.device))
        handles = []

        def capture(name: str):
            def forward_hook(module, inputs, output):
                x = inputs[0]

                def backward_hook(dy):
                    # (B, out, T) @ (B, T, in): the per-example weight gradient.
                    grads = torch.bmm(dy.transpose(1, 2).float(), x.float())
                    sink(name, grads.reshape(grads.shape[0], -1))

                output.register_hook(backward_hook)
            return forward_hook

        for name, module in self.modules:
            handles.append(module.register_forward_hook(capture(name)))
        try:
            embeds = self.model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
            losses = per_example_losses(self.model, input_ids, attention_mask, scored, inputs_embeds=embeds)
            losses.sum().backward()
        finally:
            for handle in handles:
                handle.remove()
        return losses.detach()


class AdamDirection:
    """The update Adam would take from a checkpoint's state for one example's gradient (LESS's
    candidate side), with bias correction at the next step."""

    def __init__(self, state: AdamState, device) -> None:
        self.state = state
        self.beta1, self.beta2 = state.betas
        t = state.step + 1
        self.correction1 = 1 - self.beta1 ** t
        self.correction2 = 1 - self.beta2 ** t
        # Adam's state enters every example's update the same way: scale it once per checkpoint.
        self._scaled = {name: (state.exp_avg[name].reshape(-1).to(device, dtype=torch.float32) * (self.beta1 / self.correction1),
                               state.exp_avg_sq[name].reshape(-1).to(device, dtype=torch.float32) * (self.beta2 / self.correction2))
                        for name in state.exp_avg}

    def __call__(self, name: str, grads):
        """m_hat / (sqrt(v_hat) + eps) after one Adam step on ``grads`` (B, numel); in place on
        fresh buffers, as this runs on every module of every batch."""
        m_scaled, v_scaled = self._scaled[name]
        numerator = torch.add(m_scaled, grads, alpha=(1 - self.beta1) / self.correction1)
        denominator = grads.square().mul_((1 - self.beta2) / self.correction2).add_(v_scaled).sqrt_().add_(self.state.eps)
        return numerator.div_(denominator)
