"""Per-example LoRA gradients from one batched pass, their update directions and projections."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import sample_texts

from influence.config import LoraSettings, ProjectionSettings
from influence.examples import collate, tokenize_example
from influence.featurizer import Featurizer
from influence.gradients import AdamDirection, per_example_losses
from influence.lora import AdamState, attach_lora, lora_parameters
from influence.projection import SketchProjector
from llm.loading import load_model, load_tokenizer


def _lora_model(tiny_model, r: int):
    tokenizer = load_tokenizer(str(tiny_model))
    model = load_model(str(tiny_model), device="cpu")
    torch.manual_seed(0)
    model = attach_lora(model, LoraSettings(r=r, alpha=2 * r, dropout=0.1), for_training=False)
    with torch.no_grad():  # lora_B starts at zero; give both factors real values
        for _, p in lora_parameters(model):
            p.normal_(0.0, 0.05)
    return tokenizer, model


def _examples(tokenizer, n: int, max_length: int, *, pairs: bool = False):
    texts = sample_texts(n + 1)
    examples = []
    for i, text in enumerate(texts[:n]):
        # Cut texts to many different lengths, so batches carry real padding.
        text = text[: 40 + 37 * i]
        prompt = texts[i + 1][:60] if pairs and i % 2 else None
        examples.append(tokenize_example(tokenizer, f"x{i}", text, prompt, max_length))
    return examples


def _autograd_gradient(model, tokenizer, example) -> np.ndarray:
    """The reference: one example alone, no padding, autograd over the LoRA weights."""
    params = [p for _, p in lora_parameters(model)]
    for p in params:
        p.requires_grad_(True)
    input_ids, attention_mask, scored = collate([example], tokenizer.pad_token_id)
    loss = per_example_losses(model, input_ids, attention_mask, scored)[0]
    grads = torch.autograd.grad(loss, params)
    for p in params:
        p.requires_grad_(False)
    return torch.cat([g.reshape(-1) for g in grads]).numpy()


@pytest.mark.parametrize("pairs", [False, True], ids=["own-tokens", "prompt-completion-pairs"])
def test_batched_per_example_gradients_equal_autograd_with_padding(tiny_model, pairs):
    tokenizer, model = _lora_model(tiny_model, r=8)
    examples = _examples(tokenizer, 12, 96, pairs=pairs)
    assert len({len(e.input_ids) for e in examples}) >= 6  # padding in every batch
    featurizer = Featurizer(model, tokenizer.pad_token_id, ProjectionSettings(kind="exact"), batch_size=5)
    batched = featurizer.featurize(examples, normalize=False)
    for i, example in enumerate(examples):
        reference = _autograd_gradient(model, tokenizer, example)
        assert np.linalg.norm(reference) > 0
        error = np.linalg.norm(batched[i] - reference) / np.linalg.norm(reference)
        assert error < 1e-4, (i, error)


def test_dropout_is_off_while_scoring(tiny_model):
    tokenizer, model = _lora_model(tiny_model, r=8)
    examples = _examples(tokenizer, 4, 64)
    featurizer = Featurizer(model, tokenizer.pad_token_id, ProjectionSettings(kind="exact"), batch_size=4)
    first = featurizer.featurize(examples)
    second = featurizer.featurize(examples)
    np.testing.assert_array_equal(first, second)


def test_adam_direction_matches_a_hand_computed_update(tiny_model):
    tokenizer, model = _lora_model(tiny_model, r=4)
    names = [n for n, _ in lora_parameters(model)]
    generator = torch.Generator().manual_seed(1)
    shapes = {n: p.shape for n, p in lora_parameters(model)}
    state = AdamState(exp_avg={n: torch.randn(shapes[n], generator=generator) * 1e-3 for n in names},
                      exp_avg_sq={n: torch.rand(shapes[n], generator=generator) * 1e-6 for n in names},
                      step=7, betas=(0.9, 0.999), eps=1e-8)
    examples = _examples(tokenizer, 3, 64)
    featurizer = Featurizer(model, tokenizer.pad_token_id, ProjectionSettings(kind="exact"), batch_size=3)
    raw = featurizer.featurize(examples, normalize=False)
    directed = featurizer.featurize(examples, adam=AdamDirection(state, "cpu"), normalize=False)
    m = torch.cat([state.exp_avg[n].reshape(-1) for n in names]).numpy().astype(np.float64)
    v = torch.cat([state.exp_avg_sq[n].reshape(-1) for n in names]).numpy().astype(np.float64)
    for g, got in zip(raw.astype(np.float64), directed):
        m_hat = (0.9 * m + 0.1 * g) / (1 - 0.9 ** 8)
        v_hat = (0.999 * v + 0.001 * g * g) / (1 - 0.999 ** 8)
        np.testing.assert_allclose(got, m_hat / (np.sqrt(v_hat) + 1e-8), rtol=2e-4, atol=1e-6)


def test_projected_cosines_track_exact_ones_at_8192_dims(tiny_model):
    """LESS's LoRA shape (r=128) on the tiny model: 131,072 LoRA weights sketched to 8,192."""
    tokenizer, model = _lora_model(tiny_model, r=128)
    examples = _examples(tokenizer, 48, 128)
    exact = Featurizer(model, tokenizer.pad_token_id, ProjectionSettings(kind="exact"), batch_size=16)
    assert exact.num_parameters == 131072
    projected = Featurizer(model, tokenizer.pad_token_id, ProjectionSettings(dim=8192, seed=3), batch_size=16)
    a, b = exact.featurize(examples), projected.featurize(examples)
    upper = np.triu_indices(len(examples), 1)
    pearson = np.corrcoef((a @ a.T)[upper], (b @ b.T)[upper])[0, 1]
    assert pearson >= 0.9, pearson


def test_a_projection_is_rebuilt_from_its_seed_and_module_name_alone():
    grads = torch.randn(3, 500, generator=torch.Generator().manual_seed(0))
    first, second = torch.zeros(3, 64), torch.zeros(3, 64)
    SketchProjector(64, seed=5, nnz=2).add(first, "layers.0.q_proj.lora_A.default.weight", grads)
    SketchProjector(64, seed=5, nnz=2).add(second, "layers.0.q_proj.lora_A.default.weight", grads)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    other = torch.zeros(3, 64)
    SketchProjector(64, seed=5, nnz=2).add(other, "layers.1.q_proj.lora_A.default.weight", grads)
    assert not torch.allclose(first, other)  # each module draws its own matrix


def test_projecting_module_by_module_is_one_linear_map_of_the_whole_gradient():
    """Summing per-module sketches must be linear and preserve inner products on average."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4000, generator=generator)
    projector = SketchProjector(2048, seed=0)
    out = torch.zeros(3, 2048)
    for name, sl in (("m1", slice(0, 1000)), ("m2", slice(1000, 4000))):
        projector.add(out, name, torch.stack([a[sl], b[sl], a[sl] + b[sl]]))
    torch.testing.assert_close(out[0] + out[1], out[2], rtol=1e-5, atol=1e-5)
    exact = torch.nn.functional.cosine_similarity(a, a + b, dim=0)
    sketched = torch.nn.functional.cosine_similarity(out[0], out[2], dim=0)
    assert abs(float(exact - sketched)) < 0.05
