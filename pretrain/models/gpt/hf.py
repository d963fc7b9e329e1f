"""GPT's Hugging Face adapter: ``GPT2LMHeadModel`` (GPT-2 style: learned positions, LayerNorm, tanh GELU,
biases, tied, multi-head) and ``LlamaForCausalLM`` (LLaMA style: RoPE, RMSNorm, SwiGLU, no biases, GQA).
LLaMA's names are ours under ``model.``; GPT-2's are a rename plus q/k/v concatenated into ``c_attn`` and
every matrix transposed for its ``Conv1D``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from pretrain.core.errors import CheckpointError
from pretrain.models.family import HFAdapter

GPT2, LLAMA = "GPT2LMHeadModel", "LlamaForCausalLM"
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


class GPTAdapter(HFAdapter):
    architectures = (GPT2, LLAMA)

    def misfit(self, arch: str, args: Any) -> list[str]:
        a = asdict(args)
        if arch == GPT2:
            need = dict(position_embedding="learned", normalization="layernorm", activation="gelu", bias=True,
                        tie_word_embeddings=True, num_key_value_heads=a["num_attention_heads"])
        else:
            need = dict(position_embedding="rope", normalization="rmsnorm", activation="swiglu", bias=False)
        return [f"{k}={a[k]} (needs {v})" for k, v in need.items() if a[k] != v]

    def to_hf(self, arch: str, args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if arch == LLAMA:
            return {theirs: sd[ours].contiguous() for ours, theirs in _llama_names(args).items()}
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
        if arch == LLAMA:
            out = {ours: get(theirs).contiguous() for ours, theirs in _llama_names(args).items()}
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
                        tie_word_embeddings=True)
        if c.get("hidden_act", "silu") != "silu":
            raise act_error(c.get("hidden_act"))
        if c.get("attention_bias") or c.get("mlp_bias"):
            raise CheckpointError(f"{where}: LlamaForCausalLM with attention_bias/mlp_bias has no counterpart in our "
                                  "models")
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"{where}: RoPE scaling {rope.get('rope_type')!r} is not supported (plain RoPE only)")
        heads = c["num_attention_heads"]
        if c.get("head_dim") not in (None, c["hidden_size"] // heads):
            raise CheckpointError(f"{where}: head_dim={c['head_dim']} != hidden_size/heads is not supported")
        return dict(vocab_size=c["vocab_size"], num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"],
                    num_attention_heads=heads, num_key_value_heads=c.get("num_key_value_heads") or heads,
                    ffn_hidden_size=c["intermediate_size"], seq_length=c["max_position_embeddings"],
                    position_embedding="rope", normalization="rmsnorm", activation="swiglu", bias=False,
                    tie_word_embeddings=bool(c.get("tie_word_embeddings", False)))

    def tokenizer_specials(self, arch: str, special: dict[str, int]) -> dict[str, Any]:
        eod = "<|endoftext|>" if "<|endoftext|>" in special else None
        return dict(bos_token=eod, eos_token=eod, unk_token=eod)
