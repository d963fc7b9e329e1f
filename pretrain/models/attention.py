"""Core attention: one function, :func:`attend`, for every attention variant the models have.

``attend(q, k, v, spec, dropout_p)`` takes ``[batch, heads, seq, head_dim]`` queries, keys and values (keys and
values may have fewer heads: grouped-query attention) and an :class:`AttentionSpec` saying which keys each query
sees and what is added to the scores:

* ``causal``: key ``j`` visible to query ``i`` only when ``j <= i``;
* ``window``: a sliding window of ``W`` keys, the query's own position included: ``i - W < j <= i`` (the
  convention of Hugging Face's Mistral and Gemma: ``kv_idx > q_idx - sliding_window``);
* ``segment_ids``: document masking of packed sequences: ``segment_ids[b, i] == segment_ids[b, j]``;
* ``key_mask``: padding (``True`` = a real key), BERT's ``attention_mask``;
* ``alibi_slopes``: ALiBi (Press et al. 2022): ``-slope_h * |i - j|`` added to head ``h``'s scores.

Positions in the masks are positions in the *whole* sequence (``q_offset`` shifts the queries' for a caller that
passes a chunk of them) and per-head values are indexed by the *global* head number (``head_start`` is the global
index of ``q``'s first head): a tensor-parallel rank, or a context-parallel one after an all-to-all over heads,
passes ``spec.heads(start)`` and its own slice of the heads.

Which kernel runs is :func:`choose_kernel`'s choice (a pure function of the spec, shapes, device and what is
installed, so it is unit-tested on CPU):

* plain causal or unmasked attention: ``scaled_dot_product_attention`` with ``is_causal`` (flash / memory-efficient
  kernels on CUDA; exactly the call the models made before this module);
* on CUDA, a window, documents or ALiBi: ``flex_attention`` (compiled) with a block mask: no ``seq x seq`` mask is
  materialised and fully masked blocks are skipped (if flex fails to compile, a warning and the paths below);
* elsewhere (CPU, attention dropout, no flex): a sliding window over a sequence longer than two blocks runs
  banded (:func:`local_attend`: blocks of queries against only the keys their window reaches, each block one
  SDPA call with a small mask, so time and memory grow as ``seq x window``, not ``seq^2``); anything else builds
  the dense boolean mask or additive bias for SDPA.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SDPA_CAUSAL, SDPA_MASK, SDPA_LOCAL, FLEX = "sdpa_causal", "sdpa_mask", "sdpa_local", "flex"
LOCAL_BLOCK = 256  # queries per block of the banded sliding-window path (at least the window)


@dataclass(frozen=True, eq=False)  # eq=False: holds tensors (compared by identity)
class AttentionSpec:
    """What :func:`attend` masks and adds (module docstring). ``None`` everywhere but ``causal``: plain attention."""

    causal: bool = True
    window: Optional[int] = None
    alibi_slopes: Optional[torch.Tensor] = None  # [num_heads of the whole model], float32
    head_start: int = 0  # global index of the first head of the q passed to attend
    segment_ids: Optional[torch.Tensor] = None  # [batch, seq] int: document of each position
    key_mask: Optional[torch.Tensor] = None  # [batch, seq] bool: True = a real (not padding) key
    q_offset: int = 0  # position in the sequence of the first query passed to attend

    @property
    def plain(self) -> bool:
        """Nothing but (optionally) causality: the fused SDPA call, no mask."""
        return self.window is None and self.alibi_slopes is None and self.segment_ids is None \
            and self.key_mask is None and self.q_offset == 0

    def heads(self, start: int) -> AttentionSpec:
        """The spec for a q whose first head is this spec's head ``start`` (a slice of the heads)."""
        return dataclasses.replace(self, head_start=self.head_start + start)

    def slopes(self, num_heads: int) -> Optional[torch.Tensor]:
        """The ALiBi slopes of the ``num_heads`` heads from ``head_start`` on (None without ALiBi)."""
        if self.alibi_slopes is None:
            return None
        return self.alibi_slopes[self.head_start:self.head_start + num_heads]


