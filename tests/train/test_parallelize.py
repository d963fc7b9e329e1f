"""parallelize() at tp=2 (two gloo processes) against the unsharded model, for every family: the initial
weights are the unsharded model's, and the loss and every gradient (shards gathered) agree within 1e-5
relative in fp32; DeepSpeed's grad norm over the shards counts each parameter once, in its utility and
through its engine with our grid as ``mpu``."""

from __future__ import annotations

import math

import pytest
import torch

from tp_harness import run_ranks


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1e-30))


def _models():
    from pretrain.models import build_model
    from pretrain.models.bert.model import BERT, BERTArgs
    from pretrain.models.gpt.model import GPT, GPTArgs
    from pretrain.models.t5.model import T5, T5Args

    V, s = 96, 16
    return {
        "gpt2": lambda: GPT(GPTArgs(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4,
                                    num_key_value_heads=4, ffn_hidden_size=128, seq_length=s)),
        "llama_gqa_ckpt": lambda: build_model(GPTArgs(  # activation checkpointing is applied by the build
            vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            ffn_hidden_size=64, seq_length=s, position_embedding="rope", normalization="rmsnorm",
            activation="swiglu", bias=False, tie_word_embeddings=False, activation_checkpointing=True)),
        # ALiBi (each rank its own heads' slopes), a sliding window and packed-document masking (docs/attention.md)
        "gpt_alibi_window_docs": lambda: GPT(GPTArgs(
            vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
            ffn_hidden_size=128, seq_length=s, position_embedding="alibi", embedding_norm=True, sliding_window=5)),
        "bert_sop": lambda: BERT(BERTArgs(vocab_size=V, num_layers=2, hidden_size=32, num_attention_heads=4,
                                          ffn_hidden_size=64, seq_length=s, sop=True, hidden_dropout=0.0,
                                          attention_dropout=0.0)),
        "t5_v1_1": lambda: T5(T5Args(vocab_size=V, num_layers=2, num_decoder_layers=2, hidden_size=32,
                                     num_attention_heads=4, kv_channels=8, ffn_hidden_size=64, seq_length=s,
                                     target_length=8, activation="geglu", tie_word_embeddings=False,
                                     relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                     hidden_dropout=0.0)),
        "t5_v1_0_tied": lambda: T5(T5Args(vocab_size=V, num_layers=2, num_decoder_layers=1, hidden_size=32,
                                          num_attention_heads=4, kv_channels=6, ffn_hidden_size=64, seq_length=s,
                                          target_length=8, activation="relu", tie_word_embeddings=True,
                                          relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                          hidden_dropout=0.0)),
    }


