"""Hugging Face export and import: for each of the four transformers classes the exported directory loads
offline with ``from_pretrained`` and computes our logits (fp32, 1e-4 relative, with padding masks); import ->
export gives identical tensors; bad input stops with a message naming both sides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers  # a test dependency (the [dev] extra)
from safetensors.torch import load_file

from pretrain import export, hf
from pretrain.core.errors import CheckpointError
from pretrain.models.bert.model import BERT, BERTArgs
from pretrain.models.gpt.model import GPT, GPTArgs
from pretrain.models.t5.model import T5, T5Args

V, S = 320, 16  # vocabulary (>= the little tokenizers below), sequence length


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    """Small tokenizer.json files of the three kinds, trained by the data pipeline's trainer on sample prose."""
    from pretrain.core.tokenizer import TokenizerSpec, save_tokenizer, train_tokenizer
    from pretrain.data.sample import corpus_files, read_corpus

    texts = read_corpus(corpus_files()[0])[:40]
    out = {}
    d = tmp_path_factory.mktemp("tok")
    for kind, vocab, sentinels in (("bpe", 300, 0), ("wordpiece", 300, 0), ("unigram", 300, 20)):
        tok = train_tokenizer(TokenizerSpec(kind=kind, vocab_size=vocab, sentinel_tokens=sentinels), lambda: iter(texts))
        assert tok.get_vocab_size() <= V
        save_tokenizer(tok, d / kind / "tokenizer.json")
        out[kind] = d / kind / "tokenizer.json"
    return out


GPT2_STYLE = dict(position_embedding="learned", normalization="layernorm", activation="gelu", bias=True,
                  tie_word_embeddings=True, num_key_value_heads=4)
LLAMA_STYLE = dict(position_embedding="rope", normalization="rmsnorm", activation="swiglu", bias=False,
                   tie_word_embeddings=False, num_key_value_heads=2, norm_eps=1e-6)


def make_args(arch: str, **kw):
    if arch in ("GPT2LMHeadModel", "LlamaForCausalLM"):
        style = GPT2_STYLE if arch == "GPT2LMHeadModel" else LLAMA_STYLE
        return GPTArgs(**{**dict(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4,
                                 ffn_hidden_size=64, seq_length=S), **style, **kw})
    if arch == "BertForMaskedLM":
        return BERTArgs(**{**dict(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                                  seq_length=S, hidden_dropout=0.0, attention_dropout=0.0, sop=True), **kw})
    return T5Args(**{**dict(vocab_size=V, num_layers=2, num_decoder_layers=3, hidden_size=32, num_attention_heads=4,
                            kv_channels=12, ffn_hidden_size=48, seq_length=S, target_length=8, hidden_dropout=0.0,
                            relative_attention_num_buckets=8, relative_attention_max_distance=20), **kw})


def make_model(arch: str, args):
    torch.manual_seed(0)
    model = {GPTArgs: GPT, BERTArgs: BERT, T5Args: T5}[type(args)](args).eval()
    with torch.no_grad():  # biases and norm weights start at 0/1: perturb them so a wrong mapping shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


KIND = {"GPT2LMHeadModel": "bpe", "LlamaForCausalLM": "bpe", "BertForMaskedLM": "wordpiece",
        "T5ForConditionalGeneration": "unigram"}
FAMILY = {"GPT2LMHeadModel": "gpt", "LlamaForCausalLM": "gpt", "BertForMaskedLM": "bert",
          "T5ForConditionalGeneration": "t5"}
CASES = [("GPT2LMHeadModel", {}), ("LlamaForCausalLM", {}), ("BertForMaskedLM", {}),
         ("BertForMaskedLM", {"activation": "gelu"}), ("T5ForConditionalGeneration", {}),
         ("T5ForConditionalGeneration", {"activation": "relu", "tie_word_embeddings": True})]
IDS = ["gpt2", "llama", "bert", "bert-tanh-gelu", "t5-v1.1", "t5-v1.0"]


def assert_close_rel(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-4) -> None:
    err = (ours - theirs).abs().max().item()
    assert err <= rel * theirs.abs().max().item(), f"max abs difference {err} vs max |logit| {theirs.abs().max().item()}"


