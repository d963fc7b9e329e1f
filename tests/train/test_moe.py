"""The mixture-of-experts block (pretrain/models/gpt/moe.py): routing and dispatch against references that loop
over the experts (ours and Hugging Face's Mixtral block), ties, capacity dropping, the auxiliary losses by hand,
the statistics, the config checks and the layout checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import structured_cfg as cfg
from pretrain.core.errors import ConfigError
from pretrain.models.gpt.config import GPTArgs, count_parameters
from pretrain.models.gpt.model import GPT
from pretrain.models.gpt.moe import MoE, capacity, keep_mask, load_balancing_loss, route, take_moe_stats, z_loss
from pretrain.parallel.validate import validate_parallel

ARGS = GPTArgs(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
               ffn_hidden_size=64, seq_length=16, position_embedding="rope", normalization="rmsnorm",
               activation="swiglu", bias=False, tie_word_embeddings=False, num_experts=4, moe_ffn_hidden_size=48)


def block(swiglu=True, k=2, cf=None, E=4, h=16, f=24, seed=0):
    torch.manual_seed(seed)
    m = MoE(h, f, E, k, swiglu, cf)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return m


def reference(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """The definition, one token and one expert at a time: sum over the token's top-k experts (ties to the lower
    index; renormalised when k > 1) of weight * expert(x), capacity by GShard's order."""
    x2 = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(x2.float() @ m.gate.weight.float().t(), -1)
    T, E, k = x2.shape[0], m.num_experts, m.topk
    chosen = [sorted(range(E), key=lambda e: (-probs[t, e].item(), e))[:k] for t in range(T)]
    cap = capacity(T, k, E, m.capacity_factor) or T * k
    taken = [0] * E
    kept = [[False] * k for _ in range(T)]
    for j in range(k):
        for t in range(T):
            e = chosen[t][j]
            if taken[e] < cap:
                taken[e] += 1
                kept[t][j] = True
    rows = []
    for t in range(T):
        w = torch.stack([probs[t, e] for e in chosen[t]])
        if k > 1:
            w = w / w.sum()
        y = torch.zeros_like(x2[t])
        for j, e in enumerate(chosen[t]):
            if not kept[t][j]:
                continue
            if m.experts.swiglu:
                g, u = (m.experts.gate_up_proj[e] @ x2[t]).chunk(2)
                hdn = F.silu(g) * u
            else:
                hdn = F.gelu(m.experts.up_proj[e] @ x2[t], approximate="tanh")
            y = y + w[j] * (m.experts.down_proj[e] @ hdn)
        rows.append(y)
    return torch.stack(rows).view(x.shape)


@pytest.mark.parametrize("swiglu, k, cf", [(True, 2, None), (False, 1, None), (True, 2, 0.5), (False, 1, 0.75)])
def test_block_matches_the_expert_loop_outputs_and_gradients(swiglu, k, cf):
    m = block(swiglu, k, cf)
    x = torch.randn(3, 5, 16, requires_grad=True)
    y = m(x)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *m.parameters()], gy)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = reference(m, x_ref)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *m.parameters()], gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_block_matches_hugging_face_mixtral():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    m = block(True, 2, None, E=4, h=16, f=24)
    hf = MixtralSparseMoeBlock(MixtralConfig(hidden_size=16, intermediate_size=24, num_local_experts=4,
                                             num_experts_per_tok=2, hidden_act="silu"))
    missing = hf.load_state_dict({k: v for k, v in m.state_dict().items()}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys  # the same parameter names and shapes
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(m(x), hf(x), rtol=1e-5, atol=1e-6)


def test_ties_go_to_the_lower_expert_and_weights():
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0], [2.0, 2.0, 0.0, 2.0]])
    probs, chosen, weights = route(logits, 2)
    assert chosen.tolist() == [[1, 2], [0, 1]]
    torch.testing.assert_close(weights, torch.full((2, 2), 0.5))
    _, chosen1, weights1 = route(logits, 1)  # Switch: no renormalisation
    assert chosen1.tolist() == [[1], [0]]
    torch.testing.assert_close(weights1[:, 0], probs[torch.arange(2), chosen1[:, 0]])