def _batch(name: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    V, b, s = 96, 2, 16
    ids = torch.randint(0, V, (b, s), generator=g)
    if name.startswith("gpt") or name.startswith("llama"):
        labels = torch.randint(0, V, (b, s), generator=g)
        labels[0, :3] = -100
        if name.endswith("_docs"):  # packed documents: token 0 plays the EOD
            from pretrain.data.documents import document_ids

            ids[0, 4], ids[0, 9], ids[1, 11] = 0, 0, 0
            seg, pos = document_ids(ids.numpy(), 0)
            return {"input_ids": ids, "labels": labels, "segment_ids": torch.from_numpy(seg),
                    "position_ids": torch.from_numpy(pos)}
        return {"input_ids": ids, "labels": labels}
    if name.startswith("bert"):
        labels = torch.full((b, s), -100)
        labels[:, 2:12:3] = torch.randint(0, V, (b, 4), generator=g)
        mask = torch.ones(b, s, dtype=torch.long)
        mask[1, -4:] = 0
        types = torch.zeros(b, s, dtype=torch.long)
        types[:, s // 2:] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels,
                "sop_labels": torch.tensor([0, 1])}
    labels = torch.randint(1, V, (b, 8), generator=g)
    labels[1, -2:] = -100
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _checks(rank: int, world: int) -> dict:
    import deepspeed
    from deepspeed.runtime.utils import clip_grad_norm_

    from pretrain.core.errors import ConfigError
    from pretrain.models.gpt.model import GPT, GPTArgs
    from pretrain.parallel.parallelize import full_state_dict, load_full_state_dict, parallelize
    from pretrain.parallel.tensor import TP_COMM, gather_tensor_parallel, is_tensor_parallel
    from pretrain.parallel.topology import ParallelGrid

    grid = ParallelGrid(tensor_parallel_size=2)
    g = grid.get_tensor_model_parallel_group()
    out: dict = {}

    for name, build in _models().items():
        torch.manual_seed(1234)
        dense = build()
        torch.manual_seed(1234)
        tp = parallelize(build(), g)
        batch = _batch(name)
        full = full_state_dict(tp, g)
        ref = dense.state_dict()
        init = max(float((full[k] - ref[k]).abs().max()) for k in ref)
        TP_COMM.take()
        loss_d, loss_t = dense(**batch), tp(**batch)
        loss_d.backward()
        loss_t.backward()
        comm = TP_COMM.take()
        dense_grads = dict(dense.named_parameters())
        grads = {}
        for pname, p in tp.named_parameters():
            gfull = gather_tensor_parallel(p.grad, p.partition_dim, g) if is_tensor_parallel(p) else p.grad
            ref_grad = dense_grads[pname].grad
            grads[pname] = (float((gfull - ref_grad).abs().max()), float(ref_grad.abs().max()))
        ties = [(a, b) for a, b in (("lm_head.weight", "embed_tokens.weight"), ("lm_head.weight", "shared.weight"))
                if a in tp.state_dict() and b in tp.state_dict()]
        out[name] = {
            "keys_equal": sorted(full) == sorted(ref), "init": init,
            "loss": rel(loss_t, loss_d), "loss_value": float(loss_t), "grads": grads,
            "same_param_names": [n for n, _ in tp.named_parameters()] == [n for n, _ in dense.named_parameters()],
            "local_params": sum(p.numel() for p in tp.parameters()),
            "dense_params": sum(p.numel() for p in dense.parameters()),
            "tied": [tp.get_parameter(a) is tp.get_parameter(b) for a, b in ties]
            if getattr(tp.args, "tie_word_embeddings", True) else None,
            "comm": comm,
        }

    # --- DeepSpeed's grad norm over shards counts each parameter once (GPT-2: tied, biases, norms)
    torch.manual_seed(99)
    args = GPTArgs(vocab_size=96, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                   ffn_hidden_size=128, seq_length=16)
    dense = GPT(args)
    torch.manual_seed(99)
    tp = parallelize(GPT(args), g)
    batch = _batch("gpt2")
    dense(**batch).backward()
    tp(**batch).backward()
    dense_norm = float(torch.nn.utils.get_total_norm([p.grad for p in dense.parameters()]))
    ds_norm = float(clip_grad_norm_(list(tp.parameters()), max_norm=1e9, mpu=grid))  # ZeRO-0 / fp32 path
    naive = float(torch.stack([p.grad.norm() for p in tp.parameters()]).norm())  # per-rank, no reduction
    out["norm"] = {"dense": dense_norm, "deepspeed_utility": ds_norm, "local_only": naive}

    # --- the same through DeepSpeed's engine (ZeRO-1, clipping), our grid as mpu: one step equals dense AdamW
    torch.manual_seed(99)
    dense = GPT(args)
    torch.manual_seed(99)
    tp = parallelize(GPT(args), g)
    cfg = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
           "gradient_clipping": 0.05, "zero_optimization": {"stage": 1}, "steps_per_print": 10**9,
           "zero_allow_untested_optimizer": True}
    full_state_dict_before = full_state_dict(tp, g)
    # Adam's first step is lr * g / (|g| + eps): with the default eps a sign function, which would turn rounding
    # noise on near-zero gradients (the key bias's is analytically zero) into +-lr; eps=1e-3 keeps it smooth
    opt_t = torch.optim.AdamW(tp.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-3)
    engine, *_ = deepspeed.initialize(model=tp, optimizer=opt_t, config=cfg, mpu=grid)
    loss_t = engine(**batch)
    engine.backward(loss_t)
    engine.step()
    opt_d = torch.optim.AdamW(dense.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-3)
    loss_d = dense(**batch)
    loss_d.backward()
    dense_norm = float(torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.05))
    opt_d.step()
    after = full_state_dict(tp, g)
    top = max(float(v.abs().max()) for v in dense.state_dict().values())
    out["engine"] = {
        "dp_world_size": engine.dp_world_size, "mp_world_size": engine.mp_world_size,
        "norm": float(engine.get_global_grad_norm()), "dense_norm": dense_norm,
        # per tensor, relative to its scale floored at 1e-3 of the largest weight (the key bias stays ~0)
        "params_after_step": max(float((after[k] - v).abs().max()) / max(float(v.abs().max()), 1e-3 * top)
                                 for k, v in dense.state_dict().items()),
        "moved": rel(after["layers.0.mlp.up_proj.weight"], full_state_dict_before["layers.0.mlp.up_proj.weight"]),
        "loss": rel(loss_t, loss_d),
    }

    # --- an unshardable model is refused with the config key named; a full state dict loads back into shards
    try:
        parallelize(GPT(GPTArgs(vocab_size=96, num_layers=1, hidden_size=24, num_attention_heads=3,
                                num_key_value_heads=3, ffn_hidden_size=48, seq_length=8)), g)
        out["refused"] = None
    except ConfigError as e:
        out["refused"] = str(e)
    torch.manual_seed(5)
    other = GPT(args)
    load_full_state_dict(tp, other.state_dict(), g)
    back = full_state_dict(tp, g)
    out["reload"] = max(float((back[k] - v).abs().max()) for k, v in other.state_dict().items())
    try:
        parallelize(tp, g)
        out["twice"] = None
    except ValueError as e:
        out["twice"] = str(e)
    return out


