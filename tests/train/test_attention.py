"""Attention variants (pretrain/models/attention.py): every mask against a dense reference written out by hand (loops
over queries and the keys the rule allows), forward and backward; ALiBi's slopes; the kernel choice; the
per-layer windows of a pattern; the config errors; ALiBi at twice its training length."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import structured_cfg
from pretrain.core.errors import ConfigError
from pretrain.models import attention as A
from pretrain.models.attention import AttentionSpec, alibi_slopes, attend, choose_kernel
from pretrain.models.gpt.config import GPTArgs
from pretrain.models.gpt.model import GPT

B, S, D = 2, 12, 8


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster than two on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference(q, k, v, allowed, slopes=None):
    """Softmax attention computed query by query over the keys ``allowed(b, i, j)`` admits, with
    ``-slope_h * |i - j|`` added to head h's scores when ``slopes`` are given (GQA: k/v heads repeated)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    rows = []
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                keys = [j for j in range(k.shape[2]) if allowed(b, i, j)]
                scores = k[b, h, keys] @ q[b, h, i] / math.sqrt(q.shape[-1])
                if slopes is not None:
                    scores = scores - slopes[h] * torch.tensor([abs(i - j) for j in keys], dtype=scores.dtype)
                rows.append(torch.softmax(scores, 0) @ v[b, h, keys])
    return torch.stack(rows).view(q.shape)


def qkv(heads=4, kv_heads=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, S, D, generator=g, dtype=torch.float64, requires_grad=True)
            for n in (heads, kv_heads, kv_heads)]


def check(spec: AttentionSpec, allowed, slopes=None, heads=4, kv_heads=4):
    """attend(spec) equals the hand reference in the output and in the gradients of q, k and v."""
    q, k, v = qkv(heads, kv_heads)
    got = attend(q, k, v, spec)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    want = reference(q2, k2, v2, allowed, slopes)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(got)
    (got * w).sum().backward()
    (want * w).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-10)


SEG = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])


def test_causal_window_matches_reference():
    check(AttentionSpec(window=3), lambda b, i, j: i - 3 < j <= i)
    check(AttentionSpec(window=1), lambda b, i, j: j == i)  # a window of one: the token itself
    check(AttentionSpec(window=5), lambda b, i, j: i - 5 < j <= i, heads=4, kv_heads=2)  # GQA
    check(AttentionSpec(), lambda b, i, j: j <= i)