def test_capacity_drops_exactly_the_rule():
    # 6 tokens, k=2, E=3, factor 0.5 -> capacity ceil(0.5 * 6 * 2 / 3) = 2 per expert
    chosen = torch.tensor([[0, 1], [0, 2], [0, 1], [1, 0], [1, 2], [2, 1]])
    assert capacity(6, 2, 3, 0.5) == 2 and capacity(6, 2, 3, None) is None
    keep = keep_mask(chosen, 3, 2)
    # first choices in token order: e0 <- t0, t1 (t2 dropped); e1 <- t3, t4; e2 <- t5
    # then second choices: e1 full (t0, t2, t5 dropped); e2 <- t1 (second slot; t4 dropped); e0 full (t3 dropped)
    assert keep.tolist() == [[True, False], [True, True], [False, False], [True, False], [True, False],
                             [True, False]]
    assert keep_mask(chosen, 3, None).all()


def test_dropped_count_and_no_drop_mode():
    x = torch.randn(2, 8, 16)
    m = block(True, 2, 0.5)
    m(x)
    p = m.pending[-1]
    probs, chosen, _ = route(F.linear(x.reshape(-1, 16), m.gate.weight), 2)
    assert p["dropped"] == 32 - int(keep_mask(chosen, 4, capacity(16, 2, 4, 0.5)).sum()) and p["dropped"] > 0
    m.capacity_factor = None
    m(x)
    assert m.pending[-1]["dropped"] == 0


def test_aux_and_z_loss_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    chosen = torch.tensor([[0], [1], [0], [2]])  # f = (2/4, 1/4, 1/4)
    P = probs.mean(0)
    expected = 3 * (0.5 * P[0] + 0.25 * P[1] + 0.25 * P[2])
    torch.testing.assert_close(load_balancing_loss(probs, chosen, 3), expected)
    uniform = torch.full((6, 3), 1 / 3)
    torch.testing.assert_close(load_balancing_loss(uniform, torch.tensor([[0], [1], [2]] * 2), 3), torch.tensor(1.0))
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lse = [math.log(math.e + math.e ** 2 + math.e ** 3), math.log(3.0)]
    torch.testing.assert_close(z_loss(logits), torch.tensor((lse[0] ** 2 + lse[1] ** 2) / 2))


def test_model_loss_adds_the_router_losses_in_training_only():
    torch.manual_seed(0)
    m = GPT(dataclasses.replace(ARGS, moe_aux_loss_coeff=0.1, moe_z_loss_coeff=0.01))
    names = dict(m.named_parameters())
    assert names["layers.0.mlp.gate.weight"].shape == (4, 32)
    assert names["layers.1.mlp.experts.gate_up_proj"].shape == (4, 96, 32)
    assert names["layers.1.mlp.experts.down_proj"].shape == (4, 32, 48)
    x = torch.randint(0, 64, (2, 16))
    loss = m(x, x)
    layers = [m.layers[0].mlp, m.layers[1].mlp]
    m.eval()
    ce = m(x, x)
    m.train()
    stats = take_moe_stats(m)
    # recompute each layer's losses from its router on the same activations: the training loss is ce + coefficients
    assert stats["tokens"] == 64 and stats["assignments"] == 128 and stats["dropped"] == 0
    assert sum(stats["expert_load"]) == 128 and len(stats["expert_load"]) == 4
    assert loss.item() == pytest.approx(ce.item() + 0.1 * stats["aux_loss"] + 0.01 * stats["z_loss"], abs=1e-6)
    assert take_moe_stats(m)["tokens"] == 0  # reset; eval forwards are not counted
    assert all(not layer.pending for layer in layers)
    assert count_parameters(m.args)["total"] == sum(p.numel() for p in m.parameters())


