"""Tensor-parallel primitives at tp=2 (two gloo processes) against the dense layer with the same full weights:
forward outputs and every gradient (shards gathered) agree within 1e-6 relative (fp64, and fp32 for the
layers)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tp_harness import run_ranks


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the error relative to the scale of the reference."""
    return float((a.detach() - b.detach()).abs().max() / b.detach().abs().max().clamp_min(1e-30))


def _checks(rank: int, world: int) -> dict:
    from deepspeed.runtime.utils import is_model_parallel_parameter

    from pretrain.parallel import tensor as T
    from pretrain.parallel.topology import ParallelGrid

    grid = ParallelGrid(tensor_parallel_size=2)
    g = grid.get_tensor_model_parallel_group()
    out: dict = {"coord": (grid.coord.pp, grid.coord.dp, grid.coord.tp), "dp": grid.dp, "seed": grid.dropout_seed(7),
                 "tp_rank": grid.get_tensor_model_parallel_rank(), "src": grid.get_tensor_model_parallel_src_rank()}

    def gathered(p):  # the full gradient of a sharded parameter
        return T.gather_tensor_parallel(p.grad, p.partition_dim, g) if T.is_tensor_parallel(p) else p.grad

    torch.manual_seed(0)  # the same "full" tensors on both ranks
    dt = torch.float64
    x = torch.randn(3, 5, 8, dtype=dt)
    up = torch.randn(3, 5, 8, dtype=dt)  # an upstream gradient, full width

    # --- the four communication functions, against their dense meaning
    w_r = torch.full((3, 5, 8), float(rank + 1), dtype=dt)  # a different consumer on each rank
    xi = x.clone().requires_grad_()
    y = T.copy_to_tensor_model_parallel_region(xi, g)
    (y * w_r).sum().backward()
    out["copy_fwd"] = rel(y, x)
    out["copy_bwd"] = rel(xi.grad, torch.full_like(x, 3.0))  # 1 + 2: every rank's partial gradient summed

    xi = (x * (rank + 1)).requires_grad_()
    y = T.reduce_from_tensor_model_parallel_region(xi, g)
    (y * up).sum().backward()
    out["reduce_fwd"] = rel(y, 3 * x)
    out["reduce_bwd"] = rel(xi.grad, up)

    xi = x.clone().requires_grad_()
    y = T.scatter_to_tensor_model_parallel_region(xi, g)
    (y * up[..., rank * 4:(rank + 1) * 4]).sum().backward()
    out["scatter_fwd"] = rel(y, x[..., rank * 4:(rank + 1) * 4])
    out["scatter_bwd"] = rel(xi.grad, up)  # each rank's slice gradient, gathered back to full width

    xi = x[..., rank * 4:(rank + 1) * 4].clone().requires_grad_()
    y = T.gather_from_tensor_model_parallel_region(xi, g)
    (y * up).sum().backward()
    out["gather_fwd"] = rel(y, x)
    out["gather_bwd"] = rel(xi.grad, up[..., rank * 4:(rank + 1) * 4])

    # --- layers against nn.Linear / nn.Embedding with the same full weights, fp64 and fp32
    for dt in (torch.float64, torch.float32):
        tag = str(dt).split(".")[-1]
        torch.manual_seed(1)
        dense_col = nn.Linear(8, 12, dtype=dt)
        dense_row = nn.Linear(12, 8, dtype=dt)
        x = torch.randn(3, 5, 8, dtype=dt)
        up12 = torch.randn(3, 5, 12, dtype=dt)
        up8 = torch.randn(3, 5, 8, dtype=dt)

        for gather_output in (True, False):
            col = T.ColumnParallelLinear.from_dense(dense_col, g, gather_output=gather_output)
            xd, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
            yd, yt = dense_col(xd), col(xt)
            ref_y = yd if gather_output else yd[..., rank * 6:(rank + 1) * 6]
            upt = up12 if gather_output else up12[..., rank * 6:(rank + 1) * 6]
            dense_col.zero_grad()
            (yd * up12).sum().backward()
            (yt * upt).sum().backward()
            k = f"column_{'gathered' if gather_output else 'split'}_{tag}"
            out[f"{k}_fwd"] = rel(yt, ref_y)
            out[f"{k}_dx"] = rel(xt.grad, xd.grad)
            out[f"{k}_dw"] = rel(gathered(col.weight), dense_col.weight.grad)
            out[f"{k}_db"] = rel(gathered(col.bias), dense_col.bias.grad)

        for input_is_parallel in (True, False):
            row = T.RowParallelLinear.from_dense(dense_row, g, input_is_parallel=input_is_parallel)
            x12 = torch.randn(3, 5, 12, dtype=dt)
            xd = x12.clone().requires_grad_()
            xt = (x12[..., rank * 6:(rank + 1) * 6] if input_is_parallel else x12).clone().requires_grad_()
            dense_row.zero_grad()
            yd, yt = dense_row(xd), row(xt)
            (yd * up8).sum().backward()
            (yt * up8).sum().backward()
            k = f"row_{'parallel_in' if input_is_parallel else 'scattered_in'}_{tag}"
            out[f"{k}_fwd"] = rel(yt, yd)
            out[f"{k}_dx"] = rel(xt.grad, xd.grad[..., rank * 6:(rank + 1) * 6] if input_is_parallel else xd.grad)
            out[f"{k}_dw"] = rel(gathered(row.weight), dense_row.weight.grad)
            out[f"{k}_db"] = rel(row.bias.grad, dense_row.bias.grad)

        # column -> GELU -> row: the Megatron MLP, one all-reduce each way
        col = T.ColumnParallelLinear.from_dense(dense_col, g)
        row = T.RowParallelLinear.from_dense(dense_row, g)
        dense_col.zero_grad(), dense_row.zero_grad()
        xd, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        T.TP_COMM.take()
        yd, yt = dense_row(F.gelu(dense_col(xd))), row(F.gelu(col(xt)))
        (yd * up8).sum().backward()
        (yt * up8).sum().backward()
        comm = T.TP_COMM.take()
        out[f"mlp_{tag}_fwd"] = rel(yt, yd)
        out[f"mlp_{tag}_dx"] = rel(xt.grad, xd.grad)
        out[f"mlp_{tag}_dw_col"] = rel(gathered(col.weight), dense_col.weight.grad)
        out[f"mlp_{tag}_dw_row"] = rel(gathered(row.weight), dense_row.weight.grad)
        out[f"mlp_{tag}_comm"] = comm
        out[f"mlp_{tag}_activation_bytes"] = yd.numel() * yd.element_size()

        dense_emb = nn.Embedding(10, 6, dtype=dt)
        emb = T.VocabParallelEmbedding.from_dense(dense_emb, g)
        ids = torch.tensor([[0, 4, 5, 9, 3], [7, 7, 1, 8, 2]])
        upe = torch.randn(2, 5, 6, dtype=dt)
        yd, yt = dense_emb(ids), emb(ids)
        (yd * upe).sum().backward()
        (yt * upe).sum().backward()
        out[f"embedding_{tag}_fwd"] = rel(yt, yd)
        out[f"embedding_{tag}_dw"] = rel(gathered(emb.weight), dense_emb.weight.grad)

    # --- vocab-parallel cross entropy (fp64 and fp32), ignore_index -100, every reduction
    for dt in (torch.float64, torch.float32):
        tag = str(dt).split(".")[-1]
        torch.manual_seed(2)
        logits = torch.randn(12, 10, dtype=dt) * 3
        target = torch.randint(0, 10, (12,))
        target[[1, 5, 6]] = -100
        for reduction in ("mean", "sum", "none"):
            ld = logits.clone().requires_grad_()
            lt = logits[:, rank * 5:(rank + 1) * 5].clone().requires_grad_()
            ref = F.cross_entropy(ld, target, ignore_index=-100, reduction=reduction)
            got = T.vocab_parallel_cross_entropy(lt, target, ignore_index=-100, reduction=reduction, group=g)
            w = torch.arange(1, 13, dtype=dt) if reduction == "none" else torch.tensor(1.0, dtype=dt)
            (ref * w).sum().backward()
            (got * w).sum().backward()
            out[f"xent_{reduction}_{tag}_fwd"] = rel(got, ref)
            out[f"xent_{reduction}_{tag}_bwd"] = rel(T.gather_tensor_parallel(lt.grad, 1, g), ld.grad)
        out[f"xent_all_ignored_{tag}"] = bool(torch.isnan(T.vocab_parallel_cross_entropy(
            logits[:2, rank * 5:(rank + 1) * 5], torch.tensor([-100, -100]), group=g)))
        # 3-D logits and targets, as a model passes them un-flattened
        lt3 = logits.view(3, 4, 10)[..., rank * 5:(rank + 1) * 5]
        out[f"xent_3d_{tag}"] = rel(T.vocab_parallel_cross_entropy(lt3, target.view(3, 4), group=g),
                                    F.cross_entropy(logits, target, ignore_index=-100))

    # --- a layer built on its own initialises exactly the slice of the dense layer of the same seed
    torch.manual_seed(3)
    ref_lin = nn.Linear(8, 12)
    torch.manual_seed(3)
    col = T.ColumnParallelLinear(8, 12, group=g)
    torch.manual_seed(3)
    row = T.RowParallelLinear(8, 12, group=g)
    torch.manual_seed(3)
    ref_emb = nn.Embedding(10, 6)
    torch.manual_seed(3)
    emb = T.VocabParallelEmbedding(10, 6, group=g)
    out["init_column"] = rel(T.gather_tensor_parallel(col.weight, 0, g), ref_lin.weight)
    out["init_row"] = rel(T.gather_tensor_parallel(row.weight, 1, g), ref_lin.weight) + rel(row.bias, ref_lin.bias)
    out["init_embedding"] = rel(T.gather_tensor_parallel(emb.weight, 0, g), ref_emb.weight)

    # --- tags DeepSpeed reads
    out["tags"] = {
        "column_weight": (is_model_parallel_parameter(col.weight), col.weight.partition_dim, col.weight.partition_stride),
        "column_bias": (is_model_parallel_parameter(col.bias), col.bias.partition_dim),
        "row_weight": (is_model_parallel_parameter(row.weight), row.weight.partition_dim),
        "row_bias": is_model_parallel_parameter(row.bias),
        "embedding": (is_model_parallel_parameter(emb.weight), emb.weight.partition_dim),
        "local_shapes": (tuple(col.weight.shape), tuple(row.weight.shape), tuple(emb.weight.shape)),
    }

    # --- indivisible sizes are refused with the dimension named
    try:
        T.ColumnParallelLinear(8, 7, group=g)
        out["indivisible"] = None
    except ValueError as e:
        out["indivisible"] = str(e)

    # --- a group of one rank: plain layers, no communication
    solo = dist.new_group([0]), dist.new_group([1])
    one = solo[rank]
    T.TP_COMM.take()
    lin = T.ColumnParallelLinear.from_dense(dense_col, one)
    out["solo"] = (rel(lin(x), dense_col(x)), T.TP_COMM.take(), tuple(lin.weight.shape))

    # --- the grid with tp=1: both ranks data-parallel
    grid1 = ParallelGrid(tensor_parallel_size=1)
    out["grid_tp1"] = (grid1.dp, grid1.get_data_parallel_group_ranks(), grid1.get_tensor_model_parallel_rank(),
                       grid1.get_data_parallel_rank(), grid1.dropout_seed(7))
    return out


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_ranks(_checks, 2)