def test_banded_sliding_window_matches_reference():
    """The CPU path of long windowed sequences: blocks of queries against the keys their window reaches."""
    same = lambda b, i, j: SEG[b, i] == SEG[b, j]  # noqa: E731
    banded = A.local_attend
    for w in (3, 4):
        spec = AttentionSpec(window=w, segment_ids=SEG, alibi_slopes=alibi_slopes(4).double())
        q, k, v = qkv(4, 2)
        want = reference(q, k, v, lambda b, i, j: i - w < j <= i and same(b, i, j), alibi_slopes(4).double())
        torch.testing.assert_close(banded(q, k, v, spec, block=w), want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(banded(q, k, v, AttentionSpec(window=w), block=5),
                                   reference(q, k, v, lambda b, i, j: i - w < j <= i), rtol=1e-10, atol=1e-10)
        g = torch.randn(B, 4, S, D, dtype=torch.float64)
        dq, dk = torch.autograd.grad((banded(q, k, v, spec, block=w) * g).sum(), (q, k))
        rq, rk = torch.autograd.grad((attend(q, k, v, spec) * g).sum(), (q, k))
        torch.testing.assert_close(dq, rq)
        torch.testing.assert_close(dk, rk)


def test_documents_match_reference():
    same = lambda b, i, j: SEG[b, i] == SEG[b, j]  # noqa: E731
    check(AttentionSpec(segment_ids=SEG), lambda b, i, j: j <= i and same(b, i, j))
    check(AttentionSpec(window=2, segment_ids=SEG), lambda b, i, j: i - 2 < j <= i and same(b, i, j))
    keys = torch.ones(B, S, dtype=torch.bool)
    keys[1, 9:] = False  # BERT: bidirectional, padding keys hidden, within documents
    check(AttentionSpec(causal=False, key_mask=keys, segment_ids=SEG),
          lambda b, i, j: bool(keys[b, j]) and same(b, i, j))


def test_alibi_matches_reference_and_slices_by_head():
    slopes = alibi_slopes(4).double()
    check(AttentionSpec(alibi_slopes=slopes), lambda b, i, j: j <= i, slopes)
    check(AttentionSpec(alibi_slopes=slopes, segment_ids=SEG, window=4),
          lambda b, i, j: i - 4 < j <= i and SEG[b, i] == SEG[b, j], slopes)
    # a rank holding heads 2..3 (tensor parallel, or context parallel after the all-to-all) uses their slopes
    spec = AttentionSpec(alibi_slopes=slopes).heads(2)
    assert spec.head_start == 2 and torch.equal(spec.slopes(2), slopes[2:])
    check(spec, lambda b, i, j: j <= i, slopes[2:], heads=2, kv_heads=2)


def test_flex_attention_mask_and_score_mods_match_the_dense_mask():
    """The CUDA path's block mask and ALiBi score modification, evaluated on every (b, h, i, j) by broadcasting
    (as flex attention calls them), equal the dense mask and bias the CPU path uses (flex itself: the device check
    in docs/attention.md)."""
    n, heads = 16, 4
    seg = torch.zeros(B, n, dtype=torch.long)
    seg[0, 5:], seg[1, 11:] = 1, 2
    keys = torch.ones(B, n, dtype=torch.bool)
    keys[1, 13:] = False
    b, h, i, j = (torch.arange(m).view(*[m if d == k else 1 for d in range(4)]) for k, m in enumerate((B, heads, n, n)))
    for spec in (AttentionSpec(window=5, segment_ids=seg, alibi_slopes=alibi_slopes(heads)),
                 AttentionSpec(causal=False, segment_ids=seg, key_mask=keys), AttentionSpec(window=3),
                 AttentionSpec(alibi_slopes=alibi_slopes(8)).heads(4)):
        mask = A._mask_mod(spec)(b, h, i, j)
        assert torch.equal(mask.expand(B, 1 if spec.segment_ids is None else B, n, n)[:, :1],
                           A.dense_mask(spec, n, n).expand(B, 1, n, n))
        bias = A.dense_bias(spec, heads, n, n, torch.float32)
        score_mod = A._score_mod(spec, heads, "cpu")
        if score_mod is not None:
            got = score_mod(torch.zeros(()), b, h, i, j).masked_fill(~mask, float("-inf"))
            torch.testing.assert_close(got.expand_as(bias.expand(B, heads, n, n)), bias.expand(B, heads, n, n))
    assert A._mask_mod(AttentionSpec(causal=False, alibi_slopes=alibi_slopes(4))) is None  # no mask: no block mask


def test_alibi_slopes_are_the_papers():
    assert alibi_slopes(8).tolist() == [2.0 ** -(i + 1) for i in range(8)]  # 1/2, 1/4, ..., 1/256
    # 12 heads (BLOOM-style, not a power of two): the 8 slopes of 8 heads, then every other one of 16 heads
    want = [2.0 ** -(i + 1) for i in range(8)] + [2.0 ** -(0.5 * k) for k in (1, 3, 5, 7)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(want), rtol=1e-6, atol=0)
    # 6 heads: the 4 of 4 heads (2^-2, 2^-4, 2^-6, 2^-8), then 2^-1 and 2^-3 (BLOOM's export parity checks it too)
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0 ** -k for k in (2, 4, 6, 8, 1, 3)]))


def test_kernel_choice():
    plain, window = AttentionSpec(), AttentionSpec(window=16)
    assert choose_kernel(plain, "cpu", 0.0, has_flex=True) == A.SDPA_CAUSAL
    assert choose_kernel(plain, "cuda", 0.1, has_flex=True) == A.SDPA_CAUSAL  # fused SDPA, flash on CUDA
    assert choose_kernel(window, "cpu", 0.0, has_flex=True) == A.SDPA_MASK  # CPU: the dense mask
    assert choose_kernel(window, "cuda", 0.0, has_flex=True) == A.FLEX  # CUDA: a block mask, nothing materialised
    assert choose_kernel(window, "cuda", 0.1, has_flex=True) == A.SDPA_MASK  # flex has no attention dropout
    assert choose_kernel(window, "cuda", 0.0, has_flex=False) == A.SDPA_MASK  # older torch: the fallback
    assert choose_kernel(AttentionSpec(alibi_slopes=alibi_slopes(4)), "cuda", 0.0, has_flex=True) == A.FLEX
    assert choose_kernel(AttentionSpec(causal=False), "cpu", 0.0, has_flex=True) == A.SDPA_CAUSAL
    padding = AttentionSpec(causal=False, key_mask=torch.ones(1, 4, dtype=torch.bool))  # BERT: SDPA's mask, as before
    assert choose_kernel(padding, "cuda", 0.0, has_flex=True) == A.SDPA_MASK
    # a window over more than two blocks of queries runs banded where flex cannot serve
    long = dict(q_len=4096, k_len=4096)
    assert choose_kernel(window, "cpu", 0.0, has_flex=True, **long) == A.SDPA_LOCAL
    assert choose_kernel(window, "cuda", 0.1, has_flex=True, **long) == A.SDPA_LOCAL
    assert choose_kernel(window, "cuda", 0.0, has_flex=True, **long) == A.FLEX
    assert choose_kernel(AttentionSpec(window=4096), "cpu", 0.0, has_flex=True, **long) == A.SDPA_MASK  # no gain
    assert choose_kernel(AttentionSpec(causal=False, window=16), "cpu", 0.0, has_flex=True, **long) == A.SDPA_MASK


