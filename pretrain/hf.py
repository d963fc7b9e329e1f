"""Hugging Face layouts of our models: parameter names both ways, configs, and import of a local directory.

Four ``transformers`` classes correspond to our families:

=====================  =========================================================================
``GPT2LMHeadModel``    gpt, GPT-2 style (learned positions, LayerNorm, tanh GELU, biases, tied, MHA)
``LlamaForCausalLM``   gpt, LLaMA style (RoPE, RMSNorm, SwiGLU, no biases, GQA)
``BertForMaskedLM``    bert (the SOP pooler/head has no place in it and is not exported)
``T5ForConditionalGeneration``  t5 (v1.0: relu + tied; v1.1: gated-gelu + untied)
=====================  =========================================================================

Each mapping is a rename (GPT-2 also concatenates q/k/v into ``c_attn`` and transposes for its ``Conv1D``),
so export and import are exact: import -> export gives identical tensors. Nothing here needs
``transformers`` except building a config object (:func:`hf_config`), which export does lazily; import reads
``config.json`` and ``*.safetensors`` directly, so the trainer does not depend on ``transformers``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pretrain.core.errors import CheckpointError

log = logging.getLogger(__name__)

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt",
    "LlamaForCausalLM": "gpt",
    "BertForMaskedLM": "bert",
    "T5ForConditionalGeneration": "t5",
}


# ----------------------------------------------------------------------------------------------- fit


def architecture_for(family: str, args: Any) -> str:
    """The Hugging Face class of a model of ``family`` with ``args``; CheckpointError when none fits."""
    if family == "bert":
        return "BertForMaskedLM"
    if family == "t5":
        return "T5ForConditionalGeneration"
    if family == "gpt":
        for arch in ("GPT2LMHeadModel", "LlamaForCausalLM"):
            if not misfit(arch, family, args):
                return arch
        raise CheckpointError(
            f"this gpt model ({describe(args)}) fits neither GPT2LMHeadModel ({'; '.join(misfit('GPT2LMHeadModel', family, args))}) "
            f"nor LlamaForCausalLM ({'; '.join(misfit('LlamaForCausalLM', family, args))})"
        )
    raise CheckpointError(f"model family {family!r} has no Hugging Face export; known: gpt, bert, t5")


def describe(args: Any) -> str:
    keys = ("position_embedding", "normalization", "activation", "bias", "tie_word_embeddings")
    d = asdict(args)
    return ", ".join(f"{k}={d[k]}" for k in keys if k in d)


def misfit(arch: str, family: str, args: Any) -> list[str]:
    """Why a ``family`` model with ``args`` cannot be exported as ``arch`` (empty = it can)."""
    if arch not in ARCHITECTURES:
        return [f"{arch} is not a supported class (supported: {', '.join(ARCHITECTURES)})"]
    if ARCHITECTURES[arch] != family:
        return [f"{arch} holds a {ARCHITECTURES[arch]} model, the checkpoint a {family} model"]
    a = asdict(args)
    need: dict[str, Any] = {}
    if arch == "GPT2LMHeadModel":
        need = dict(position_embedding="learned", normalization="layernorm", activation="gelu", bias=True,
                    tie_word_embeddings=True, num_key_value_heads=a["num_attention_heads"])
    elif arch == "LlamaForCausalLM":
        need = dict(position_embedding="rope", normalization="rmsnorm", activation="swiglu", bias=False)
    return [f"{k}={a[k]} (needs {v})" for k, v in need.items() if a[k] != v]


# ----------------------------------------------------------------------------------------------- names


def _bert_names(args: Any) -> dict[str, str]:
    m = {
        "embed_tokens.weight": "bert.embeddings.word_embeddings.weight",
        "embed_positions.weight": "bert.embeddings.position_embeddings.weight",
        "embed_types.weight": "bert.embeddings.token_type_embeddings.weight",
        "embed_norm.weight": "bert.embeddings.LayerNorm.weight",
        "embed_norm.bias": "bert.embeddings.LayerNorm.bias",
        "head_dense.weight": "cls.predictions.transform.dense.weight",
        "head_dense.bias": "cls.predictions.transform.dense.bias",
        "head_norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "head_norm.bias": "cls.predictions.transform.LayerNorm.bias",
        "lm_head.bias": "cls.predictions.bias",
    }
    per_layer = {
        "self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
        "self_attn.v_proj": "attention.self.value", "self_attn.o_proj": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm", "up_proj": "intermediate.dense", "down_proj": "output.dense",
        "mlp_norm": "output.LayerNorm",
    }
    for i in range(args.num_layers):
        for ours, theirs in per_layer.items():
            for w in ("weight", "bias"):
                m[f"layers.{i}.{ours}.{w}"] = f"bert.encoder.layer.{i}.{theirs}.{w}"
    return m


def _t5_names(args: Any) -> dict[str, str]:
    m = {
        "shared.weight": "shared.weight",
        "encoder.relative_attention_bias.weight": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.relative_attention_bias.weight": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.final_norm.weight": "encoder.final_layer_norm.weight",
        "decoder.final_norm.weight": "decoder.final_layer_norm.weight",
    }
    if not args.tie_word_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    mlp = ["wi_0", "wi_1", "wo"] if args.activation == "geglu" else ["wi", "wo"]
    for stack, n in (("encoder", args.num_layers), ("decoder", args.num_decoder_layers)):
        for i in range(n):
            p, q = f"{stack}.layers.{i}.", f"{stack}.block.{i}.layer."
            for x in "qkvo":
                m[f"{p}self_attn.{x}.weight"] = f"{q}0.SelfAttention.{x}.weight"
                if stack == "decoder":
                    m[f"{p}cross_attn.{x}.weight"] = f"{q}1.EncDecAttention.{x}.weight"
            m[f"{p}self_attn_norm.weight"] = f"{q}0.layer_norm.weight"
            ff = 2 if stack == "decoder" else 1
            if stack == "decoder":
                m[f"{p}cross_attn_norm.weight"] = f"{q}1.layer_norm.weight"
            for w in mlp:
                m[f"{p}mlp.{w}.weight"] = f"{q}{ff}.DenseReluDense.{w}.weight"
            m[f"{p}mlp_norm.weight"] = f"{q}{ff}.layer_norm.weight"
    return m


def _llama_names(args: Any) -> dict[str, str]:
    from pretrain.models.gpt import GPT

    with torch.device("meta"):
        names = list(GPT(args).state_dict())
    m = {k: "model." + k for k in names if k != "lm_head.weight"}
    if not args.tie_word_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    return m


_GPT2_LAYER = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}


def to_hf(arch: str, args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> the ``arch`` state dict (tied copies left out: Hugging Face re-ties them on load)."""
    if arch == "GPT2LMHeadModel":
        out = {"transformer.wte.weight": sd["embed_tokens.weight"], "transformer.wpe.weight": sd["embed_positions.weight"],
               "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"]}
        for i in range(args.num_layers):
            p, q = f"layers.{i}.", f"transformer.h.{i}."
            for ours, theirs in _GPT2_LAYER.items():
                for w in ("weight", "bias"):
                    out[f"{q}{theirs}.{w}"] = sd[f"{p}{ours}.{w}"]
            a = p + "self_attn."
            out[q + "attn.c_attn.weight"] = torch.cat([sd[f"{a}{n}_proj.weight"] for n in "qkv"]).t()
            out[q + "attn.c_attn.bias"] = torch.cat([sd[f"{a}{n}_proj.bias"] for n in "qkv"])
            out[q + "attn.c_proj.weight"], out[q + "attn.c_proj.bias"] = sd[a + "o_proj.weight"].t(), sd[a + "o_proj.bias"]
            out[q + "mlp.c_fc.weight"], out[q + "mlp.c_fc.bias"] = sd[p + "mlp.up_proj.weight"].t(), sd[p + "mlp.up_proj.bias"]
            out[q + "mlp.c_proj.weight"] = sd[p + "mlp.down_proj.weight"].t()
            out[q + "mlp.c_proj.bias"] = sd[p + "mlp.down_proj.bias"]
        return {k: v.contiguous() for k, v in out.items()}
    names = {"LlamaForCausalLM": _llama_names, "BertForMaskedLM": _bert_names,
             "T5ForConditionalGeneration": _t5_names}[arch](args)
    return {theirs: sd[ours].contiguous() for ours, theirs in names.items()}