ERROR_KEYS = [
    "copy_fwd", "copy_bwd", "reduce_fwd", "reduce_bwd", "scatter_fwd", "scatter_bwd", "gather_fwd", "gather_bwd",
]


@pytest.mark.parametrize("key", ERROR_KEYS)
def test_communication_functions(results, key):
    for r in results:
        assert r[key] < 1e-12, (key, r[key])


@pytest.mark.parametrize("layer", ["column_gathered", "column_split", "row_parallel_in", "row_scattered_in", "mlp",
                                   "embedding"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layers_match_dense(results, layer, dtype):
    tol = 1e-12 if dtype == "float64" else 1e-6
    for r in results:
        errs = {k: v for k, v in r.items() if k.startswith(f"{layer}_{dtype}_") and isinstance(v, float)}
        assert len(errs) >= 2, sorted(r)  # the forward and at least one gradient
        assert max(errs.values()) < tol, errs


def test_mlp_costs_one_all_reduce_each_way(results):
    for dt in ("float64", "float32"):
        for r in results:
            assert r[f"mlp_{dt}_comm"] == {"all_reduce": 2 * r[f"mlp_{dt}_activation_bytes"]}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vocab_parallel_cross_entropy(results, reduction, dtype):
    tol = 1e-12 if dtype == "float64" else 1e-6
    for r in results:
        assert r[f"xent_{reduction}_{dtype}_fwd"] < tol
        assert r[f"xent_{reduction}_{dtype}_bwd"] < tol
        assert r[f"xent_3d_{dtype}"] < tol
        assert r[f"xent_all_ignored_{dtype}"]  # mean over nothing is NaN, as F.cross_entropy


def test_standalone_init_is_the_dense_init(results):
    for r in results:
        assert r["init_column"] == 0.0 and r["init_row"] == 0.0 and r["init_embedding"] == 0.0


def test_sharded_parameters_are_tagged_for_deepspeed(results):
    for r in results:
        t = r["tags"]
        assert t["column_weight"] == (True, 0, 1)
        assert t["column_bias"] == (True, 0)
        assert t["row_weight"] == (True, 1)
        assert t["row_bias"] is False  # replicated: counted once in the grad norm
        assert t["embedding"] == (True, 0)
        assert t["local_shapes"] == ((6, 8), (12, 4), (5, 6))


def test_indivisible_size_is_refused(results):
    assert "out_features=7 is not divisible by the tensor-parallel size 2" in results[0]["indivisible"]


def test_group_of_one_is_the_plain_layer(results):
    for r in results:
        err, comm, shape = r["solo"]
        assert err == 0.0 and comm == {} and shape == (12, 8)


def test_grid_coordinates(results):
    assert [r["coord"] for r in results] == [(0, 0, 0), (0, 0, 1)]
    assert [r["tp_rank"] for r in results] == [0, 1]
    assert [r["src"] for r in results] == [0, 0]
    assert all(r["dp"] == 1 for r in results)
    assert [r["grid_tp1"] for r in results] == [(2, [0, 1], 0, 0, 7), (2, [0, 1], 0, 1, 1007)]
    assert [r["seed"] for r in results] == [7, 7]  # one dropout stream per tensor-parallel group