def test_layer_freq_and_active_parameters():
    args = dataclasses.replace(ARGS, num_layers=4, moe_layer_freq=2, moe_router_topk=1)
    m = GPT(args)
    assert [isinstance(layer.mlp, MoE) for layer in m.layers] == [True, False, True, False]
    counts = count_parameters(args)
    assert counts["total"] == sum(p.numel() for p in m.parameters())
    expert = 3 * 32 * 48
    assert counts["total"] - counts["active"] == 2 * 3 * expert  # 3 of 4 experts idle per token, 2 MoE layers


def test_activation_checkpointing_counts_once_and_gives_the_same_gradients():
    from pretrain.models import build_model

    x = torch.randint(0, 64, (2, 16))
    out = []
    for ac in (False, True):
        torch.manual_seed(0)
        m = build_model(dataclasses.replace(ARGS, activation_checkpointing=ac))
        m(x, x).backward()
        out.append(([p.grad.clone() for p in m.parameters()], take_moe_stats(m)))
    for a, b in zip(out[0][0], out[1][0]):
        torch.testing.assert_close(a, b)
    assert out[0][1] == out[1][1] and out[1][1]["tokens"] == 64


def test_dense_model_is_unchanged_by_the_moe_fields():
    from pretrain.models import shape_of

    dense = dataclasses.replace(ARGS, num_experts=0, moe_ffn_hidden_size=0)
    assert not any(k.startswith(("num_experts", "moe_")) for k in shape_of(dense))
    assert "num_experts" in shape_of(ARGS)
    torch.manual_seed(0)
    assert take_moe_stats(GPT(dense)) == {}


def test_a_checkpoint_of_the_other_kind_is_refused_naming_the_expert_count(tmp_path):
    """A dense checkpoint (written before the MoE fields existed: no num_experts) resumed by an MoE config, and an
    MoE checkpoint resumed by a dense config, are both refused by the shape check, before anything is built."""
    from pretrain.checkpoint import check_model_shape
    from pretrain.core.errors import CheckpointError

    dense = dataclasses.replace(ARGS, num_experts=0, moe_ffn_hidden_size=0)
    old_dense = {k: v for k, v in dataclasses.asdict(dense).items() if k != "num_experts" and not k.startswith("moe_")}
    check_model_shape(tmp_path, {"family": "gpt", "model_args": old_dense}, dense, "gpt")  # same shape: accepted
    with pytest.raises(CheckpointError, match="model.num_experts: checkpoint 0, config 4"):
        check_model_shape(tmp_path, {"family": "gpt", "model_args": old_dense}, ARGS, "gpt")
    with pytest.raises(CheckpointError, match="model.num_experts: checkpoint 4, config 0"):
        check_model_shape(tmp_path, {"family": "gpt", "model_args": dataclasses.asdict(ARGS)}, dense, "gpt")




@pytest.mark.parametrize("over, fragment", [
    ({"model__moe_router_topk": 5}, "model.moe_router_topk=5 must be between 1 and model.num_experts=4"),
    ({"model__moe_layer_freq": 0}, "model.moe_layer_freq=0 must be >= 1"),
    ({"model__moe_capacity_factor": 0.0}, "model.moe_capacity_factor=0.0 must be > 0"),
    ({"model__moe_aux_loss_coeff": -1.0}, "model.moe_aux_loss_coeff=-1.0 must be >= 0"),
])
def test_bad_moe_config_names_the_key(over, fragment):
    from pretrain.models import resolve_args

    c = cfg(model__num_experts=4, **over)
    with pytest.raises(ConfigError, match="invalid mixture-of-experts config") as e:
        resolve_args(c.model, 100)
    assert fragment in str(e.value)


