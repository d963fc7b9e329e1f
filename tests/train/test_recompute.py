"""Activation recomputation (pretrain/models/recompute.py): full and selective give the loss and gradients of no
recomputation for every family, selective keeps fewer activations than none and full fewer than selective,
both work under tensor parallelism (tp=2, two gloo processes, against the dense model without recomputation),
the hardware FLOPs count what each recomputes, and the config refuses an unknown granularity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pretrain.core.errors import ConfigError
from pretrain.flops import gpt_flops_per_token
from pretrain.models import FAMILIES, NON_SHAPE_FIELDS, TokenizerInfo, build_model
from pretrain.models.bert.model import BERTArgs, bert_flops_per_token
from pretrain.models.gpt.model import GPTArgs
from pretrain.models.t5.model import T5Args, t5_flops_per_token
from tp_harness import run_ranks

V, B, S = 96, 2, 16
MODES = {"none": dict(activation_checkpointing=False),
         "full": dict(activation_checkpointing=True, recompute_granularity="full"),
         "selective": dict(activation_checkpointing=True, recompute_granularity="selective")}


def _args() -> dict[str, object]:
    """Tiny models, dropout 0 (so every mode computes the same numbers); heads divisible by tp=2."""
    return {
        "gpt2": GPTArgs(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                        ffn_hidden_size=128, seq_length=S),
        "llama_gqa": GPTArgs(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                             ffn_hidden_size=64, seq_length=S, position_embedding="rope", normalization="rmsnorm",
                             activation="swiglu", bias=False, tie_word_embeddings=False),
        "bert": BERTArgs(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                         seq_length=S, sop=True, hidden_dropout=0.0, attention_dropout=0.0),
        "t5": T5Args(vocab_size=V, num_layers=2, num_decoder_layers=2, hidden_size=32, num_attention_heads=4,
                     kv_channels=8, ffn_hidden_size=64, seq_length=S, target_length=8, activation="geglu",
                     relative_attention_num_buckets=8, relative_attention_max_distance=16, hidden_dropout=0.0),
    }


def _build(args):
    """The family's build: the model, then activation checkpointing applied to it from outside."""
    torch.manual_seed(1234)
    return build_model(args).train()


