"""The GPT model on its own: shapes, causality, GQA, init, parameter/FLOP counts, and that its layout maps
onto Hugging Face's GPT2LMHeadModel / LlamaForCausalLM by the renaming of pretrain.hf (same logits)."""

from __future__ import annotations

import pytest
import torch
import transformers  # a test dependency (the [dev] extra)

from pretrain.flops import gpt_flops_per_token, lookup_peak_flops
from pretrain.hf import to_hf
from pretrain.models.gpt.model import GPT, GPTArgs, count_parameters

GPT2 = dict(position_embedding="learned", normalization="layernorm", activation="gelu", bias=True,
            tie_word_embeddings=True)
LLAMA = dict(position_embedding="rope", normalization="rmsnorm", activation="swiglu", bias=False,
             tie_word_embeddings=False, norm_eps=1e-6)


def make(style: dict, **kw) -> GPT:
    base = dict(vocab_size=97, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                ffn_hidden_size=64, seq_length=16)
    base.update(style)
    base.update(kw)
    torch.manual_seed(0)
    return GPT(GPTArgs(**base)).eval()


@pytest.mark.parametrize("style", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_forward_is_causal_and_counts_match(style):
    model = make(style, num_key_value_heads=2 if style is LLAMA else 4)
    x = torch.randint(0, 97, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, 97)
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 97  # change the future only
    assert torch.allclose(model(y)[:, :10], logits[:, :10], atol=1e-6)
    assert not torch.allclose(model(y)[:, 10:], logits[:, 10:])
    assert count_parameters(model.args)["total"] == sum(p.numel() for p in model.parameters())
    loss = model(x, x)
    assert loss.ndim == 0 and abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5


def test_tied_and_untied_output_layer():
    tied, untied = make(GPT2), make(LLAMA)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_scaled_init_of_output_projections():
    model = make(GPT2, num_layers=8, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=8)
    assert model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[0].self_attn.o_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)


def test_labels_minus_100_are_ignored():
    model = make(GPT2)
    x = torch.randint(0, 97, (1, 16))
    labels = x.clone()
    labels[:, 8:] = -100
    full = torch.nn.functional.cross_entropy(model(x)[0, :8], x[0, :8])
    assert model(x, labels).item() == pytest.approx(full.item(), rel=1e-5)


def test_flops_formula_by_hand():
    args = GPTArgs(vocab_size=1000, num_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                   ffn_hidden_size=128, seq_length=32, **LLAMA)
    # per layer: q,o 64x64 each; k,v 64x32 each (GQA 2 of 4 heads); SwiGLU 3 x 64x128; two RMSNorms
    layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64
    expected = 6 * 2 * layer + 6 * 64 * 1000 + 12 * 2 * 64 * 32
    f = gpt_flops_per_token(args)
    assert f["model"] == expected and f["hardware"] == expected
    args.activation_checkpointing = True
    assert gpt_flops_per_token(args)["hardware"] == expected + 2 * 2 * layer + 4 * 2 * 64 * 32


def test_peak_flops_table():
    assert lookup_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert lookup_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert lookup_peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert lookup_peak_flops("Some Unknown Accelerator", "bf16") is None


def test_gpt2_style_is_gpt2lmheadmodel_after_renaming():
    model = make(GPT2)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                                  activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                  layer_norm_epsilon=1e-5)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf("GPT2LMHeadModel", model.args, model.state_dict()), strict=False)
    # lm_head.weight is tied to transformer.wte (the export leaves the copy out)
    assert not unexpected and all(k == "lm_head.weight" or "attn.bias" in k or "masked_bias" in k for k in missing), (
        missing, unexpected)
    x = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-5)


def test_llama_style_is_llamaforcausallm_after_renaming():
    model = make(LLAMA, num_key_value_heads=2)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                                   attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf("LlamaForCausalLM", model.args, model.state_dict()), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    x = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-5)