@pytest.mark.parametrize("over, world, fragment", [
    ({"parallel__pipeline_model_parallel_size": 2}, 2,
     "parallel.pipeline_model_parallel_size=2 with model.num_experts=4"),
    ({"parallel__tensor_model_parallel_size": 2, "parallel__sequence_parallel": True}, 2,
     "parallel.sequence_parallel=true with model.num_experts > 0"),
    ({"parallel__expert_model_parallel_size": 3}, 3,
     "model.num_experts=4 is not divisible by parallel.expert_model_parallel_size=3"),
    ({"parallel__expert_model_parallel_size": 4}, 2,
     "parallel.expert_model_parallel_size=4 does not divide the data-parallel size 2"),
    ({"parallel__expert_model_parallel_size": 2, "parallel__zero_stage": 3}, 2,
     "parallel.expert_model_parallel_size=2 with parallel.zero_stage=3 is not supported"),
    ({"parallel__expert_model_parallel_size": 2, "model__num_experts": 0}, 2,
     "parallel.expert_model_parallel_size=2 needs a mixture-of-experts model"),
    ({"parallel__expert_model_parallel_size": 2, "parallel__zero_stage": 2, "parallel__offload_optimizer": True}, 2,
     "parallel.expert_model_parallel_size=2 with parallel.offload_optimizer=true is not supported"),
])
def test_invalid_moe_layouts_give_their_message(over, world, fragment):
    over = {"model__num_experts": 4, **over}
    with pytest.raises(ConfigError, match="invalid parallel layout") as e:
        validate_parallel(cfg(model__vocab_size=256, **over), world)
    assert fragment in str(e.value)
    validate_parallel(cfg(model__num_experts=4, model__vocab_size=256, parallel__tensor_model_parallel_size=2), 4)


@pytest.mark.parametrize("world, tp, ep", [(4, 1, 2), (8, 2, 2), (8, 1, 4), (16, 2, 4)])
def test_deepspeed_builds_our_expert_groups(world, tp, ep):
    """The groups DeepSpeed builds for its expert parameters (deepspeed.utils.groups, with our grid as mpu) are
    ours: ep consecutive ranks of each data-parallel group, the ranks holding the same experts every ep-th."""
    from deepspeed.utils.groups import _get_expert_parallel_ranks

    from pretrain.parallel.expert import expert_group_ranks
    from pretrain.parallel.topology import make_topology

    topo = make_topology(tp, 1, world)
    ours: tuple[list, list] = ([], [])
    for t in range(tp):
        ep_groups, edp_groups = expert_group_ranks(sorted(topo.filter_match(pipe=0, model=t)), ep)
        ours[0].extend(ep_groups)
        ours[1].extend(edp_groups)
    theirs = _get_expert_parallel_ranks(world, tp, ep, 1)
    assert [sorted(map(list, g)) for g in theirs] == [sorted(g) for g in ours]