# --------------------------------------------------------------------------------------------------------- ALiBi


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The paper's head slopes, as BLOOM computes them: for ``n`` a power of two the geometric sequence
    ``2^(-8/n), 2^(-16/n), ..., 2^-8``; otherwise those of the largest power of two ``p < n``, followed by every
    other slope of ``2p`` heads (``2^(-4/p) ^ (1, 3, 5, ...)``) until there are ``n``."""
    if num_heads < 1:
        raise ValueError(f"ALiBi needs at least one head, got {num_heads}")
    p = 2 ** int(math.floor(math.log2(num_heads)))
    base = 2.0 ** (-8.0 / p)
    slopes = [base ** (i + 1) for i in range(p)]
    if p < num_heads:
        extra = 2.0 ** (-4.0 / p)
        slopes += [extra ** (2 * i + 1) for i in range(num_heads - p)]
    return torch.tensor(slopes, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------- dense masks


def dense_mask(spec: AttentionSpec, q_len: int, k_len: int, device=None) -> Optional[torch.Tensor]:
    """The boolean mask (``True`` = attend) of ``spec``, ``[batch or 1, 1, q_len, k_len]``; None when every key is
    visible to every query. The reference the kernels are tested against."""
    i = torch.arange(q_len, device=device)[:, None] + spec.q_offset
    j = torch.arange(k_len, device=device)[None, :]
    mask = None

    def both(a, b):
        return b if a is None else a & b

    if spec.causal:
        mask = both(mask, j <= i)
    if spec.window is not None:
        mask = both(mask, j > i - spec.window)
    if mask is not None:
        mask = mask[None, None]
    if spec.segment_ids is not None:
        seg = spec.segment_ids
        same = seg[:, spec.q_offset:spec.q_offset + q_len, None] == seg[:, None, :k_len]
        mask = both(mask, same[:, None])
    if spec.key_mask is not None:
        mask = both(mask, spec.key_mask[:, None, None, :k_len].bool())
    return mask


def alibi_bias(slopes: torch.Tensor, q_len: int, k_len: int, q_offset: int = 0, device=None) -> torch.Tensor:
    """``-slope_h * |i - j|``, ``[1, heads, q_len, k_len]`` float32."""
    i = torch.arange(q_len, device=device)[:, None] + q_offset
    j = torch.arange(k_len, device=device)[None, :]
    return -slopes.to(device=device, dtype=torch.float32)[None, :, None, None] * (i - j).abs()[None, None]


def dense_bias(spec: AttentionSpec, num_heads: int, q_len: int, k_len: int, dtype: torch.dtype,
               device=None) -> Optional[torch.Tensor]:
    """What :func:`attend` passes to SDPA as ``attn_mask``: the boolean mask, or, with ALiBi, an additive float
    bias with ``-inf`` where the mask is ``False``."""
    mask = dense_mask(spec, q_len, k_len, device)
    slopes = spec.slopes(num_heads)
    if slopes is None:
        return mask
    bias = alibi_bias(slopes, q_len, k_len, spec.q_offset, device)
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))
    return bias.to(dtype)


# ---------------------------------------------------------------------------------------------------------- kernel


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def choose_kernel(spec: AttentionSpec, device_type: str, dropout_p: float, *, has_flex: bool,
                  q_len: int = 0, k_len: int = 0) -> str:
    """Which kernel :func:`attend` runs: ``sdpa_causal`` (no mask), ``flex`` (block mask, CUDA only: flex
    attention on CPU is no faster than a dense mask and needs a compiler), ``sdpa_local`` (banded: a causal window
    over more than two blocks of ``max(window, LOCAL_BLOCK)`` queries) or ``sdpa_mask`` (a dense mask or bias).
    The last two are also the fallback where flex cannot serve: attention dropout (flex has none), or no flex."""
    if spec.plain:
        return SDPA_CAUSAL
    variant = spec.window is not None or spec.segment_ids is not None or spec.alibi_slopes is not None
    if variant and device_type == "cuda" and has_flex and dropout_p == 0.0:  # padding alone: SDPA's mask, as before
        return FLEX
    if (spec.window is not None and spec.causal and spec.q_offset == 0 and q_len == k_len
            and q_len > 2 * max(spec.window, LOCAL_BLOCK)):
        return SDPA_LOCAL
    return SDPA_MASK


def local_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec, dropout_p: float = 0.0,
                 block: int | None = None) -> torch.Tensor:
    """Causal sliding-window attention by blocks: queries ``[s0, s1)`` (``block`` of them, at least the window)
    see keys ``[s0 - window + 1, s1)`` only; each block is one SDPA call under ``spec``'s mask shifted to it."""
    w, s = spec.window, q.shape[2]
    block = max(w, block or LOCAL_BLOCK)
    gqa = q.shape[1] != k.shape[1]
    out = []
    for s0 in range(0, s, block):
        s1, k0 = min(s, s0 + block), max(0, s0 - w + 1)
        sub = dataclasses.replace(
            spec, q_offset=s0 - k0,
            segment_ids=None if spec.segment_ids is None else spec.segment_ids[:, k0:s1],
            key_mask=None if spec.key_mask is None else spec.key_mask[:, k0:s1])
        mask = dense_bias(sub, q.shape[1], s1 - s0, s1 - k0, q.dtype, q.device)
        out.append(F.scaled_dot_product_attention(q[:, :, s0:s1], k[:, :, k0:s1], v[:, :, k0:s1], attn_mask=mask,
                                                  dropout_p=dropout_p, enable_gqa=gqa))
    return torch.cat(out, dim=2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
           dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention of ``q`` ``[b, hq, sq, d]`` over ``k``/``v`` ``[b, hkv, sk, d]`` (``hq`` a multiple of
    ``hkv``) under ``spec``; returns ``[b, hq, sq, d]``."""
    global _HAS_FLEX
    gqa = q.shape[1] != k.shape[1]
    kernel = choose_kernel(spec, q.device.type, dropout_p, has_flex=_HAS_FLEX, q_len=q.shape[2], k_len=k.shape[2])
    if kernel == SDPA_CAUSAL:
        return F.scaled_dot_product_attention(q, k, v, is_causal=spec.causal, dropout_p=dropout_p, enable_gqa=gqa)
    if kernel == FLEX:
        try:
            return flex_attend(q, k, v, spec)
        except torch.cuda.OutOfMemoryError:
            raise  # a real shortage: the dense-mask fallback would need more memory, not less
        except Exception as e:  # noqa: BLE001 - no compiler / triton for this GPU: the SDPA paths compute the same
            log.warning("flex attention failed (%s: %s); attention falls back to SDPA with masks", type(e).__name__, e)
            _HAS_FLEX = False
            return attend(q, k, v, spec, dropout_p)
    if kernel == SDPA_LOCAL:
        return local_attend(q, k, v, spec, dropout_p)
    mask = dense_bias(spec, q.shape[1], q.shape[2], k.shape[2], q.dtype, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


# ------------------------------------------------------------------------------------------------ flex attention

_flex_compiled = None
_block_masks: dict = {}  # (inputs of the mask) -> BlockMask; holds the segment tensors it keys on, so ids stay unique


def _mask_mod(spec: AttentionSpec):
    """``spec``'s mask as flex attention's ``mask_mod(b, h, q_idx, kv_idx)`` (None: every key visible)."""
    causal, window, off, seg, keys = spec.causal, spec.window, spec.q_offset, spec.segment_ids, spec.key_mask
    if not (causal or window is not None or seg is not None or keys is not None):
        return None

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + off
        ok = kv_idx >= 0
        if causal:
            ok = ok & (kv_idx <= i)
        if window is not None:
            ok = ok & (kv_idx > i - window)
        if seg is not None:
            ok = ok & (seg[b, i] == seg[b, kv_idx])
        if keys is not None:
            ok = ok & keys[b, kv_idx]
        return ok

    return mask_mod


def _score_mod(spec: AttentionSpec, num_heads: int, device):
    """ALiBi as flex attention's ``score_mod(score, b, h, q_idx, kv_idx)`` for ``num_heads`` heads (None without)."""
    slopes = spec.slopes(num_heads)
    if slopes is None:
        return None
    slopes, off = slopes.to(device=device, dtype=torch.float32), spec.q_offset

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + off - kv_idx).abs()

    return score_mod


