"""Attention variants to and from Hugging Face: a LLaMA-style model with a sliding window exports as
``MistralForCausalLM`` and a BLOOM-style one (ALiBi, embedding LayerNorm, GELU, tied) as ``BloomForCausalLM``; both
load with ``transformers`` and give our logits (fp32, 1e-4 relative, right padding), import -> export is exact, and
the variants no class holds are refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from conftest import small_bpe_tokenizer
from pretrain import export, hf
from pretrain.core.errors import CheckpointError
from pretrain.models.gpt.model import GPT, GPTArgs

V, S = 320, 16
MISTRAL = dict(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               ffn_hidden_size=64, seq_length=S, position_embedding="rope", normalization="rmsnorm",
               activation="swiglu", bias=False, tie_word_embeddings=False, norm_eps=1e-6, sliding_window=5)
# 6 heads (not a power of two: BLOOM's interleaved slopes), head_dim 8, MLP 4 x hidden
BLOOM = dict(vocab_size=V, num_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=6,
             ffn_hidden_size=192, seq_length=S, position_embedding="alibi", embedding_norm=True,
             normalization="layernorm", activation="gelu", bias=True, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return small_bpe_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def perturbed(args: GPTArgs) -> GPT:
    torch.manual_seed(0)
    model = GPT(args).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: perturb everything so that a wrong mapping shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("arch,shape", [("MistralForCausalLM", MISTRAL), ("BloomForCausalLM", BLOOM)],
                         ids=["mistral", "bloom"])
def test_export_parity_and_round_trip(arch, shape, tmp_path, tokenizer):
    args = GPTArgs(**shape)
    assert hf.architecture_for("gpt", args) == arch  # the class export picks by itself
    model = perturbed(args)
    out = tmp_path / "hf"
    export.write_hf_dir(out, arch, args, model.state_dict(), tokenizer)
    theirs = getattr(transformers, arch).from_pretrained(out, local_files_only=True).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (3, S), generator=g)
    mask = (torch.arange(S)[None, :] < torch.tensor([S, S - 4, S - 9])[:, None]).long()  # right padding
    with torch.no_grad():
        ref, got = theirs(input_ids=ids, attention_mask=mask).logits, model(ids)
    valid = mask.bool()
    err, top = (got[valid] - ref[valid]).abs().max().item(), ref[valid].abs().max().item()
    assert err <= 1e-4 * top, f"max abs difference {err} vs max |logit| {top}"
    if arch == "MistralForCausalLM":  # the window matters here: full attention gives other logits
        full = perturbed(GPTArgs(**{**shape, "sliding_window": None}))
        with torch.no_grad():
            assert (full(ids)[0, -1] - ref[0, -1]).abs().max() > 1e-3

    fresh = GPT(args)
    hf.load_into(fresh, out, "gpt", args)
    again = tmp_path / "again"
    export.write_hf_dir(again, arch, args, fresh.state_dict(), tokenizer)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert hf.check_compatible(out, "gpt", args) == arch


def test_variants_no_class_holds_are_refused():
    pattern = GPTArgs(**{**MISTRAL, "sliding_window_pattern": 2})
    with pytest.raises(CheckpointError, match="sliding_window_pattern=2 \\(needs null"):
        hf.architecture_for("gpt", pattern)
    why = hf.misfit("LlamaForCausalLM", "gpt", GPTArgs(**MISTRAL))
    assert any("sliding_window=5 (needs null" in w and "MistralForCausalLM" in w for w in why)
    assert any("sliding_window=None (needs a window" in w
               for w in hf.misfit("MistralForCausalLM", "gpt", GPTArgs(**{**MISTRAL, "sliding_window": None})))
    why = hf.misfit("BloomForCausalLM", "gpt", GPTArgs(**{**BLOOM, "ffn_hidden_size": 100}))
    assert why == ["ffn_hidden_size=100 (needs 192)"]
    why = hf.misfit("GPT2LMHeadModel", "gpt", GPTArgs(**BLOOM))
    assert "position_embedding=alibi (needs learned)" in why and any(w.startswith("embedding_norm=True") for w in why)