def _batch(name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (B, S), generator=g)
    if name in ("gpt2", "llama_gqa"):
        labels = torch.randint(0, V, (B, S), generator=g)
        labels[0, :3] = -100
        return {"input_ids": ids, "labels": labels}
    mask = torch.ones(B, S, dtype=torch.long)
    if name == "bert":
        labels = torch.full((B, S), -100)
        labels[:, 2:12:3] = torch.randint(0, V, (B, 4), generator=g)
        mask[1, -4:] = 0
        types = torch.zeros(B, S, dtype=torch.long)
        types[:, S // 2:] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
                "sop_labels": torch.tensor([0, 1])}
    labels = torch.randint(1, V, (B, 8), generator=g)
    labels[1, -2:] = -100
    mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _run(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """(loss, gradients by name, bytes of the activations autograd saved for the backward during the forward:
    every packed tensor, checkpoints' inputs included, but the parameters and buffers)."""
    saved = [0]
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, saved[0]


NAMES = list(_args())


@pytest.fixture(scope="module")
def dense_runs() -> dict[str, dict[str, tuple]]:
    out = {}
    for name, args in _args().items():
        out[name] = {mode: _run(_build(dataclasses.replace(args, **kw)), _batch(name)) for mode, kw in MODES.items()}
    return out


@pytest.mark.parametrize("name", NAMES)
def test_full_and_selective_give_the_same_loss_and_gradients(dense_runs, name):
    loss0, grads0, _ = dense_runs[name]["none"]
    assert torch.isfinite(loss0)
    for mode in ("full", "selective"):
        loss, grads, _ = dense_runs[name][mode]
        assert torch.allclose(loss, loss0, rtol=1e-6, atol=1e-6), (mode, loss, loss0)
        assert grads.keys() == grads0.keys()
        for n, g in grads.items():
            assert torch.allclose(g, grads0[n], rtol=1e-6, atol=1e-6), (mode, n, (g - grads0[n]).abs().max())


@pytest.mark.parametrize("name", NAMES)
def test_selective_saves_less_than_none_and_full_less_than_selective(dense_runs, name):
    none, full, selective = (dense_runs[name][m][2] for m in ("none", "full", "selective"))
    assert full < selective < none, (full, selective, none)


@pytest.mark.parametrize("name", NAMES)
def test_what_each_granularity_checkpoints(monkeypatch, name):
    """full: one checkpoint per layer; selective: one per attention module (self and cross), on its core only;
    nothing in eval mode or without activation_checkpointing."""
    import pretrain.models.recompute as recompute

    regions = []

    def spy(fn, *inputs, **kw):
        regions.append(fn)
        return torch.utils.checkpoint.checkpoint(fn, *inputs, **kw)

    monkeypatch.setattr(recompute, "checkpoint", spy)
    counts = {}
    for mode, kw in MODES.items():
        model = _build(dataclasses.replace(_args()[name], **kw))
        layers = [m for n, m in model.named_modules() if n.rsplit(".", 2)[-2:-1] == ["layers"]]
        attention = [m for m in model.modules() if hasattr(m, "core")]
        for train in (False, True):
            regions.clear()
            model.train(train)(**_batch(name)).backward()
            counts[mode, train] = list(regions)
        if mode == "full":  # the layers' own forward, each one checkpoint
            assert [fn.__self__ for fn in counts[mode, True]] == layers
            assert all(fn.__func__ is type(fn.__self__).forward for fn in counts[mode, True])
        if mode == "selective":
            assert [fn.__self__ for fn in counts[mode, True]] == attention
            assert all(fn.__func__ is type(fn.__self__).core for fn in counts[mode, True])
    assert not any(counts[mode, False] for mode in MODES) and not counts["none", True]
    assert len(attention) > len(layers) if name == "t5" else len(attention) == len(layers)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_dropout_masks_are_replayed_by_the_recomputation(name):
    """With dropout on, the recomputed forward draws the original masks (checkpoint restores the RNG)."""
    args = dataclasses.replace(_args()[name], hidden_dropout=0.2, attention_dropout=0.2)
    runs = {}
    for mode, kw in MODES.items():
        model = _build(dataclasses.replace(args, **kw))
        torch.manual_seed(5)
        runs[mode] = _run(model, _batch(name))
    loss0, grads0, _ = runs["none"]
    for mode in ("full", "selective"):
        loss, grads, _ = runs[mode]
        assert torch.allclose(loss, loss0, rtol=1e-6, atol=1e-6), mode
        for n, g in grads.items():
            assert torch.allclose(g, grads0[n], rtol=1e-6, atol=1e-6), (mode, n)


# ------------------------------------------------------------------------------------------------ FLOPs


def test_hardware_flops_count_what_is_recomputed():
    L, h, s = 2, 64, 32
    gpt = GPTArgs(vocab_size=1000, num_layers=L, hidden_size=h, num_attention_heads=4, num_key_value_heads=2,
                  ffn_hidden_size=128, seq_length=s, position_embedding="rope", normalization="rmsnorm",
                  activation="swiglu", bias=False, tie_word_embeddings=False)
    layer = 2 * h * h + 2 * h * 32 + 3 * h * 128 + 2 * h
    model = 6 * L * layer + 6 * h * 1000 + 12 * L * h * s
    core = 4 * L * h * s  # 2 matmuls (q k^T, p v) x 2 FLOPs x seq x hidden, per layer and token
    for kw, extra in ((MODES["none"], 0), (MODES["full"], 2 * L * layer + core), (MODES["selective"], core),
                      (dict(activation_checkpointing=False, recompute_granularity="selective"), 0)):
        f = gpt_flops_per_token(dataclasses.replace(gpt, **kw))
        assert f["model"] == model and f["hardware"] == model + extra, kw

    bert = BERTArgs(vocab_size=1000, num_layers=L, hidden_size=h, num_attention_heads=4, ffn_hidden_size=256,
                    seq_length=s)
    blayers = L * (4 * (h * h + h) + 2 * h * 256 + 256 + h + 4 * h)
    base = bert_flops_per_token(bert)["model"]
    for kw, extra in ((MODES["none"], 0), (MODES["full"], 2 * blayers + core), (MODES["selective"], core)):
        f = bert_flops_per_token(dataclasses.replace(bert, **kw))
        assert f["model"] == base and f["hardware"] == pytest.approx(base + extra), kw

    t5 = T5Args(vocab_size=1000, num_layers=2, num_decoder_layers=3, hidden_size=64, num_attention_heads=4,
                kv_channels=8, ffn_hidden_size=128, seq_length=40, target_length=10, activation="relu")
    S_, T_, inner = 40, 10, 32
    cores = 4 * inner * (2 * S_ * S_ + 3 * T_ * T_ + 3 * T_ * S_) / (S_ + T_)  # encoder self, decoder self, cross
    base = t5_flops_per_token(t5)["model"]
    sel = t5_flops_per_token(dataclasses.replace(t5, **MODES["selective"]))["hardware"]
    full = t5_flops_per_token(dataclasses.replace(t5, **MODES["full"]))["hardware"]
    assert sel == pytest.approx(base + cores)
    assert full > sel and full == pytest.approx(base + base / 3 - 6 * T_ * 64 * 1000 / 3 / (S_ + T_))


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("model", ["gpt/tiny", "gpt/llama_tiny", "bert/tiny", "t5/tiny"])
def test_config_reaches_the_args_of_every_family(compose_cfg, model):
    cfg = compose_cfg(f"model={model}", "model.activation_checkpointing=true", "model.recompute_granularity=selective")
    family = FAMILIES[cfg.model.family]
    args = family.resolve_args(cfg.model, TokenizerInfo(None, 1000, 0))
    assert args.activation_checkpointing and args.recompute_granularity == "selective"
    assert type(args.recompute_granularity) is str  # plain, for the JSON of the checkpoint's model_args
    assert family.resolve_args(compose_cfg(f"model={model}").model, TokenizerInfo(None, 1000, 0)).recompute_granularity == "full"
    assert "recompute_granularity" in NON_SHAPE_FIELDS  # a checkpoint resumes under either granularity


def test_invalid_granularity_is_refused_naming_the_key(compose_cfg):
    with pytest.raises(ConfigCompositionException) as e:  # the typed schema, at compose time
        compose_cfg("model.recompute_granularity=partial")
    text = str(e.value) + str(e.value.__cause__)
    assert "model.recompute_granularity" in text and "full" in text and "selective" in text
    # a config that bypassed the schema is refused when the family resolves it
    for model in ("gpt/tiny", "bert/tiny", "t5/tiny"):
        raw = OmegaConf.to_container(compose_cfg(f"model={model}").model)
        raw["recompute_granularity"] = "partial"
        with pytest.raises(ConfigError, match=r"model.recompute_granularity='partial'; expected one of full, selective"):
            FAMILIES[raw["family"]].resolve_args(OmegaConf.create(raw), TokenizerInfo(None, 1000, 0))


# ------------------------------------------------------------------------------------------------ tensor parallel


def _tp_checks(rank: int, world: int) -> dict:
    from pretrain.parallel.parallelize import parallelize
    from pretrain.parallel.tensor import TP_COMM, gather_tensor_parallel, is_tensor_parallel

    group = None  # the default group: both ranks
    out: dict = {}
    for name, args in _args().items():
        batch = _batch(name)
        loss_d, grads_d, _ = _run(_build(args), batch)  # dense, no recomputation
        res = {}
        for mode, kw in MODES.items():
            model = parallelize(_build(dataclasses.replace(args, **kw)), group)
            TP_COMM.take()
            loss, grads, _ = _run(model, batch)
            comm = TP_COMM.take()
            params = dict(model.named_parameters())
            worst = 0.0
            for n, g in grads.items():
                if is_tensor_parallel(params[n]):
                    g = gather_tensor_parallel(g, params[n].partition_dim, group)
                worst = max(worst, float((g - grads_d[n]).abs().max() / grads_d[n].abs().max().clamp_min(1e-3)))
            res[mode] = {"loss": abs(float(loss) - float(loss_d)) / abs(float(loss_d)), "grad": worst,
                         "loss_value": float(loss), "all_reduce": comm.get("all_reduce", 0)}
        out[name] = res
    return out


@pytest.fixture(scope="module")
def tp_results() -> list[dict]:
    return run_ranks(_tp_checks, 2)


@pytest.mark.parametrize("name", NAMES)
def test_tp2_full_and_selective_match_the_dense_model(tp_results, name):
    for r in tp_results:
        for mode in ("none", "full", "selective"):
            m = r[name][mode]
            assert m["loss"] < 1e-5 and m["grad"] < 1e-5, (mode, m)
        # the selective region holds no collective: it moves exactly the bytes of no recomputation; full
        # repeats the forward all-reduces of each layer in the backward
        comm = {mode: r[name][mode]["all_reduce"] for mode in MODES}
        assert comm["selective"] == comm["none"] < comm["full"], comm
    assert tp_results[0][name]["selective"]["loss_value"] == tp_results[1][name]["selective"]["loss_value"]
