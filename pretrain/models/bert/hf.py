"""BERT's Hugging Face adapter: ``BertForMaskedLM``, a rename. The pooler and SOP head have no place there:
export leaves them out, import keeps their fresh init."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from pretrain.core.errors import CheckpointError
from pretrain.models.family import HFAdapter

ARCH = "BertForMaskedLM"


def _names(args: Any) -> dict[str, str]:
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


class BERTAdapter(HFAdapter):
    architectures = (ARCH,)
    kept_fresh = ("pooler.", "sop_head.")

    def to_hf(self, arch: str, args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {theirs: sd[ours].contiguous() for ours, theirs in _names(args).items()}

    def from_hf(self, arch: str, args: Any, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {ours: get(theirs).contiguous() for ours, theirs in _names(args).items()}
        out["lm_head.weight"] = out["embed_tokens.weight"]  # the tied decoder
        return out

    def hf_config(self, arch: str, args: Any, special: dict[str, int]) -> Any:
        import transformers

        return transformers.BertConfig(
            vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
            num_attention_heads=args.num_attention_heads, intermediate_size=args.ffn_hidden_size,
            hidden_act="gelu" if args.activation == "gelu_exact" else "gelu_new",
            hidden_dropout_prob=args.hidden_dropout, attention_probs_dropout_prob=args.attention_dropout,
            max_position_embeddings=args.seq_length, type_vocab_size=args.type_vocab_size,
            layer_norm_eps=args.norm_eps, initializer_range=args.init_method_std, pad_token_id=special.get("[PAD]", 0),
        )

    def args_from_hf_config(self, arch: str, c: dict[str, Any], where: Path) -> dict[str, Any]:
        act = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}.get(c.get("hidden_act", "gelu"))
        if act is None:
            raise CheckpointError(f"{where}: {arch} with activation {c.get('hidden_act')!r} has no counterpart in our "
                                  "models")
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{where}: BERT position_embedding_type={c['position_embedding_type']!r} is not "
                                  "supported")
        return dict(vocab_size=c["vocab_size"], num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"],
                    num_attention_heads=c["num_attention_heads"], ffn_hidden_size=c["intermediate_size"],
                    seq_length=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 2),
                    activation=act, norm_eps=float(c.get("layer_norm_eps", 1e-12)))  # BertConfig's default

    def tokenizer_specials(self, arch: str, special: dict[str, int]) -> dict[str, Any]:
        return dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