MODELS = ["gpt2", "llama_gqa_ckpt", "gpt_alibi_window_docs", "bert_sop", "t5_v1_1", "t5_v1_0_tied"]


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_ranks(_checks, 2)


@pytest.mark.parametrize("model", MODELS)
def test_init_is_the_unsharded_init(results, model):
    for r in results:
        assert r[model]["keys_equal"] and r[model]["same_param_names"]
        assert r[model]["init"] == 0.0


@pytest.mark.parametrize("model", MODELS)
def test_loss_and_gradients_match_unsharded(results, model):
    for r in results:
        m = r[model]
        assert math.isfinite(m["loss_value"])
        assert m["loss"] < 1e-5, m["loss"]
        # Relative to the gradient's own scale, floored at 1e-3 of the model's largest gradient: the key bias
        # gets an analytically zero gradient (softmax ignores a constant added to every score of a row), so
        # both models hold rounding noise there.
        floor = 1e-3 * max(ref for _, ref in m["grads"].values())
        errs = {k: diff / max(ref, floor) for k, (diff, ref) in m["grads"].items()}
        worst = max(errs.items(), key=lambda kv: kv[1])
        assert worst[1] < 1e-5, worst
    # every rank computes the same loss
    assert results[0][model]["loss_value"] == results[1][model]["loss_value"]


@pytest.mark.parametrize("model", MODELS)
def test_each_rank_holds_a_shard(results, model):
    m = results[0][model]
    # attention, MLP and vocabulary weights halve; norms, positions, BERT's head transform stay whole
    assert 0.5 * m["dense_params"] < m["local_params"] < 0.6 * m["dense_params"], (m["local_params"], m["dense_params"])
    assert m["comm"].get("all_reduce", 0) > 0


@pytest.mark.parametrize("model", ["gpt2", "bert_sop", "t5_v1_0_tied"])
def test_tied_embeddings_stay_tied_on_each_shard(results, model):
    for r in results:
        assert r[model]["tied"] == [True]


def test_deepspeed_grad_norm_counts_shards_once(results):
    for r in results:
        n = r["norm"]
        assert abs(n["deepspeed_utility"] - n["dense"]) / n["dense"] < 1e-5, n
        # without DeepSpeed's reduction a rank sees only part of the norm: the check can fail
        assert n["local_only"] < 0.99 * n["dense"], n


def test_deepspeed_engine_with_grid_as_mpu(results):
    for r in results:
        e = r["engine"]
        assert e["dp_world_size"] == 1 and e["mp_world_size"] == 2
        assert abs(e["norm"] - e["dense_norm"]) / e["dense_norm"] < 1e-5, e
        assert e["loss"] < 1e-5
        assert e["params_after_step"] < 1e-5, e  # clipped AdamW step on shards == on the unsharded model
        assert e["moved"] > 0.01, e  # ... and the step did change the weights (by ~3%)


def test_unshardable_heads_refused(results):
    msg = results[0]["refused"]
    assert "model.num_attention_heads=3 is not divisible by parallel.tensor_model_parallel_size=2" in msg


def test_parallelizing_twice_is_refused(results):
    assert "tensor-parallel already" in results[0]["twice"]


def test_full_state_dict_round_trip(results):
    for r in results:
        assert r["reload"] == 0.0