def from_hf(arch: str, args: Any, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``arch`` state dict -> ours (the inverse of :func:`to_hf`). Keys our model has and the Hugging Face
    class does not (BERT's SOP head) are left out; the caller keeps their fresh init."""
    def get(key: str) -> torch.Tensor:
        if key not in hf:
            raise CheckpointError(f"the {arch} weights have no tensor {key!r}")
        return hf[key]

    if arch == "GPT2LMHeadModel":
        h = args.hidden_size
        out = {"embed_tokens.weight": get("transformer.wte.weight"), "embed_positions.weight": get("transformer.wpe.weight"),
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
            out[p + "self_attn.o_proj.weight"], out[p + "self_attn.o_proj.bias"] = get(q + "attn.c_proj.weight").t(), get(q + "attn.c_proj.bias")
            out[p + "mlp.up_proj.weight"], out[p + "mlp.up_proj.bias"] = get(q + "mlp.c_fc.weight").t(), get(q + "mlp.c_fc.bias")
            out[p + "mlp.down_proj.weight"], out[p + "mlp.down_proj.bias"] = get(q + "mlp.c_proj.weight").t(), get(q + "mlp.c_proj.bias")
        return {k: v.contiguous() for k, v in out.items()}
    names = {"LlamaForCausalLM": _llama_names, "BertForMaskedLM": _bert_names,
             "T5ForConditionalGeneration": _t5_names}[arch](args)
    out = {ours: get(theirs).contiguous() for ours, theirs in names.items()}
    # tied copies (our module has both names for one tensor)
    if arch == "BertForMaskedLM":
        out["lm_head.weight"] = out["embed_tokens.weight"]
    elif arch == "LlamaForCausalLM" and args.tie_word_embeddings:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    elif arch == "T5ForConditionalGeneration" and args.tie_word_embeddings:
        out["lm_head.weight"] = out["shared.weight"]
    return out


# ----------------------------------------------------------------------------------------------- configs


def hf_config(arch: str, args: Any, special: dict[str, int]):
    """The ``transformers`` config object of ``arch`` for our ``args``; ``special`` = token text -> id."""
    import transformers

    eod = next((special[t] for t in ("<|endoftext|>", "</s>") if t in special), None)
    if arch == "GPT2LMHeadModel":
        cfg = transformers.GPT2Config(
            vocab_size=args.vocab_size, n_positions=args.seq_length, n_embd=args.hidden_size, n_layer=args.num_layers,
            n_head=args.num_attention_heads, n_inner=args.ffn_hidden_size, activation_function="gelu_new",
            resid_pdrop=args.hidden_dropout, embd_pdrop=args.hidden_dropout, attn_pdrop=args.attention_dropout,
            layer_norm_epsilon=args.norm_eps, initializer_range=args.init_method_std, tie_word_embeddings=True,
            bos_token_id=eod, eos_token_id=eod,
        )
    elif arch == "LlamaForCausalLM":
        cfg = transformers.LlamaConfig(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.ffn_hidden_size,
            num_hidden_layers=args.num_layers, num_attention_heads=args.num_attention_heads,
            num_key_value_heads=args.num_key_value_heads, max_position_embeddings=args.seq_length,
            rms_norm_eps=args.norm_eps, rope_parameters={"rope_type": "default", "rope_theta": float(args.rotary_base)},
            tie_word_embeddings=args.tie_word_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
            attention_dropout=args.attention_dropout, initializer_range=args.init_method_std,
            bos_token_id=eod, eos_token_id=eod, pad_token_id=None,
        )
    elif arch == "BertForMaskedLM":
        cfg = transformers.BertConfig(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_attention_heads, intermediate_size=args.ffn_hidden_size,
            hidden_act="gelu" if args.activation == "gelu_exact" else "gelu_new",
            hidden_dropout_prob=args.hidden_dropout, attention_probs_dropout_prob=args.attention_dropout,
            max_position_embeddings=args.seq_length, type_vocab_size=args.type_vocab_size,
            layer_norm_eps=args.norm_eps, initializer_range=args.init_method_std, pad_token_id=special.get("[PAD]", 0),
        )
    elif arch == "T5ForConditionalGeneration":
        cfg = transformers.T5Config(
            vocab_size=args.vocab_size, d_model=args.hidden_size, d_kv=args.kv_channels, d_ff=args.ffn_hidden_size,
            num_layers=args.num_layers, num_decoder_layers=args.num_decoder_layers, num_heads=args.num_attention_heads,
            relative_attention_num_buckets=args.relative_attention_num_buckets,
            relative_attention_max_distance=args.relative_attention_max_distance, dropout_rate=args.hidden_dropout,
            layer_norm_epsilon=args.norm_eps, initializer_factor=args.init_method_std,
            feed_forward_proj="gated-gelu" if args.activation == "geglu" else "relu",
            tie_word_embeddings=args.tie_word_embeddings, pad_token_id=args.decoder_start_id,
            eos_token_id=special.get("</s>", 1), decoder_start_token_id=args.decoder_start_id,
        )
    else:
        raise CheckpointError(f"{arch} is not a supported class (supported: {', '.join(ARCHITECTURES)})")
    cfg.architectures = [arch]
    return cfg


def args_from_hf_config(arch: str, c: dict[str, Any], where: Path) -> dict[str, Any]:
    """The shape fields of our args that a Hugging Face ``config.json`` (as a dict) implies."""
    def act_error(value: Any) -> CheckpointError:
        return CheckpointError(f"{where}: {arch} with activation {value!r} has no counterpart in our models")

    if arch == "GPT2LMHeadModel":
        if c.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise act_error(c.get("activation_function"))
        n = c.get("n_embd", 768)
        return dict(vocab_size=c["vocab_size"], num_layers=c["n_layer"], hidden_size=n,
                    num_attention_heads=c["n_head"], num_key_value_heads=c["n_head"],
                    ffn_hidden_size=c.get("n_inner") or 4 * n, seq_length=c["n_positions"],
                    position_embedding="learned", normalization="layernorm", activation="gelu", bias=True,
                    tie_word_embeddings=True)
    if arch == "LlamaForCausalLM":
        if c.get("hidden_act", "silu") != "silu":
            raise act_error(c.get("hidden_act"))
        if c.get("attention_bias") or c.get("mlp_bias"):
            raise CheckpointError(f"{where}: LlamaForCausalLM with attention_bias/mlp_bias has no counterpart in our models")
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
    if arch == "BertForMaskedLM":
        act = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}.get(c.get("hidden_act", "gelu"))
        if act is None:
            raise act_error(c.get("hidden_act"))
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{where}: BERT position_embedding_type={c['position_embedding_type']!r} is not supported")
        return dict(vocab_size=c["vocab_size"], num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"],
                    num_attention_heads=c["num_attention_heads"], ffn_hidden_size=c["intermediate_size"],
                    seq_length=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                    activation=act)
    if arch == "T5ForConditionalGeneration":
        proj = c.get("feed_forward_proj", "relu")
        act = {"relu": "relu", "gated-gelu": "geglu"}.get(proj)
        if act is None:
            raise act_error(proj)
        return dict(vocab_size=c["vocab_size"], num_layers=c["num_layers"],
                    num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"], hidden_size=c["d_model"],
                    num_attention_heads=c["num_heads"], kv_channels=c["d_kv"], ffn_hidden_size=c["d_ff"],
                    # transformers 5 writes tie_word_embeddings=true for every T5 and says "untied" with
                    # scale_decoder_outputs=false; older versions and our export say tie_word_embeddings=false
                    activation=act,
                    tie_word_embeddings=bool(c.get("tie_word_embeddings", True)) and bool(c.get("scale_decoder_outputs", True)),
                    relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
                    relative_attention_max_distance=c.get("relative_attention_max_distance", 128))
    raise CheckpointError(f"{where}: unsupported architecture {arch}")


# ----------------------------------------------------------------------------------------------- import


def read_hf_config(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(architecture, config dict) of a local Hugging Face model directory; CheckpointError when it is not one
    or holds an architecture we cannot import."""
    d = Path(path)
    cfg_file = d / "config.json"
    try:
        c = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"model.init_from={path}: not a Hugging Face model directory ({cfg_file}: {e})") from None
    archs = c.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"model.init_from={path}: architecture {arch or '(none named in config.json)'} (model_type "
            f"{c.get('model_type')!r}) cannot be imported; supported: {', '.join(ARCHITECTURES)}"
        )
    return arch, c


def check_compatible(path: str | Path, family: str, args: Any) -> str:
    """Refuse, naming both sides, a Hugging Face directory whose family or shape differs from the config.
    Cheap (reads ``config.json`` only), so the trainer calls it before building anything. Returns the arch."""
    arch, c = read_hf_config(path)
    if ARCHITECTURES[arch] != family:
        raise CheckpointError(
            f"model.init_from={path} holds a {arch} ({ARCHITECTURES[arch]} family), the config asks for "
            f"model.family={family}; choose a {ARCHITECTURES[arch]} model config"
        )
    ours = asdict(args)
    diffs = [f"model.{k}: config {ours[k]!r}, {arch} {v!r}"
             for k, v in args_from_hf_config(arch, c, Path(path)).items() if k in ours and ours[k] != v]
    if diffs:
        raise CheckpointError(
            f"model.init_from={path}: the {arch} there does not fit the model config ({'; '.join(diffs)})"
        )
    return arch


def load_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    d = Path(path)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{d}: no *.safetensors weights (only safetensors directories are imported)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def load_into(model: torch.nn.Module, path: str | Path, family: str, args: Any) -> None:
    """Initialise ``model`` (ours, freshly built) from the Hugging Face directory ``path`` in place."""
    arch = check_compatible(path, family, args)
    ours = from_hf(arch, args, {k: v.float() for k, v in load_hf_weights(path).items()})
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False)
    except RuntimeError as e:  # a tensor of another shape than config.json promised
        raise CheckpointError(f"model.init_from={path}: {str(e).splitlines()[-1].strip()}") from None
    kept = [k for k in missing if k.startswith(("pooler.", "sop_head."))]  # not in BertForMaskedLM: fresh init
    if unexpected or set(missing) - set(kept):
        raise CheckpointError(f"{path}: weights do not fit the model (missing {sorted(set(missing) - set(kept))}, "
                              f"unexpected {sorted(unexpected)})")
    log.info("initialised the model from %s (%s)%s", path, arch,
             f"; kept the fresh init of {', '.join(sorted({k.split('.')[0] for k in kept}))}" if kept else "")
