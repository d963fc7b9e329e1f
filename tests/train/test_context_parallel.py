"""Context parallelism (docs/context_parallel.md): the chunking, the Ulysses all-to-all around ``attend``, the loss
over a context group, the layout checks and the grid, in-process; and the end-to-end runs cp2 (llama_tiny: RoPE,
GQA; ZeRO-0) and cp2 x dp2 (gpt_tiny: learned positions; ZeRO-1 over 4 ranks) against cp1 runs of the same
samples, per step within 1e-5.

The in-process tests run the C ranks of a context group as C threads of this process, over a simulated group
(:class:`ThreadGroup`) standing in for DeepSpeed's ``all_to_all_single`` and torch's ``all_reduce``: each thread
runs its chunk forward and backward (autograd runs a CPU backward on the calling thread), exactly the code a rank
runs, and the chunks put together must be what one rank computes on the whole sequence.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch

from conftest import structured_cfg as cfg
from e2e import GRAD_NORM_REL, assert_same_steps, train_records
from pretrain.core.errors import ConfigError
from pretrain.models.attention import AttentionSpec, alibi_slopes, attend
from pretrain.parallel import context
from pretrain.parallel.context import ContextParallel, UlyssesAttend, a2a_bytes, chunk_bounds, chunk_loss
from pretrain.parallel.topology import coord_of
from pretrain.parallel.validate import validate_parallel


class ThreadGroup:
    """``size`` ranks as threads: all-to-all and all-reduce through shared slots and a barrier."""

    def __init__(self, size: int):
        self.size, self.slots, self.barrier = size, [None] * size, threading.Barrier(size)
        self.local = threading.local()

    @property
    def rank(self) -> int:
        return self.local.rank

    def _exchange(self, t: torch.Tensor) -> list[torch.Tensor]:
        self.slots[self.rank] = t.detach().clone()
        self.barrier.wait()
        got = list(self.slots)
        self.barrier.wait()
        return got

    # the deepspeed.comm functions DistributedAttention calls
    def get_world_size(self, group=None) -> int:
        return self.size

    def all_to_all_single(self, output, input, group=None, async_op=False, **_):
        output.copy_(torch.cat([t.chunk(self.size)[self.rank] for t in self._exchange(input)]))

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t.copy_(torch.stack(self._exchange(t)).sum(0))

    def run(self, fn):
        """``fn(rank)`` on every rank at once; their results in rank order."""
        out, errors = [None] * self.size, []

        def body(rank):
            self.local.rank = rank
            try:
                out[rank] = fn(rank)
            except BaseException as e:  # noqa: BLE001 - re-raised below, and the other ranks released
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        intra = torch.get_num_threads()
        torch.set_num_threads(1)  # the ranks are the parallelism: intra-op threads of both would wait on each other
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            torch.set_num_threads(intra)
        if errors:
            raise errors[0]
        return out


class ThreadContext(ContextParallel):
    def __init__(self, group: ThreadGroup, rank: int):
        super().__init__(group, rank, group.size)

    def all_reduce(self, t):
        return self.group.all_reduce(t)


@pytest.fixture
def threads(monkeypatch):
    import deepspeed.sequence.layer as layer

    def make(size: int) -> ThreadGroup:
        group = ThreadGroup(size)
        monkeypatch.setattr(layer, "dist", group)
        return group

    return make


# ------------------------------------------------------------------------------------------------ chunking


def test_chunks_cover_the_sequence_in_rank_order():
    assert [chunk_bounds(64, r, 4) for r in range(4)] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    with pytest.raises(ValueError, match="does not split into 3 equal"):
        chunk_bounds(64, 0, 3)
    ids = torch.arange(12).view(2, 6)
    chunk, labels, start = ContextParallel(None, 1, 2).split(ids, ids + 100)
    assert start == 3 and chunk.tolist() == [[3, 4, 5], [9, 10, 11]] and labels.tolist() == [[103, 104, 105],
                                                                                              [109, 110, 111]]


def test_a2a_bytes_count_only_what_leaves_the_rank():
    assert a2a_bytes(1000, 4, 1) == 0
    assert a2a_bytes(1000, 4, 2) == 4000  # half of 4000 bytes sent, as much received
    assert a2a_bytes(1000, 2, 4) == 3000


# ------------------------------------------------------------------------------------------------ the loss


def test_chunk_loss_is_the_whole_sequence_mean_and_its_gradients_add_up():
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 8))
    labels[0, :5] = -100  # uneven valid tokens per chunk: 3 + 4 in chunk 0, 4 + 4 in chunk 1 (token-weighted)
    full = torch.nn.functional.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    (want,) = torch.autograd.grad(full, logits)
    group = ThreadGroup(2)

    def rank(r):
        lo, hi = chunk_bounds(8, r, 2)
        part = logits.detach()[:, lo:hi].clone().requires_grad_()
        loss = ThreadContext(group, r).loss(torch.nn.functional.cross_entropy, part, labels[:, lo:hi])
        loss.backward()
        return loss.detach(), part.grad

    (l0, g0), (l1, g1) = group.run(rank)
    assert l0.item() == pytest.approx(full.item(), rel=1e-6) and l1.item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(torch.cat([g0, g1], dim=1), want)


def test_chunk_loss_over_no_valid_token_is_nan_like_a_mean_over_nothing():
    logits = torch.randn(4, 5, requires_grad=True)
    labels = torch.full((4,), -100)
    loss_sum = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    loss = chunk_loss(loss_sum, (labels != -100).sum(), lambda t: t)
    assert torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 5))  # no gradient, and no NaN in it


# ------------------------------------------------------------------------------------------- the all-to-all


@pytest.mark.parametrize("hkv, spec", [
    (4, AttentionSpec()),
    (2, AttentionSpec()),  # grouped-query: each rank's query heads land with their key/value head
    (4, AttentionSpec(window=5, alibi_slopes=alibi_slopes(4))),  # masks of whole-sequence positions, global heads
])
def test_ulysses_attend_is_attend_over_the_whole_sequence(threads, hkv, spec):
    """2 ranks, each with its half of the sequence: the all-to-all gives attend every token for half the heads;
    the outputs and the q/k/v gradients put together are one rank's, and the bytes are counted both ways."""
    torch.manual_seed(0)
    b, h, s, d = 2, 4, 12, 8
    q, k, v = torch.randn(b, h, s, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    grad = torch.randn(b, h, s, d)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    want = attend(*full, spec)
    want.backward(grad)
    group = threads(2)

    def rank(r):
        cp = ThreadContext(group, r)
        lo, hi = chunk_bounds(s, r, 2)
        mine = [t[:, :, lo:hi].clone().requires_grad_() for t in (q, k, v)]
        out = UlyssesAttend(attend, cp)(*mine, spec)
        assert out.shape == (b, h, s // 2, d)
        forward_bytes = cp.a2a_bytes
        out.backward(grad[:, :, lo:hi])
        return out.detach(), [t.grad for t in mine], forward_bytes, cp.take_a2a_bytes()

    results = group.run(rank)
    torch.testing.assert_close(torch.cat([r[0] for r in results], dim=2), want.detach())
    for i, t in enumerate(full):
        torch.testing.assert_close(torch.cat([r[1][i] for r in results], dim=2), t.grad)
    numel = b * (2 * h + 2 * hkv) * (s // 2) * d  # q, k, v in and the output back, per rank
    assert [r[2] for r in results] == [a2a_bytes(numel, 4, 2)] * 2
    assert [r[3] for r in results] == [2 * a2a_bytes(numel, 4, 2)] * 2  # the backward's all-to-alls too


@pytest.mark.parametrize("model, extra, documents", [
    # learned positions; full recomputation repeats the layers' all-to-alls in the backward
    ("gpt/tiny", ("model.activation_checkpointing=true", "model.recompute_granularity=full"), False),
    # RoPE, grouped-query attention; selective recomputation repeats those inside the checkpointed core
    ("gpt/llama_tiny", ("model.activation_checkpointing=true", "model.recompute_granularity=selective"), False),
    ("gpt/llama_tiny", ("model.sliding_window=5",), True),  # window and packed documents (positions restart)
    ("gpt/bloom_tiny", (), True),  # ALiBi over 6 heads: every rank's slopes are its global heads'
])
def test_gpt_over_two_context_ranks_matches_one(threads, compose_cfg, model, extra, documents):
    """The whole model: positions at the chunk's offset (or the chunk of the documents' position ids), the masks
    and ALiBi of the whole sequence after the all-to-all, the loss of the whole sequence on each rank; parameter
    gradients summed over the ranks = one rank's on the sequence."""
    from pretrain.models import TokenizerInfo, get_family

    c = compose_cfg(f"model={model}", "model.seq_length=16", "model.vocab_size=128", "model.hidden_dropout=0",
                    "model.attention_dropout=0", *extra)
    family = get_family("gpt")
    args = family.resolve_args(c.model, TokenizerInfo(None, 128, 0))
    torch.manual_seed(0)
    net = family.build(args)
    ids, labels = torch.randint(0, 128, (2, 16)), torch.randint(0, 128, (2, 16))
    labels[1, :3] = -100
    batch = {"input_ids": ids, "labels": labels}
    if documents:  # sample 0: documents of 6 and 10 tokens; sample 1: one document
        batch["segment_ids"] = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])
        batch["position_ids"] = torch.tensor([list(range(6)) + list(range(10)), list(range(16))])
    want = net(**batch)
    want.backward()
    group = threads(2)
    copies = [copy.deepcopy(net) for _ in range(2)]
    for r, m in enumerate(copies):
        m.zero_grad()
        cp = ThreadContext(group, r)
        for module in m.modules():
            if hasattr(module, "attend"):
                module.attend = UlyssesAttend(module.attend, cp)
        m.context_parallel = cp

    def rank(r):
        loss = copies[r](**batch)
        loss.backward()
        return loss.item()

    assert group.run(rank) == pytest.approx([want.item()] * 2, rel=1e-6)
    for (name, p), p0, p1 in zip(net.named_parameters(), copies[0].parameters(), copies[1].parameters()):
        torch.testing.assert_close(p0.grad + p1.grad, p.grad, msg=name)


def test_context_parallelize_wraps_every_attention_once(compose_cfg):
    from pretrain.models import TokenizerInfo, get_family

    c = compose_cfg("experiment=gpt_tiny", "model.vocab_size=128")
    model = get_family("gpt").build(get_family("gpt").resolve_args(c.model, TokenizerInfo(None, 128, 0)))
    names = set(model.state_dict())
    assert context.context_parallelize(model, None, 0, 1) == 0 and model.context_parallel is None
    assert context.context_parallelize(model, None, 1, 2) == 2
    assert model.context_parallel.rank == 1 and set(model.state_dict()) == names  # no new modules or weights
    with pytest.raises(ValueError, match="context-parallel already"):
        context.context_parallelize(model, None, 1, 2)


# ------------------------------------------------------------------------------------------------ the layout

GOOD = dict(model__num_attention_heads=4, model__num_key_value_heads=None, model__seq_length=64,
            trainer__micro_batch_size=2, trainer__global_batch_size=8)


def test_valid_context_layouts():
    layout = validate_parallel(cfg(**GOOD, parallel__context_parallel_size=2), 4)
    assert (layout.cp, layout.dp, layout.world_size, layout.grad_accum_steps) == (2, 2, 4, 2)
    layout = validate_parallel(cfg(**GOOD, parallel__context_parallel_size=2,
                                   parallel__tensor_model_parallel_size=2), 8)
    assert (layout.tp, layout.cp, layout.dp) == (2, 2, 2)


@pytest.mark.parametrize("over, world, fragment", [
    ({"parallel__context_parallel_size": 2}, 3, "the world size 3 is not divisible by parallel.tensor_model_parallel_"
     "size x parallel.pipeline_model_parallel_size x parallel.context_parallel_size = 1 x 1 x 2 = 2"),
    ({"parallel__context_parallel_size": 8}, 8,
     "model.num_attention_heads=4 is not divisible by parallel.context_parallel_size=8"),
    ({"parallel__context_parallel_size": 2, "parallel__tensor_model_parallel_size": 4}, 8,
     "model.num_attention_heads=4 is not divisible by parallel.tensor_model_parallel_size x "
     "parallel.context_parallel_size = 4 x 2 = 8"),
    ({"parallel__context_parallel_size": 4, "model__num_key_value_heads": 2}, 4,
     "model.num_key_value_heads=2 is not divisible by parallel.context_parallel_size=4"),
    ({"parallel__context_parallel_size": 2, "model__seq_length": 63}, 2,
     "model.seq_length=63 is not divisible by parallel.context_parallel_size=2"),
    ({"parallel__context_parallel_size": 2, "model__family": "bert"}, 2,
     "parallel.context_parallel_size=2 is implemented for model.family=gpt only, not bert"),
    ({"parallel__context_parallel_size": 2, "parallel__pipeline_model_parallel_size": 2, "parallel__zero_stage": 1,
      "model__num_layers": 2}, 4, "with parallel.pipeline_model_parallel_size=2 is not supported"),
    ({"parallel__context_parallel_size": 2, "parallel__tensor_model_parallel_size": 2,
      "parallel__sequence_parallel": True}, 4, "with parallel.sequence_parallel=true is not supported"),
    ({"parallel__context_parallel_size": 2, "model__num_experts": 4}, 2, "with model.num_experts=4 is not supported"),
    ({"parallel__context_parallel_size": 2, "parallel__zero_stage": 3}, 2,
     "with parallel.zero_stage=3 is not supported (DeepSpeed 0.19's ZeRO-3 does not sum"),
    ({"parallel__context_parallel_size": 2, "trainer__global_batch_size": 6}, 4,
     "data-parallel size = world 4 / (tp 1 x pp 1 x cp 2)"),
])
def test_invalid_context_layouts_say_what_to_change(over, world, fragment):
    with pytest.raises(ConfigError, match="invalid parallel layout") as e:
        validate_parallel(cfg(**{**GOOD, **over}), world)
    assert fragment in str(e.value)


def test_context_size_below_one_is_refused():
    with pytest.raises(ConfigError, match="parallel.context_parallel_size=0 must be >= 1"):
        validate_parallel(cfg(**GOOD, parallel__context_parallel_size=0), 1)


def test_grid_puts_context_ranks_between_data_and_tensor():
    """world 8 = dp 2 x cp 2 x tp 2, as the topology docstring draws it; cp 1 keeps DeepSpeed's own layout."""
    coords = [coord_of(r, tp=2, pp=1, world_size=8, cp=2) for r in range(8)]
    assert [c.dp for c in coords] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [c.cp for c in coords] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [c.tp for c in coords] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert coord_of(5, tp=2, pp=2, world_size=8) == coord_of(5, tp=2, pp=2, world_size=8, cp=1)


# ------------------------------------------------------------------------------------------------ end to end


# The all-to-all bytes per step and rank: a2a_bytes of q, k, v and the output (micro x heads x seq/2 x 16 floats
# each, k and v with the key/value heads), forward and backward, per layer (2) and micro-batch of the step.
LLAMA_A2A = 2 * 2 * 4 * a2a_bytes(2 * (4 + 2 + 2 + 4) * 32 * 16, 4, 2)  # micro 2, 4 micro-batches, GQA 4/2 heads
GPT_A2A = 2 * 2 * 1 * a2a_bytes(4 * (4 + 4 + 4 + 4) * 32 * 16, 4, 2)  # micro 4, 1 micro-batch per dp rank


@pytest.mark.slow
@pytest.mark.parametrize("run, reference, zero, a2a, ranks, params", [
    ("llama_cp2", "llama_dp2_zero2_accum2", 0, LLAMA_A2A, 2, 616768),
    ("gpt_cp2_dp2", "gpt_one_process", 1, GPT_A2A, 4, 366336)])
def test_context_parallel_trains_like_one_rank(e2e_run, run, reference, zero, a2a, ranks, params):
    """10 steps split over 2 context ranks (with 2 data-parallel replicas for gpt) give cp1's losses on the same
    samples within 1e-5 relative; DeepSpeed ran the given ZeRO stage over dp x cp ranks; the all-to-all bytes are
    in every record, and the gradient all-reduce's over dp x cp ranks; validation ran on the chunks; one
    layout-free checkpoint file was written."""
    ref, trained = e2e_run(reference).dir, e2e_run(run).dir
    records = train_records(trained)
    worst = assert_same_steps(train_records(ref)[:10], records, 1e-5, GRAD_NORM_REL)
    print(f"{run}: max relative loss difference to {reference} {worst:.3g}")
    assert {r["cp_a2a_bytes"] for r in records} == {a2a}
    assert records[0]["comm_dp_allreduce_bytes"] == int(2 * (ranks - 1) / ranks * params * 4)
    ds = json.loads((trained / "deepspeed.json").read_text())
    assert ds["zero_optimization"]["stage"] == zero and ds["sequence_parallel_size"] == 2
    val = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert val and all(v["val_loss"] == v["val_loss"] for v in val)
    assert "x cp 2" in (trained / "train.log").read_text()
    assert [p.name for p in (trained / "checkpoints" / "step_000010" / "universal").iterdir()] == ["pp00_tp00.pt"]