def test_group_of_one_leaves_the_model_alone():
    from pretrain.models.gpt.model import GPT, GPTArgs
    from pretrain.parallel.parallelize import parallelize

    model = GPT(GPTArgs(vocab_size=64, num_layers=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
                        ffn_hidden_size=32, seq_length=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert parallelize(model, None) is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.lm_head) is torch.nn.Linear and model.loss_fn is torch.nn.functional.cross_entropy


def _dropout_checks(rank: int, world: int) -> dict:
    from pretrain.models import build_model
    from pretrain.models.gpt.model import GPTArgs
    from pretrain.parallel.parallelize import parallelize
    from pretrain.parallel.tensor import gather_tensor_parallel, is_tensor_parallel

    out = {}
    for mode in ("none", "full", "selective"):
        torch.manual_seed(0)
        model = build_model(GPTArgs(vocab_size=96, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                            ffn_hidden_size=64, seq_length=16, attention_dropout=0.5, hidden_dropout=0.1,
                            activation_checkpointing=mode != "none", recompute_granularity=mode if mode != "none" else "full"))
        parallelize(model, None)
        model.train()
        torch.manual_seed(1)  # the same dropout stream on both ranks, as the trainer's dropout_seed gives a TP group
        loss = model(**_batch("gpt2"))
        loss.backward()
        out[mode] = (loss.detach(), {n: gather_tensor_parallel(p.grad, p.partition_dim, None) if is_tensor_parallel(p)
                                      else p.grad.clone() for n, p in model.named_parameters()})
    # the attention core of one layer on identical local inputs: each rank draws its own masks
    attn = model.layers[0].self_attn
    q = torch.ones(2, 16, 16)
    torch.manual_seed(2)
    out["core"] = attn.core(q, q, q, None, attn.spec(), 0.5)
    return out


def test_attention_dropout_masks_differ_per_tensor_rank_and_replay_under_recompute():
    r0, r1 = run_ranks(_dropout_checks, 2)
    # masks of different heads are independent, as in one process (same inputs, same global stream)
    assert not torch.equal(r0["core"], r1["core"])
    for r in (r0, r1):  # recomputation replays the masks: same loss and gradients with and without it
        for mode in ("full", "selective"):
            assert torch.equal(r[mode][0], r["none"][0])
            for name, g in r["none"][1].items():
                torch.testing.assert_close(r[mode][1][name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert torch.equal(r0["none"][0], r1["none"][0])  # the loss is the group's, identical on both ranks


def _sequence_parallel_checks(rank: int, world: int) -> dict:
    from pretrain.models import build_model
    from pretrain.models.gpt.model import GPTArgs
    from pretrain.parallel.parallelize import parallelize
    from pretrain.parallel.tensor import TP_COMM, gather_tensor_parallel, is_tensor_parallel

    out = {}
    for name, kw in {"gpt2": {}, "llama_gqa_ckpt": dict(
            num_key_value_heads=2, position_embedding="rope", normalization="rmsnorm", activation="swiglu",
            bias=False, tie_word_embeddings=False, activation_checkpointing=True, recompute_granularity="selective"),
            "llama_window_docs": dict(num_key_value_heads=2, position_embedding="rope", normalization="rmsnorm",
                                      activation="swiglu", bias=False, sliding_window=6)}.items():
        def build():
            torch.manual_seed(0)
            return build_model(GPTArgs(**{**dict(vocab_size=96, num_layers=2, hidden_size=32, num_attention_heads=4,
                                         num_key_value_heads=4, ffn_hidden_size=64, seq_length=16), **kw}))

        batch = _batch("gpt2_docs" if name.endswith("_docs") else "gpt2")
        dense = build()
        dense_loss = dense(**batch)
        dense_loss.backward()
        sp = parallelize(build(), None, sequence_parallel=True)
        TP_COMM.take()
        loss = sp(**batch)
        loss.backward()
        comm = TP_COMM.take()
        grads = {n: (gather_tensor_parallel(p.grad, p.partition_dim, None) if is_tensor_parallel(p) else p.grad)
                 for n, p in sp.named_parameters()}
        dense_grads = dict(dense.named_parameters())
        # k's bias has a ~0 gradient (softmax ignores a shift shared by every key): relative to the scale + 1e-4
        err = {n: float((g - dense_grads[n].grad).abs().max() / (dense_grads[n].grad.abs().max() + 1e-4))
               for n, g in grads.items()}
        out[name] = {"loss": rel(loss, dense_loss), "grad": max(err.values()), "worst": max(err, key=err.get),
                     "comm": comm}
    return out


def test_sequence_parallel_matches_the_dense_model():
    """tp=2 with sequence parallelism: norms, dropout and residuals on half the sequence each, the same loss
    and gradients as the unsharded model (replicated parameters' gradients summed over the ranks)."""
    for result in run_ranks(_sequence_parallel_checks, 2):
        for name, r in result.items():
            assert r["loss"] < 1e-6 and r["grad"] < 1e-5, (name, r)
            # regions entered by all-gathers and left by reduce-scatters along the sequence
            assert r["comm"]["all_gather"] > 0 and r["comm"]["reduce_scatter"] > 0, (name, r["comm"])
