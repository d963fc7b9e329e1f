"""Mixture of experts to and from Hugging Face: ``pretrain.export`` writes a MoE GPT as ``MixtralForCausalLM``
(logits within 1e-4 in fp32, loaded back with ``transformers``), ``model.init_from`` imports a Mixtral directory
(ours, or one ``transformers`` saved) exactly, and the models Mixtral cannot hold are refused naming the key."""

from __future__ import annotations

import json
from dataclasses import replace
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
MOE = dict(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
           ffn_hidden_size=64, seq_length=S, position_embedding="rope", normalization="rmsnorm", activation="swiglu",
           bias=False, tie_word_embeddings=False, norm_eps=1e-6, rotary_base=1e6, num_experts=4, moe_layer_freq=1,
           moe_router_topk=2, moe_ffn_hidden_size=48, moe_capacity_factor=None, moe_aux_loss_coeff=0.01,
           moe_z_loss_coeff=0.001)
MIXTRAL = "MixtralForCausalLM"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return small_bpe_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def moe_model(args: GPTArgs) -> GPT:
    torch.manual_seed(0)
    model = GPT(args).eval()
    with torch.no_grad():  # norm weights start at 1: perturb everything so that a wrong mapping shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def assert_close_rel(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-4) -> None:
    err = (ours - theirs).abs().max().item()
    top = theirs.abs().max().item()
    assert err <= rel * top, f"max abs difference {err} vs max |logit| {top}"


def logits_pair(model: GPT, theirs, gen_seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(gen_seed)
    ids = torch.randint(5, V, (3, S), generator=g)
    mask = (torch.arange(S)[None, :] < torch.tensor([S, S - 5, S - 11])[:, None]).long()  # right padding
    with torch.no_grad():
        ref, got = theirs(input_ids=ids, attention_mask=mask).logits, model(ids)
    valid = mask.bool()
    return got[valid], ref[valid]


def test_export_is_mixtral_with_logit_parity_and_imports_back_exactly(tmp_path, tokenizer):
    args = GPTArgs(**MOE)
    assert hf.architecture_for("gpt", args) == MIXTRAL
    model = moe_model(args)
    out = tmp_path / "hf"
    export.write_hf_dir(out, MIXTRAL, args, model.state_dict(), tokenizer)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [MIXTRAL] and cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2
    assert cfg["intermediate_size"] == 48 and cfg["rope_parameters"]["rope_theta"] == 1e6
    # the released checkpoints' layout (what save_pretrained writes): one w1/w3/w2 per expert
    keys = load_file(str(out / "model.safetensors")).keys()
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in keys
    assert "model.layers.0.mlp.gate.weight" not in keys

    theirs = transformers.MixtralForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert_close_rel(*logits_pair(model, theirs))

    # model.init_from=<that directory>: the trainer's import; exporting it again gives identical tensors
    fresh = GPT(args)
    hf.load_into(fresh, out, "gpt", args)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    again = tmp_path / "again"
    export.write_hf_dir(again, MIXTRAL, args, fresh.state_dict(), tokenizer)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_mixtral_saved_by_transformers_imports_with_its_logits(tmp_path, tokenizer):
    """A directory ``save_pretrained`` wrote (its own init, its own key layout) and the stacked layout
    ``transformers`` holds in memory both import; our model then computes the Mixtral's logits."""
    args = GPTArgs(**MOE)
    torch.manual_seed(3)
    theirs = transformers.MixtralForCausalLM(hf.hf_config(MIXTRAL, args, {})).eval()
    theirs.save_pretrained(tmp_path / "saved")
    ours = GPT(args).eval()
    hf.load_into(ours, tmp_path / "saved", "gpt", args)
    assert_close_rel(*logits_pair(ours, theirs))

    stacked = tmp_path / "stacked"  # the in-memory names: model.layers.N.mlp.experts.gate_up_proj ...
    stacked.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(stacked / "model.safetensors"))
    (stacked / "config.json").write_text((tmp_path / "saved" / "config.json").read_text())
    again = GPT(args)
    hf.load_into(again, stacked, "gpt", args)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


@pytest.mark.parametrize("change,needs", [
    (dict(activation="gelu", moe_ffn_hidden_size=48), "activation=gelu (needs swiglu: GELU experts have no place"),
    (dict(moe_router_topk=1), "moe_router_topk=1 (needs 2"),
    (dict(moe_capacity_factor=1.25), "moe_capacity_factor=1.25 (needs null"),
    (dict(moe_layer_freq=2), "moe_layer_freq=2 (needs 1"),
])
def test_models_mixtral_cannot_hold_are_refused_naming_the_key(change, needs):
    args = replace(GPTArgs(**MOE), **change)
    assert any(needs in why for why in hf.misfit(MIXTRAL, "gpt", args)), hf.misfit(MIXTRAL, "gpt", args)
    with pytest.raises(CheckpointError, match="fits neither"):
        hf.architecture_for("gpt", args)


def test_dense_and_moe_never_take_each_others_class(tmp_path, tokenizer):
    moe = GPTArgs(**MOE)
    assert "num_experts=4 (needs 0: a mixture of experts exports as MixtralForCausalLM)" in hf.misfit(
        "LlamaForCausalLM", "gpt", moe)
    dense = replace(moe, num_experts=0)
    assert hf.architecture_for("gpt", dense) == "LlamaForCausalLM"
    assert any("num_experts=0" in w for w in hf.misfit(MIXTRAL, "gpt", dense))

    # importing a Mixtral into a config of another MoE shape names the keys that differ
    out = tmp_path / "hf"
    export.write_hf_dir(out, MIXTRAL, moe, moe_model(moe).state_dict(), tokenizer)
    with pytest.raises(CheckpointError, match="model.num_experts: config 8, MixtralForCausalLM 4"):
        hf.check_compatible(out, "gpt", replace(moe, num_experts=8))
    with pytest.raises(CheckpointError, match="model.moe_ffn_hidden_size: config 64, MixtralForCausalLM 48"):
        hf.check_compatible(out, "gpt", replace(moe, moe_ffn_hidden_size=64))
    with pytest.raises(CheckpointError, match="model.num_experts: config 0, MixtralForCausalLM 4"):
        hf.check_compatible(out, "gpt", dense)


def test_a_trained_moe_run_exports_as_mixtral_and_init_from_imports_it(tmp_path, compose_cfg, monkeypatch, cache_dir):
    """The whole way: ``experiment=moe_tiny`` trained in process, ``python -m pretrain.export`` of its checkpoint
    (logits of the loaded ``MixtralForCausalLM`` = the checkpoint's model's), then ``model.init_from=<that
    directory>`` builds a model with exactly the checkpoint's weights."""
    from pretrain.trainer import Trainer
    from tests.conftest import TINY

    monkeypatch.setenv("PRETRAIN_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    common = (*TINY, "experiment=moe_tiny", "trainer.max_steps=3")
    Trainer(compose_cfg(*common, f"run_dir={tmp_path / 'run'}")).fit()
    export.main([str(tmp_path / "run"), str(tmp_path / "hf")])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [MIXTRAL]
    _, args, ours = export.load_model(export.find_checkpoint(tmp_path / "run"))
    theirs = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (2, args.seq_length), generator=g)
    with torch.no_grad():
        assert_close_rel(ours(ids), theirs(input_ids=ids).logits)

    imported = Trainer(compose_cfg(*common, f"model.init_from={tmp_path / 'hf'}", f"run_dir={tmp_path / 'b'}"))
    model = imported.plan().build_model()
    try:
        expected = ours.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    finally:
        imported.stop_request.close()
        torch.distributed.destroy_process_group()