def tiny(**kw) -> GPTArgs:
    return GPTArgs(**{**dict(vocab_size=64, num_layers=6, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                             ffn_hidden_size=64, seq_length=S), **kw})


def test_pattern_gives_local_layers_then_a_global_one():
    assert [tiny(sliding_window=4, sliding_window_pattern=3).layer_window(i) for i in range(6)] == \
        [4, 4, None, 4, 4, None]  # Gemma 3 style (N-1 local, one global)
    torch.manual_seed(0)
    model = GPT(tiny(sliding_window=4, sliding_window_pattern=2))
    windows = [layer.self_attn.window for layer in model.layers]
    assert windows == [4, None, 4, None, 4, None]
    for layer, w in zip(model.layers, windows):  # each layer's own spec is its mask
        rule = (lambda b, i, j: j <= i) if w is None else (lambda b, i, j: i - 4 < j <= i)
        check(layer.self_attn.spec(), rule)
    assert [layer.self_attn.window for layer in GPT(tiny(sliding_window=4)).layers] == [4] * 6  # Mistral: all
    from pretrain.flops import gpt_flops_per_token

    # MFU: the 3 windowed layers' queries see 4 keys, not seq=12: 12 * hidden * (12 - 4) FLOPs fewer each
    full, windowed = (gpt_flops_per_token(tiny(**kw))["model"] for kw in ({}, {"sliding_window": 4,
                                                                              "sliding_window_pattern": 2}))
    assert full - windowed == 3 * 12 * 32 * (S - 4)


@pytest.mark.parametrize("over,match", [
    ({"model.sliding_window": 0}, "model.sliding_window=0; expected a window of >= 1"),
    ({"model.sliding_window": -3}, "model.sliding_window=-3"),
    ({"model.sliding_window_pattern": 2}, "model.sliding_window_pattern=2 needs model.sliding_window"),
    ({"model.sliding_window": 8, "model.sliding_window_pattern": 0}, "model.sliding_window_pattern=0; expected 1.."),
    ({"model.sliding_window": 8, "model.sliding_window_pattern": 3}, "expected 1..model.num_layers=2"),
    ({"model.family": "bert", "model.position_embedding": "alibi"}, "model.position_embedding=alibi \\(BERT: learned"),
    ({"model.family": "bert", "model.sliding_window": 8}, "sliding_window"),
])
def test_invalid_attention_configs_are_refused(over, match):
    from pretrain.models import resolve_args

    c = structured_cfg(**{k.replace(".", "__"): v for k, v in over.items()})
    with pytest.raises(ConfigError, match=match):
        resolve_args(c.model, 100)


def test_alibi_has_no_position_tables_and_t5_refuses_document_masking():
    from pretrain.data.documents import check_document_mask

    model = GPT(tiny(position_embedding="alibi"))
    assert model.embed_positions is None and not hasattr(model, "rope_cos")
    assert all(n.endswith("alibi_slopes") for n, _ in model.named_buffers())
    assert not any("alibi" in k for k in model.state_dict())  # derived, not saved
    with pytest.raises(ConfigError, match="data.document_mask=true is implemented for model.family gpt and bert"):
        check_document_mask("t5", True)


def test_alibi_evaluates_at_twice_its_training_length(capsys):
    """Train a tiny ALiBi model on a repeating pattern at length 32, then evaluate it at 32 and 64: no table limits
    the length, and the loss at 64 stays near the one at 32 (what ALiBi's extrapolation promises)."""
    torch.manual_seed(0)
    args = tiny(num_layers=2, seq_length=32, position_embedding="alibi", embedding_norm=True)
    model = GPT(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    period = torch.randint(1, 64, (7,))

    def batch(n):
        start = torch.randint(0, 7, (8, 1))
        return period[(start + torch.arange(n + 1)) % 7]

    for _ in range(25):
        ids = batch(32)
        loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        at = {n: model(b[:, :-1], b[:, 1:]).item() for n in (32, 64) for b in [batch(n)]}
    with capsys.disabled():
        print(f"\nALiBi tiny GPT trained at 32 tokens: eval loss {at[32]:.4f} at 32, {at[64]:.4f} at 64 (2x)")
    assert math.isfinite(at[64]) and at[64] < 0.5 * math.log(64)  # far below chance: it still predicts the pattern