def _block_mask(spec: AttentionSpec, batch: int, q_len: int, k_len: int, device):
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = _mask_mod(spec)
    if mask_mod is None:
        return None
    per_sample = spec.segment_ids is not None or spec.key_mask is not None
    key = (spec.causal, spec.window, spec.q_offset, q_len, k_len, str(device),
           id(spec.segment_ids), id(spec.key_mask))
    hit = _block_masks.get(key)
    if hit is not None and hit[1] is spec.segment_ids and hit[2] is spec.key_mask:
        return hit[0]
    mask = create_block_mask(mask_mod, batch if per_sample else None, None, q_len, k_len, device=device)
    if len(_block_masks) >= 8:
        _block_masks.pop(next(iter(_block_masks)))
    _block_masks[key] = (mask, spec.segment_ids, spec.key_mask)
    return mask


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec) -> torch.Tensor:
    """:func:`attend` through ``flex_attention`` (compiled once): the mask as a block mask, whose fully masked
    blocks are skipped, ALiBi as a score modification."""
    global _flex_compiled
    from torch.nn.attention.flex_attention import flex_attention

    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    block_mask = _block_mask(spec, q.shape[0], q.shape[2], k.shape[2], q.device)
    return _flex_compiled(q, k, v, score_mod=_score_mod(spec, q.shape[1], q.device), block_mask=block_mask,
                          enable_gqa=q.shape[1] != k.shape[1])


_HAS_FLEX = flex_available()
