"""GPT's Hugging Face adapter: ``GPT2LMHeadModel`` (GPT-2 style: learned positions, LayerNorm, tanh GELU,
biases, tied, multi-head), ``LlamaForCausalLM`` (LLaMA style: RoPE, RMSNorm, SwiGLU, no biases, GQA) and
``MixtralForCausalLM`` (LLaMA style with a mixture of SwiGLU experts in every layer, top-2 routing with
renormalised weights, no token dropping). LLaMA's names are ours under ``model.``; GPT-2's are a rename plus
q/k/v concatenated into ``c_attn`` and every matrix transposed for its ``Conv1D``; Mixtral's are LLaMA's for
everything but the experts, which are written as the released checkpoints and ``save_pretrained`` hold them
(``block_sparse_moe.gate`` and one ``w1``/``w3``/``w2`` per expert: gate, up, down), cut from our stacked
``experts.gate_up_proj`` [E, 2f, h] (gate rows first) and ``experts.down_proj`` [E, h, f]. Import takes that
format and also the stacked one ``transformers`` 5 holds in memory (``mlp.experts.gate_up_proj``).

``MistralForCausalLM`` is LLaMA style with a sliding window on every layer (``sliding_window=W``: Hugging Face's
mask ``kv_idx > q_idx - W`` is ours, ``i - W < j <= i``); its names are LLaMA's. ``BloomForCausalLM`` is ALiBi,
the embedding LayerNorm, LayerNorm with biases, tanh GELU, multi-head, an MLP of 4 x hidden, tied: a rename, plus
q/k/v fused into ``query_key_value`` *per head* (rows ``[head, (q|k|v), head_dim]``, not q-then-k-then-v)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from pretrain.core.errors import CheckpointError
from pretrain.models.family import HFAdapter

GPT2, LLAMA, MIXTRAL = "GPT2LMHeadModel", "LlamaForCausalLM", "MixtralForCausalLM"
MISTRAL, BLOOM = "MistralForCausalLM", "BloomForCausalLM"
_BLOOM_LAYER = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
                "self_attn.o_proj": "self_attention.dense", "mlp.up_proj": "mlp.dense_h_to_4h",
                "mlp.down_proj": "mlp.dense_4h_to_h"}
_GPT2_LAYER = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}
_GPT2_CONV1D = {"self_attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"}  # .t()


def _llama_names(args: Any) -> dict[str, str]:
    from pretrain.models.gpt.model import GPT

    with torch.device("meta"):
        names = list(GPT(args).state_dict())
    m = {k: "model." + k for k in names if k != "lm_head.weight"}
    if not args.tie_word_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    return m


def _is_expert(name: str) -> bool:
    return ".mlp.gate." in name or ".mlp.experts." in name


def _moe_misfit(a: dict[str, Any]) -> list[str]:
    """Why a mixture-of-experts GPT is no ``MixtralForCausalLM`` (its activation is checked with LLaMA's)."""
    out = []
    if not a.get("num_experts"):
        return ["num_experts=0 (needs a mixture of experts: a dense model is LlamaForCausalLM)"]
    if a.get("moe_layer_freq", 1) != 1:
        out.append(f"moe_layer_freq={a['moe_layer_freq']} (needs 1: every Mixtral layer is a mixture of experts)")
    if a.get("moe_router_topk") != 2:
        out.append(f"moe_router_topk={a.get('moe_router_topk')} (needs 2: Mixtral routes each token to its top-2 "
                   "experts with renormalised weights)")
    if a.get("moe_capacity_factor") is not None:
        out.append(f"moe_capacity_factor={a['moe_capacity_factor']} (needs null: Mixtral never drops a token, so "
                   "its logits would differ from the trained model's)")
    return out


def _attention_misfit(arch: str, a: dict[str, Any]) -> list[str]:
    """Why the attention variant of a model (window, its pattern, ALiBi's embedding norm) is not ``arch``'s."""
    out = []
    windowed = arch in (MISTRAL, MIXTRAL)
    if a.get("sliding_window_pattern") is not None:
        out.append(f"sliding_window_pattern={a['sliding_window_pattern']} (needs null: {arch} has no global layers "
                   "between windowed ones)")
    if a.get("sliding_window") is not None and not windowed:
        out.append(f"sliding_window={a['sliding_window']} (needs null: {arch} attends to every earlier token; a "
                   f"LLaMA-style model with a window exports as {MISTRAL})")
    if arch == MISTRAL and a.get("sliding_window") is None:
        out.append(f"sliding_window=None (needs a window: without one the model is {LLAMA})")
    if a.get("embedding_norm") and arch != BLOOM:
        out.append(f"embedding_norm=True (needs False: {arch} has no LayerNorm after the embedding)")
    return out


def _bloom_misfit(a: dict[str, Any]) -> list[str]:
    need = dict(position_embedding="alibi", normalization="layernorm", activation="gelu", bias=True,
                tie_word_embeddings=True, embedding_norm=True, num_key_value_heads=a["num_attention_heads"],
                ffn_hidden_size=4 * a["hidden_size"], num_experts=0)
    return [f"{k}={a.get(k)} (needs {v})" for k, v in need.items() if a.get(k, 0) != v]


class GPTAdapter(HFAdapter):
    architectures = (GPT2, LLAMA, MIXTRAL, MISTRAL, BLOOM)

    def misfit(self, arch: str, args: Any) -> list[str]:
        a = asdict(args)
        if arch == BLOOM:
            return _bloom_misfit(a) + _attention_misfit(arch, a)
        return self._misfit(arch, a) + _attention_misfit(arch, a)

    def _misfit(self, arch: str, a: dict[str, Any]) -> list[str]:
        if arch == GPT2:
            need = dict(position_embedding="learned", normalization="layernorm", activation="gelu", bias=True,
                        tie_word_embeddings=True, num_key_value_heads=a["num_attention_heads"])
        else:
            need = dict(position_embedding="rope", normalization="rmsnorm", activation="swiglu", bias=False)
        why = [f"{k}={a[k]} (needs {v})" for k, v in need.items() if a[k] != v]
        if arch == MIXTRAL:
            if a["activation"] != "swiglu" and a.get("num_experts"):
                why = [w if not w.startswith("activation=") else
                       f"{w[:-1]}: GELU experts have no place in MixtralForCausalLM, whose experts are SwiGLU)"
                       for w in why]
            return why + _moe_misfit(a)
        if a.get("num_experts"):  # GPT-2 and LLaMA have dense MLPs only
            why.append(f"num_experts={a['num_experts']} (needs 0: a mixture of experts exports as {MIXTRAL})")
        return why

    def to_hf(self, arch: str, args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if arch == BLOOM:
            return _bloom_to_hf(args, sd)
        if arch in (LLAMA, MISTRAL):
            return {theirs: sd[ours].contiguous() for ours, theirs in _llama_names(args).items()}
        if arch == MIXTRAL:
            out = {theirs: sd[ours] for ours, theirs in _llama_names(args).items() if not _is_expert(ours)}
            f = args.moe_ffn_hidden_size
            for i in range(args.num_layers):
                p, q = f"layers.{i}.mlp.", f"model.layers.{i}.block_sparse_moe."
                out[q + "gate.weight"] = sd[p + "gate.weight"]
                gate_up, down = sd[p + "experts.gate_up_proj"], sd[p + "experts.down_proj"]
                for j in range(args.num_experts):
                    out[f"{q}experts.{j}.w1.weight"] = gate_up[j, :f]
                    out[f"{q}experts.{j}.w3.weight"] = gate_up[j, f:]
                    out[f"{q}experts.{j}.w2.weight"] = down[j]
            return {k: v.contiguous() for k, v in out.items()}
        out = {"transformer.wte.weight": sd["embed_tokens.weight"],
               "transformer.wpe.weight": sd["embed_positions.weight"],
               "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"]}
        for i in range(args.num_layers):
            p, q = f"layers.{i}.", f"transformer.h.{i}."
            for ours, theirs in _GPT2_LAYER.items():
                for w in ("weight", "bias"):
                    out[f"{q}{theirs}.{w}"] = sd[f"{p}{ours}.{w}"]
            a = p + "self_attn."
            out[q + "attn.c_attn.weight"] = torch.cat([sd[f"{a}{n}_proj.weight"] for n in "qkv"]).t()
            out[q + "attn.c_attn.bias"] = torch.cat([sd[f"{a}{n}_proj.bias"] for n in "qkv"])
            for ours, theirs in _GPT2_CONV1D.items():
                out[f"{q}{theirs}.weight"] = sd[f"{p}{ours}.weight"].t()
                out[f"{q}{theirs}.bias"] = sd[f"{p}{ours}.bias"]
        return {k: v.contiguous() for k, v in out.items()}

    def from_hf(self, arch: str, args: Any, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        if arch == BLOOM:
            return _bloom_from_hf(args, get)
        if arch in (LLAMA, MIXTRAL, MISTRAL):
            names = _llama_names(args)
            out = {ours: get(theirs).contiguous() for ours, theirs in names.items() if not _is_expert(ours)}
            if arch == MIXTRAL:
                for i in range(args.num_layers):
                    out.update(_mixtral_experts(args, i, get))
            if args.tie_word_embeddings:
                out["lm_head.weight"] = out["embed_tokens.weight"]
            return out
        h = args.hidden_size
        out = {"embed_tokens.weight": get("transformer.wte.weight"),
               "embed_positions.weight": get("transformer.wpe.weight"),
               "norm.weight": get("transformer.ln_f.weight"), "norm.bias": get("transformer.ln_f.bias")}
        out["lm_head.weight"] = out["embed_tokens.weight"]
        for i in range(args.num_layers):
            p, q = f"layers.{i}.", f"transformer.h.{i}."
            for ours, theirs in _GPT2_LAYER.items():
                for w in ("weight", "bias"):
                    out[f"{p}{ours}.{w}"] = get(f"{q}{theirs}.{w}")
            qkv_w, qkv_b = get(q + "attn.c_attn.weight").t(), get(q + "attn.c_attn.bias")
            for j, n in enumerate("qkv"):
                out[f"{p}self_attn.{n}_proj.weight"] = qkv_w[j * h : (j + 1) * h]
                out[f"{p}self_attn.{n}_proj.bias"] = qkv_b[j * h : (j + 1) * h]
            for ours, theirs in _GPT2_CONV1D.items():
                out[f"{p}{ours}.weight"] = get(f"{q}{theirs}.weight").t()
                out[f"{p}{ours}.bias"] = get(f"{q}{theirs}.bias")
        return {k: v.contiguous() for k, v in out.items()}

    def hf_config(self, arch: str, args: Any, special: dict[str, int]) -> Any:
        import transformers

        eod = next((special[t] for t in ("<|endoftext|>", "</s>") if t in special), None)
        if arch == MIXTRAL:
            return transformers.MixtralConfig(
                vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.moe_ffn_hidden_size,
                num_hidden_layers=args.num_layers, num_attention_heads=args.num_attention_heads,
                num_key_value_heads=args.num_key_value_heads, head_dim=args.head_dim,
                max_position_embeddings=args.seq_length, rms_norm_eps=args.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": float(args.rotary_base)},
                tie_word_embeddings=args.tie_word_embeddings, hidden_act="silu", sliding_window=args.sliding_window,
                num_local_experts=args.num_experts, num_experts_per_tok=args.moe_router_topk,
                router_aux_loss_coef=args.moe_aux_loss_coeff, router_jitter_noise=0.0, output_router_logits=False,
                attention_dropout=args.attention_dropout, initializer_range=args.init_method_std,
                bos_token_id=eod, eos_token_id=eod, pad_token_id=None,
            )
        if arch == BLOOM:
            return transformers.BloomConfig(
                vocab_size=args.vocab_size, hidden_size=args.hidden_size, n_layer=args.num_layers,
                n_head=args.num_attention_heads, layer_norm_epsilon=args.norm_eps,
                initializer_range=args.init_method_std,
                hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
                apply_residual_connection_post_layernorm=False, pretraining_tp=1, slow_but_exact=False,
                tie_word_embeddings=True, bos_token_id=eod, eos_token_id=eod, pad_token_id=None,
            )
        if arch == MISTRAL:
            return transformers.MistralConfig(
                vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.ffn_hidden_size,
                num_hidden_layers=args.num_layers, num_attention_heads=args.num_attention_heads,
                num_key_value_heads=args.num_key_value_heads, head_dim=args.head_dim,
                max_position_embeddings=args.seq_length, rms_norm_eps=args.norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": float(args.rotary_base)},
                sliding_window=args.sliding_window, tie_word_embeddings=args.tie_word_embeddings, hidden_act="silu",
                attention_dropout=args.attention_dropout, initializer_range=args.init_method_std,
                bos_token_id=eod, eos_token_id=eod, pad_token_id=None,
            )
        if arch == GPT2:
            return transformers.GPT2Config(
                vocab_size=args.vocab_size, n_positions=args.seq_length, n_embd=args.hidden_size,
                n_layer=args.num_layers, n_head=args.num_attention_heads, n_inner=args.ffn_hidden_size,
                activation_function="gelu_new",
                resid_pdrop=args.hidden_dropout, embd_pdrop=args.hidden_dropout, attn_pdrop=args.attention_dropout,
                layer_norm_epsilon=args.norm_eps, initializer_range=args.init_method_std, tie_word_embeddings=True,
                bos_token_id=eod, eos_token_id=eod,
            )
        return transformers.LlamaConfig(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.ffn_hidden_size,
            num_hidden_layers=args.num_layers, num_attention_heads=args.num_attention_heads,
            num_key_value_heads=args.num_key_value_heads, max_position_embeddings=args.seq_length,
            rms_norm_eps=args.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": float(args.rotary_base)},
            tie_word_embeddings=args.tie_word_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
            attention_dropout=args.attention_dropout, initializer_range=args.init_method_std,
            bos_token_id=eod, eos_token_id=eod, pad_token_id=None,
        )

    def args_from_hf_config(self, arch: str, c: dict[str, Any], where: Path) -> dict[str, Any]:
        def act_error(value: Any) -> CheckpointError:
            return CheckpointError(f"{where}: {arch} with activation {value!r} has no counterpart in our models")

        if arch == GPT2:
            if c.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
                raise act_error(c.get("activation_function"))
            n = c.get("n_embd", 768)
            return dict(vocab_size=c["vocab_size"], num_layers=c["n_layer"], hidden_size=n,
                        num_attention_heads=c["n_head"], num_key_value_heads=c["n_head"],
                        ffn_hidden_size=c.get("n_inner") or 4 * n, seq_length=c["n_positions"],
                        position_embedding="learned", normalization="layernorm", activation="gelu", bias=True,
                        tie_word_embeddings=True, norm_eps=float(c.get("layer_norm_epsilon", 1e-5)))
        if arch == BLOOM:
            return _bloom_args(c, where)
        if c.get("hidden_act", "silu") != "silu":
            raise act_error(c.get("hidden_act"))
        if arch == MIXTRAL:
            return _mixtral_args(c, where)
        if c.get("attention_bias") or c.get("mlp_bias"):
            raise CheckpointError(f"{where}: LlamaForCausalLM with attention_bias/mlp_bias has no counterpart in our "
                                  "models")
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"{where}: RoPE scaling {rope.get('rope_type')!r} is not supported (plain RoPE only)")
        heads = c["num_attention_heads"]
        if c.get("head_dim") not in (None, c["hidden_size"] // heads):
            raise CheckpointError(f"{where}: head_dim={c['head_dim']} != hidden_size/heads is not supported")
        out = dict(vocab_size=c["vocab_size"], num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"],
                   num_attention_heads=heads, num_key_value_heads=c.get("num_key_value_heads") or heads,
                   ffn_hidden_size=c["intermediate_size"], seq_length=c["max_position_embeddings"],
                   position_embedding="rope", normalization="rmsnorm", activation="swiglu", bias=False,
                   tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
                   rotary_base=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
                   norm_eps=float(c.get("rms_norm_eps", 1e-6)))  # LlamaConfig's and MistralConfig's default
        if arch == MISTRAL:
            if c.get("layer_types") and len(set(c["layer_types"])) > 1:
                kinds = sorted(set(c["layer_types"]))
                raise CheckpointError(f"{where}: MistralForCausalLM with mixed layer_types {kinds} is not supported "
                                      "(every layer windowed, or none)")
            out["sliding_window"] = _window(c)
        return out

    def tokenizer_specials(self, arch: str, special: dict[str, int]) -> dict[str, Any]:  # the same for all three
        eod = "<|endoftext|>" if "<|endoftext|>" in special else None
        return dict(bos_token=eod, eos_token=eod, unk_token=eod)


def _mixtral_experts(args: Any, i: int, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layer ``i``'s router and stacked experts from a Mixtral state dict: the released format (one ``w1``/``w3``/
    ``w2`` per expert under ``block_sparse_moe``), else the stacked one (``mlp.experts.gate_up_proj``)."""
    p, legacy, stacked = f"layers.{i}.mlp.", f"model.layers.{i}.block_sparse_moe.", f"model.layers.{i}.mlp."
    try:
        router = get(legacy + "gate.weight")
    except CheckpointError as first:
        try:
            return {p + "gate.weight": get(stacked + "gate.weight").contiguous(),
                    p + "experts.gate_up_proj": get(stacked + "experts.gate_up_proj").contiguous(),
                    p + "experts.down_proj": get(stacked + "experts.down_proj").contiguous()}
        except CheckpointError:
            raise first from None
    E = args.num_experts
    gate_up = torch.stack([torch.cat([get(f"{legacy}experts.{j}.w1.weight"), get(f"{legacy}experts.{j}.w3.weight")])
                           for j in range(E)])
    down = torch.stack([get(f"{legacy}experts.{j}.w2.weight") for j in range(E)])
    return {p + "gate.weight": router.contiguous(), p + "experts.gate_up_proj": gate_up,
            p + "experts.down_proj": down}


def _window(c: dict[str, Any]) -> Any:
    """A Mistral/Mixtral config's sliding window as our ``sliding_window``: None where it covers every position."""
    w = c.get("sliding_window")
    return None if w is None or w >= c["max_position_embeddings"] else int(w)


def _mixtral_args(c: dict[str, Any], where: Path) -> dict[str, Any]:
    """Our args of a Mixtral ``config.json``; refused where our model would compute something else."""
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"{where}: RoPE scaling {rope.get('rope_type')!r} is not supported (plain RoPE only)")
    heads, h = c["num_attention_heads"], c["hidden_size"]
    if c.get("head_dim") not in (None, h // heads):
        raise CheckpointError(f"{where}: head_dim={c['head_dim']} != hidden_size/heads is not supported")
    return dict(sliding_window=_window(c), vocab_size=c["vocab_size"], num_layers=c["num_hidden_layers"],
                hidden_size=h,
                num_attention_heads=heads, num_key_value_heads=c.get("num_key_value_heads") or heads,
                seq_length=c["max_position_embeddings"], position_embedding="rope", normalization="rmsnorm",
                activation="swiglu", bias=False, tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
                num_experts=c.get("num_local_experts", 8), moe_router_topk=c.get("num_experts_per_tok", 2),
                moe_ffn_hidden_size=c["intermediate_size"], moe_layer_freq=1,
                rotary_base=float(rope.get("rope_theta", c.get("rope_theta", 1e6))),
                norm_eps=float(c.get("rms_norm_eps", 1e-5)))  # MixtralConfig's default


def _bloom_qkv(args: Any, sd: dict[str, torch.Tensor], prefix: str, kind: str) -> torch.Tensor:
    """Our q/k/v ``kind`` (weight or bias) of a layer fused as BLOOM's ``query_key_value``: per head q, k, v."""
    n, d = args.num_attention_heads, args.head_dim
    parts = [sd[f"{prefix}self_attn.{x}_proj.{kind}"].reshape(n, d, -1) for x in "qkv"]
    fused = torch.stack(parts, dim=1)  # [heads, 3, head_dim, (hidden)]
    return fused.reshape(3 * n * d, -1).squeeze(-1) if kind == "bias" else fused.reshape(3 * n * d, -1)


def _bloom_to_hf(args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"transformer.word_embeddings.weight": sd["embed_tokens.weight"],
           "transformer.word_embeddings_layernorm.weight": sd["embed_norm.weight"],
           "transformer.word_embeddings_layernorm.bias": sd["embed_norm.bias"],
           "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"]}
    for i in range(args.num_layers):
        p, q = f"layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            out[f"{q}self_attention.query_key_value.{kind}"] = _bloom_qkv(args, sd, p, kind)
            for ours, theirs in _BLOOM_LAYER.items():
                out[f"{q}{theirs}.{kind}"] = sd[f"{p}{ours}.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def _bloom_from_hf(args: Any, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    n, d = args.num_attention_heads, args.head_dim
    out = {"embed_tokens.weight": get("transformer.word_embeddings.weight"),
           "embed_norm.weight": get("transformer.word_embeddings_layernorm.weight"),
           "embed_norm.bias": get("transformer.word_embeddings_layernorm.bias"),
           "norm.weight": get("transformer.ln_f.weight"), "norm.bias": get("transformer.ln_f.bias")}
    out["lm_head.weight"] = out["embed_tokens.weight"]
    for i in range(args.num_layers):
        p, q = f"layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            fused = get(f"{q}self_attention.query_key_value.{kind}").reshape(n, 3, d, -1)
            for j, x in enumerate("qkv"):
                part = fused[:, j].reshape(n * d, -1)
                out[f"{p}self_attn.{x}_proj.{kind}"] = part.squeeze(-1) if kind == "bias" else part
            for ours, theirs in _BLOOM_LAYER.items():
                out[f"{p}{ours}.{kind}"] = get(f"{q}{theirs}.{kind}")
    return {k: v.contiguous() for k, v in out.items()}


def _bloom_args(c: dict[str, Any], where: Path) -> dict[str, Any]:
    """Our args of a BLOOM ``config.json``; refused where our model would compute something else."""
    if c.get("apply_residual_connection_post_layernorm"):
        raise CheckpointError(f"{where}: BloomForCausalLM with apply_residual_connection_post_layernorm=true has no "
                              "counterpart in our models (pre-norm residuals only)")
    if c.get("pretraining_tp", 1) > 1 and c.get("slow_but_exact"):
        raise CheckpointError(f"{where}: BloomForCausalLM with slow_but_exact=true is not supported")
    h = c.get("hidden_size", c.get("n_embed", 64))
    return dict(vocab_size=c["vocab_size"], num_layers=c["n_layer"], hidden_size=h, num_attention_heads=c["n_head"],
                num_key_value_heads=c["n_head"], ffn_hidden_size=4 * h, position_embedding="alibi",
                normalization="layernorm", activation="gelu", bias=True, tie_word_embeddings=True, embedding_norm=True,
                norm_eps=float(c.get("layer_norm_epsilon", 1e-5)))