def padded_batch(lengths: list[int], n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, V, (len(lengths), n), generator=gen)
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("arch,kw", CASES, ids=IDS)
def test_export_parity_and_round_trip(arch, kw, tmp_path, tokenizers):
    args = make_args(arch, **kw)
    model = make_model(arch, args)
    out = tmp_path / "hf"
    export.write_hf_dir(out, arch, args, model.state_dict(), tokenizers[KIND[arch]])
    theirs = getattr(transformers, arch).from_pretrained(out, local_files_only=True).eval()
    assert type(theirs).__name__ == arch
    g = torch.Generator().manual_seed(1)
    ids, mask = padded_batch([S, S - 5, S - 11], S, g)
    valid = mask.bool()
    with torch.no_grad():
        if FAMILY[arch] == "gpt":
            ref, got = theirs(input_ids=ids, attention_mask=mask).logits, model(ids)
        elif arch == "BertForMaskedLM":
            types = (torch.arange(S)[None, :] >= 6).long().expand(3, S)
            ref = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
            got = model(ids, attention_mask=mask, token_type_ids=types)
        else:
            dec, dmask = padded_batch([8, 5, 3], 8, g)
            ref = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask).logits
            got = model(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dmask)
            valid = dmask.bool()
    assert ref.shape == got.shape
    assert_close_rel(got[valid], ref[valid])

    tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    if arch == "BertForMaskedLM":
        assert (tok.cls_token, tok.sep_token, tok.mask_token, tok.pad_token) == ("[CLS]", "[SEP]", "[MASK]", "[PAD]")
    elif arch == "T5ForConditionalGeneration":
        assert (tok.pad_token, tok.eos_token) == ("<pad>", "</s>") and "<extra_id_0>" in tok.all_special_tokens
    else:
        assert tok.eos_token == "<|endoftext|>"

    # import -> export: identical tensors
    fresh = {GPTArgs: GPT, BERTArgs: BERT, T5Args: T5}[type(args)](args)
    hf.load_into(fresh, out, FAMILY[arch], args)
    again = tmp_path / "again"
    export.write_hf_dir(again, arch, args, fresh.state_dict(), tokenizers[KIND[arch]])
    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fake_checkpoint(tmp_path: Path, family: str, args, model, tokenizer: Path) -> Path:
    """A ZeRO-0 checkpoint as the trainer writes it (module in mp_rank_00_model_states.pt)."""
    from dataclasses import asdict

    tag = tmp_path / "run" / "checkpoints" / "step_000007"
    tag.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, tag / "mp_rank_00_model_states.pt")
    (tag / "trainer_state.json").write_text(json.dumps(
        {"step": 7, "family": family, "model_args": asdict(args), "tokenizer": str(tokenizer), "zero_stage": 0}))
    (tag / "COMPLETE").write_text("1\n")
    (tag.parent / "latest").write_text("step_000007")
    return tmp_path / "run"


def test_export_cli_from_a_run_dir_and_misfits(tmp_path, tokenizers, capsys):
    args = make_args("LlamaForCausalLM")
    run = fake_checkpoint(tmp_path, "gpt", args, make_model("LlamaForCausalLM", args), tokenizers["bpe"])
    export.main([str(run), str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((tmp_path / "out" / "pretrain_export.json").read_text())["step"] == 7

    with pytest.raises(SystemExit) as e:  # a LLaMA-style checkpoint asked for as GPT-2
        export.main([str(run / "checkpoints"), str(tmp_path / "o2"), "--arch", "GPT2LMHeadModel"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "GPT2LMHeadModel" in err and "gpt" in err and "position_embedding=rope (needs learned)" in err
    with pytest.raises(CheckpointError, match="BertForMaskedLM holds a bert model, the checkpoint a gpt model"):
        export.export(run, tmp_path / "o3", arch="BertForMaskedLM")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        export.export(tmp_path / "nowhere", tmp_path / "o4")


def test_export_refuses_weights_that_do_not_fit_the_recorded_shape(tmp_path, tokenizers):
    args = make_args("BertForMaskedLM")
    run = fake_checkpoint(tmp_path, "bert", args, make_model("BertForMaskedLM", make_args("BertForMaskedLM", hidden_size=48)),
                          tokenizers["wordpiece"])
    with pytest.raises(CheckpointError, match="do not fit the bert model"):
        export.export(run, tmp_path / "out")


def test_import_refuses_other_architectures_families_and_shapes(tmp_path, tokenizers):
    d = tmp_path / "qwen2"  # (MistralForCausalLM, once the example here, is supported since sliding windows)
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    with pytest.raises(CheckpointError, match="Qwen2ForCausalLM.*cannot be imported; supported: GPT2LMHeadModel"):
        hf.check_compatible(d, "gpt", make_args("LlamaForCausalLM"))

    args = make_args("BertForMaskedLM")
    out = tmp_path / "bert"
    export.write_hf_dir(out, "BertForMaskedLM", args, make_model("BertForMaskedLM", args).state_dict(), tokenizers["wordpiece"])
    with pytest.raises(CheckpointError, match="holds a BertForMaskedLM \\(bert family\\), the config asks for model.family=gpt"):
        hf.check_compatible(out, "gpt", make_args("GPT2LMHeadModel"))
    with pytest.raises(CheckpointError, match="model.hidden_size: config 64, BertForMaskedLM 32"):
        hf.check_compatible(out, "bert", make_args("BertForMaskedLM", hidden_size=64))
    # a model normalised with another epsilon computes something else: refused, not imported silently
    with pytest.raises(CheckpointError, match="model.norm_eps: config 1e-05, BertForMaskedLM 1e-12"):
        hf.check_compatible(out, "bert", make_args("BertForMaskedLM", norm_eps=1e-5))