def test_expert_slices_get_deepspeeds_moe_optimizer_groups():
    """ep2 on rank 1: the experts' stacked tensors keep global experts 2-3, tagged as DeepSpeed's expert
    parameters, and the optimizer's groups split into dense ones and an expert one (same settings)."""
    from deepspeed.moe.utils import is_moe_param

    from pretrain.engines.deepspeed import _with_expert_groups
    from pretrain.optim import param_groups
    from pretrain.parallel.expert import expert_parallelize, expert_slice, local_experts

    torch.manual_seed(0)
    whole = GPT(ARGS)
    torch.manual_seed(0)
    model = GPT(ARGS)
    expert_parallelize(model, None, 1, 2)
    for name, p in model.named_parameters():
        if ".experts." in name:
            assert expert_slice(p) == (2, 2) and is_moe_param(p) and p.group_name == "ep_size_2"
            full = dict(whole.named_parameters())[name]
            assert p.shape[0] == 2 and torch.equal(p, full[2:]) and torch.equal(local_experts(full, p), p)
        else:
            assert expert_slice(p) is None and not is_moe_param(p)
    opt = _with_expert_groups(torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, foreach=True))
    kinds = [(g.get("moe", False), g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    n_experts = sum(".experts." in n for n, _ in model.named_parameters())
    assert kinds[-1] == (True, 0.1, n_experts) and not any(moe for moe, _, _ in kinds[:-1])
    assert opt.param_groups[-1]["name"] == "ep_size_2" and opt.param_groups[-1]["lr"] == 1e-3
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())


def test_lr_schedule_state_maps_onto_another_number_of_groups(tmp_path):
    """A checkpoint of an ep2 run (three optimizer groups) resumes at ep1 (two) and back: one schedule for all."""
    from pretrain.core.errors import CheckpointError
    from pretrain.parallel.reshard import _fit_groups

    state = {"base_lrs": [3e-3] * 3, "_last_lr": [2.9e-3] * 3, "lr_lambdas": [None] * 3, "last_epoch": 4}
    assert _fit_groups(state, 2, tmp_path) == {"base_lrs": [3e-3] * 2, "_last_lr": [2.9e-3] * 2,
                                               "lr_lambdas": [None] * 2, "last_epoch": 4}
    assert _fit_groups(state, 3, tmp_path) == state
    with pytest.raises(CheckpointError, match="base_lrs differs between its 2 parameter groups"):
        _fit_groups({"base_lrs": [1e-3, 2e-3]}, 3, tmp_path)


def _ep_worker(rank: int, world: int, init: str, results):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for k, cf, keep_all in ((2, None, False), (1, 0.5, False), (2, 0.75, True)):
            _ep_case(rank, world, k, cf, keep_all)
        results[rank] = "ok"
    except Exception as e:  # reported by the parent
        results[rank] = repr(e)
    finally:
        torch.distributed.destroy_process_group()


def _ep_case(rank: int, world: int, k: int, cf, keep_all: bool) -> None:
    from pretrain.parallel.expert import expert_parallelize

    ref = block(True, k, cf, E=4)
    ep = block(True, k, cf, E=4)
    torch.manual_seed(100 + rank)
    x = torch.randn(2, 6, 16)
    gy = torch.randn(2, 6, 16)
    xr, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref(xr).backward(gy)
    assert expert_parallelize(ep, None, rank, world, keep_all=keep_all) == 1
    y = ep(xe)
    y.backward(gy)
    torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(xe.grad, xr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ep.gate.weight.grad, ref.gate.weight.grad, rtol=1e-4, atol=1e-6)
    lo = 2 * rank
    for name in ("gate_up_proj", "down_proj"):  # an expert's gradient comes from every rank's tokens
        full = getattr(ref.experts, name).grad.clone()
        torch.distributed.all_reduce(full)
        grad = getattr(ep.experts, name).grad
        if keep_all:  # whole tensors: this rank's rows hold its experts' gradients, the others zeros
            assert grad.shape == full.shape and not grad[:lo].any() and not grad[lo + 2:].any()
            grad = grad[lo:lo + 2]
        torch.testing.assert_close(grad, full[lo:lo + 2], rtol=1e-4, atol=1e-6)
    assert ep.pending[-1]["a2a_bytes"] > 0 and ep.pending[-1]["dropped"] == ref.pending[-1]["dropped"]


@pytest.mark.slow
def test_expert_parallel_dispatch_equals_one_rank(tmp_path):
    """ep2 over gloo (top-2 without dropping; top-1 with capacity 0.5; whole weights kept, as the trainer does):
    outputs, input and router gradients equal the whole block's on each rank's tokens; each expert's gradient
    equals the sum of the ranks' whole-block gradients (capacity is per source rank)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_ep_worker, args=(2, f"file://{tmp_path}/init", results), nprocs=2)
    assert dict(results) == {0: "ok", 1: "ok"}


def _tp_checks(rank: int, world: int) -> dict:
    from pretrain.parallel.parallelize import parallelize
    from pretrain.parallel.tensor import gather_tensor_parallel, is_tensor_parallel
    from pretrain.parallel.topology import ParallelGrid

    g = ParallelGrid(tensor_parallel_size=2).get_tensor_model_parallel_group()
    args = dataclasses.replace(ARGS, vocab_size=64, moe_layer_freq=2)  # layer 0 MoE, layer 1 dense
    torch.manual_seed(7)
    dense = GPT(args)
    torch.manual_seed(7)
    tp = parallelize(GPT(args), g)
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    loss_d, loss_t = dense(x, x), tp(x, x)
    loss_d.backward()
    loss_t.backward()
    ref = dict(dense.named_parameters())
    worst = 0.0
    for name, p in tp.named_parameters():
        grad = gather_tensor_parallel(p.grad, p.partition_dim, g) if is_tensor_parallel(p) else p.grad
        worst = max(worst, float((grad - ref[name].grad).abs().max()))
    return {"loss": abs(float(loss_t) - float(loss_d)), "grad": worst,
            "moe_whole": tuple(tp.layers[0].mlp.experts.gate_up_proj.shape),
            "dense_split": tuple(tp.layers[1].mlp.up_proj.weight.shape),
            "stats": take_moe_stats(tp)["expert_load"] == take_moe_stats(dense)["expert_load"]}


@pytest.mark.slow
def test_tensor_parallel_attention_with_moe_equals_unsharded():
    """tp2 (gloo): attention and dense MLPs split, MoE blocks whole on both ranks (same routing); the loss and
    every gradient equal the unsharded model's."""
    from tp_harness import run_ranks

    for r in run_ranks(_tp_checks, 2):
        assert r["loss"] < 1e-5 and r["grad"] < 1e-5, r
        assert r["moe_whole"] == (4, 96, 32) and r["dense_split"] == (32, 32) and r["stats"]


@pytest.mark.slow
def test_expert_parallel_training_equals_ep1(e2e_run):
    """ep2 (2 processes, ZeRO-1) and ep2 x tp2 (4 processes, ZeRO-2), each rank holding half the experts, give
    ep1's per-step losses and gradient norms within 1e-5 over 10 steps on the same batches; ep2's checkpoint
    resumes at ep1 and that one at ep2 again (ZeRO-0), on ep1's losses and norms to step 14. The checkpoints'
    layout-free copy holds all 4 experts by global index, DeepSpeed's own file only rank 0's 2."""
    from e2e import MOE_STEPS, assert_same_steps, train_records
    from pretrain.core import safe_load

    ref = train_records(e2e_run("moe_ep1").dir)
    assert len(ref) == MOE_STEPS + 4
    for name in ("moe_ep2", "moe_ep2_tp2"):
        got = [r for r in train_records(e2e_run(name).dir) if r["step"] <= MOE_STEPS]
        assert_same_steps(ref[:MOE_STEPS], got, 1e-5, 1e-5)
    line = "expert parallel: 2 MoE layers, the experts spread over 2 ranks (this rank: expert-parallel rank 0, " \
           "holding experts 0-1 of 4)"
    assert line in e2e_run("moe_ep2_tp2").outputs[0].stdout
    resumed = e2e_run("moe_ep2")
    assert ["expert parallel" in o.stdout for o in resumed.outputs] == [True, False, True]
    assert all("resum" in o.stdout.lower() for o in resumed.outputs[1:])
    assert_same_steps(ref, train_records(resumed.dir), 1e-5, 1e-5)
    tag = resumed.dir / "checkpoints" / f"step_{MOE_STEPS + 4:06d}"  # saved at ep2
    name = "layers.1.mlp.experts.up_proj"  # GELU experts (gpt_tiny): [E, ffn, hidden]
    universal = safe_load.load(tag / "universal" / "pp00_tp00.pt", map_location="cpu")
    assert universal["ep"] == 2 and universal["params"][name]["fp32"].shape == (4, 96, 64)
    from pretrain.checkpoint_files import deepspeed_safe_globals

    own = safe_load.load(tag / "mp_rank_00_model_states.pt", allowed=deepspeed_safe_globals(), map_location="cpu")
    assert own["module"][name].shape == (2, 96, 64)
    torch.testing.assert_close(own["module"][name], universal["params"][name]["fp32"][:2])
    # what pretrain.export reads of it: the whole model, every expert at its global index, ep1's weights at step 14
    from pretrain import export

    got, want = (export.load_model(export.find_checkpoint(d))[2].state_dict() for d in (tag, e2e_run("moe_ep1").dir))
    assert got.keys() == want.keys() and got[name].shape == (4, 96, 64)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-4)
