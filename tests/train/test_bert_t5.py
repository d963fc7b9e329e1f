"""BERT and T5 on their own: attention directions, padding, losses, parameter and FLOP counts by hand,
T5's position buckets against Hugging Face's, the presets' published sizes, and the families' config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from pretrain.config import ModelConfig
from pretrain.core.errors import ConfigError, DataError
from pretrain.models import FAMILIES, TokenizerInfo
from pretrain.models.bert.model import BERT, BERTArgs, bert_flops_per_token
from pretrain.models.bert.model import count_parameters as bert_params
from pretrain.models.t5.model import T5, T5Args, relative_position_bucket, t5_flops_per_token
from pretrain.models.t5.model import count_parameters as t5_params


def bert_model(**kw) -> BERT:
    torch.manual_seed(0)
    args = BERTArgs(**{**dict(vocab_size=97, num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                              seq_length=16, hidden_dropout=0.0, attention_dropout=0.0), **kw})
    return BERT(args).eval()


def t5_model(**kw) -> T5:
    torch.manual_seed(0)
    args = T5Args(**{**dict(vocab_size=97, num_layers=2, num_decoder_layers=2, hidden_size=32, num_attention_heads=4,
                            kv_channels=8, ffn_hidden_size=64, seq_length=16, target_length=8, hidden_dropout=0.0), **kw})
    return T5(args).eval()


def test_bert_is_bidirectional_ignores_padding_and_counts_match():
    model = bert_model(sop=True)
    x = torch.randint(5, 97, (2, 16))
    logits = model(x)
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % 97
    assert not torch.allclose(model(y)[:, :12], logits[:, :12])  # earlier positions see later tokens
    mask = torch.ones_like(x)
    mask[:, 12:] = 0
    torch.testing.assert_close(model(x, attention_mask=mask)[:, :12], model(y, attention_mask=mask)[:, :12])
    assert bert_params(model.args)["total"] == sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight


def test_bert_loss_is_mlm_over_masked_positions_plus_sop():
    model = bert_model(sop=True)
    x = torch.randint(5, 97, (2, 16))
    labels = torch.full_like(x, -100)
    labels[:, [2, 7]] = x[:, [2, 7]]
    logits = model(x)
    mlm = F.cross_entropy(logits[:, [2, 7]].reshape(-1, 97), x[:, [2, 7]].reshape(-1))
    pooled = torch.tanh(model.pooler(model.encode(x)[:, 0]))
    sop = F.cross_entropy(model.sop_head(pooled), torch.tensor([0, 1]))
    assert model(x, labels=labels).item() == pytest.approx(mlm.item(), rel=1e-5)
    assert model(x, labels=labels, sop_labels=torch.tensor([0, 1])).item() == pytest.approx((mlm + sop).item(), rel=1e-5)


def test_t5_decoder_is_causal_encoder_sees_everything_and_padding_is_ignored():
    model = t5_model()
    x, d = torch.randint(3, 97, (2, 16)), torch.randint(3, 97, (2, 8))
    out = model(x, decoder_input_ids=d)
    d2 = d.clone()
    d2[:, 5:] = (d2[:, 5:] + 1) % 97
    torch.testing.assert_close(model(x, decoder_input_ids=d2)[:, :5], out[:, :5])
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % 97
    assert not torch.allclose(model(x2, decoder_input_ids=d)[:, 0], out[:, 0])  # cross-attention sees it all
    mask = torch.ones_like(x)
    mask[:, 10:] = 0
    torch.testing.assert_close(model(x, attention_mask=mask, decoder_input_ids=d),
                               model(x2, attention_mask=mask, decoder_input_ids=d))
    labels = d.clone()
    labels[1, 6:] = -100
    loss = model(x, labels=labels)
    ref = F.cross_entropy(model(x, decoder_input_ids=model.shift_right(labels)).reshape(-1, 97), labels.reshape(-1))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert model.shift_right(labels)[0, 0] == 0 and (model.shift_right(labels)[1, 7:] == 0).all()


@pytest.mark.parametrize("kw", [dict(activation="geglu"), dict(activation="relu", tie_word_embeddings=True)],
                         ids=["v1.1", "v1.0"])
def test_t5_parameter_count_and_init(kw):
    model = t5_model(**kw)
    assert t5_params(model.args)["total"] == sum(p.numel() for p in model.parameters())
    big = T5(T5Args(vocab_size=500, num_layers=1, num_decoder_layers=1, hidden_size=256, num_attention_heads=4,
                    kv_channels=64, ffn_hidden_size=512, seq_length=8, target_length=4, **kw))
    assert big.encoder.layers[0].self_attn.q.weight.std().item() == pytest.approx((256 * 64) ** -0.5, rel=0.05)
    assert big.encoder.layers[0].mlp.wo.weight.std().item() == pytest.approx(512**-0.5, rel=0.05)
    assert big.shared.weight.std().item() == pytest.approx(1.0, rel=0.05)


def test_relative_position_buckets_are_t5s():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        ours = relative_position_bucket(rel, bidirectional, 32, 128)
        theirs = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=32, max_distance=128)
        assert torch.equal(ours, theirs)


def test_flops_formulas_by_hand():
    b = BERTArgs(vocab_size=1000, num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256, seq_length=32)
    layer = 4 * (64 * 64 + 64) + 2 * 64 * 256 + 256 + 64 + 4 * 64  # q,k,v,o + MLP + two LayerNorms
    assert bert_flops_per_token(b)["model"] == pytest.approx(
        6 * 2 * layer + 6 * 0.15 * (64 * 64 + 64 * 1000) + 12 * 2 * 64 * 32)
    t = T5Args(vocab_size=1000, num_layers=2, num_decoder_layers=3, hidden_size=64, num_attention_heads=4,
               kv_channels=8, ffn_hidden_size=128, seq_length=40, target_length=10, activation="relu")
    S, T, inner = 40, 10, 32
    enc_layer = 4 * 64 * inner + 2 * 64 * 128 + 2 * 64
    dec_layer = 8 * 64 * inner + 2 * 64 * 128 + 3 * 64
    cross_kv = 2 * 64 * inner
    total = (6 * S * 2 * enc_layer + 6 * T * 3 * (dec_layer - cross_kv) + 6 * S * 3 * cross_kv + 6 * T * 64 * 1000
             + 12 * inner * (2 * S * S + 3 * T * T + 3 * T * S))
    f = t5_flops_per_token(t)
    assert f["model"] == pytest.approx(total / (S + T)) and f["hardware"] == f["model"]
    t.activation_checkpointing = True
    assert t5_flops_per_token(t)["hardware"] > f["model"]


def test_presets_match_the_published_sizes(compose_cfg):
    # BERT with its 30522 WordPiece vocabulary; T5 with 32100 pieces padded to 32128 (counts as in the papers)
    expected = {"bert/base": (30522, 110e6), "bert/large": (30522, 335e6), "t5/small": (32100, 60.5e6),
                "t5/base": (32100, 223e6), "t5/large": (32100, 738e6), "t5/v1_1_small": (32100, 77e6),
                "t5/v1_1_base": (32100, 248e6), "t5/v1_1_large": (32100, 783e6)}
    for preset, (vocab, n) in expected.items():
        m = compose_cfg(f"model={preset}").model
        family = FAMILIES[m.family]
        total = family.num_parameters(family.resolve_args(m, TokenizerInfo(None, vocab, 0)))
        assert abs(total - n) / n < 0.03, (preset, total)
    for name in ("bert_tiny", "t5_tiny", "bert_base", "t5_base"):
        cfg = compose_cfg(f"experiment={name}", "run_dir=/tmp/x")
        assert cfg.model.family == name.split("_")[0]


def model_cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), kw)


def test_family_config_errors_name_the_key():
    bert, t5, gpt = FAMILIES["bert"], FAMILIES["t5"], FAMILIES["gpt"]
    tok = TokenizerInfo(None, 1000, 0)
    with pytest.raises(ConfigError, match="model.position_embedding=rope \\(BERT: learned\\)"):
        bert.resolve_args(model_cfg(family="bert", position_embedding="rope", norm_eps=1e-12), tok)
    with pytest.raises(ConfigError, match="model.mlm_probability=1.5"):
        bert.resolve_args(model_cfg(family="bert", activation="gelu_exact", mlm_probability=1.5), tok)
    good_t5 = dict(family="t5", position_embedding="relative", normalization="rmsnorm", activation="geglu", bias=False)
    with pytest.raises(ConfigError, match="model.target_length=5 is shorter than the 14"):
        t5.resolve_args(model_cfg(**good_t5, seq_length=64, target_length=5), tok)
    with pytest.raises(ConfigError, match="model.activation=swiglu \\(T5"):
        t5.resolve_args(model_cfg(**{**good_t5, "activation": "swiglu"}), tok)
    with pytest.raises(ConfigError, match="model.family=gpt takes"):
        gpt.resolve_args(model_cfg(position_embedding="relative"), tok)


def test_tokenizer_without_the_family_tokens_is_refused(tmp_path):
    from pretrain.core.tokenizer import TokenizerSpec, save_tokenizer, train_tokenizer

    texts = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog."] * 20
    path = tmp_path / "tokenizer.json"
    save_tokenizer(train_tokenizer(TokenizerSpec(kind="bpe", vocab_size=300), lambda: iter(texts)), path)
    tok = TokenizerInfo.load(path, 300, 0)
    with pytest.raises(DataError, match=r"\[CLS\], \[SEP\], \[MASK\], \[PAD\]"):
        FAMILIES["bert"].resolve_args(model_cfg(family="bert", activation="gelu_exact"), tok)
    with pytest.raises(DataError, match="<pad>, </s>"):
        FAMILIES["t5"].resolve_args(model_cfg(family="t5", position_embedding="relative", normalization="rmsnorm",
                                              activation="geglu", bias=False), tok)
