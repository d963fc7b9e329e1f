"""T5's Hugging Face adapter: ``T5ForConditionalGeneration`` (v1.0: relu + tied; v1.1: gated-gelu + untied),
a rename."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from pretrain.core.errors import CheckpointError
from pretrain.models.family import HFAdapter

ARCH = "T5ForConditionalGeneration"


def _names(args: Any) -> dict[str, str]:
    m = {
        "shared.weight": "shared.weight",
        **{f"{stack}.relative_attention_bias.weight":
           f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight" for stack in ("encoder", "decoder")},
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


class T5Adapter(HFAdapter):
    architectures = (ARCH,)

    def to_hf(self, arch: str, args: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {theirs: sd[ours].contiguous() for ours, theirs in _names(args).items()}

    def from_hf(self, arch: str, args: Any, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {ours: get(theirs).contiguous() for ours, theirs in _names(args).items()}
        if args.tie_word_embeddings:
            out["lm_head.weight"] = out["shared.weight"]
        return out

    def hf_config(self, arch: str, args: Any, special: dict[str, int]) -> Any:
        import transformers

        return transformers.T5Config(
            vocab_size=args.vocab_size, d_model=args.hidden_size, d_kv=args.kv_channels, d_ff=args.ffn_hidden_size,
            num_layers=args.num_layers, num_decoder_layers=args.num_decoder_layers, num_heads=args.num_attention_heads,
            relative_attention_num_buckets=args.relative_attention_num_buckets,
            relative_attention_max_distance=args.relative_attention_max_distance, dropout_rate=args.hidden_dropout,
            layer_norm_epsilon=args.norm_eps, initializer_factor=args.init_method_std,
            feed_forward_proj="gated-gelu" if args.activation == "geglu" else "relu",
            tie_word_embeddings=args.tie_word_embeddings, pad_token_id=args.decoder_start_id,
            eos_token_id=special.get("</s>", 1), decoder_start_token_id=args.decoder_start_id,
        )

    def args_from_hf_config(self, arch: str, c: dict[str, Any], where: Path) -> dict[str, Any]:
        proj = c.get("feed_forward_proj", "relu")
        act = {"relu": "relu", "gated-gelu": "geglu"}.get(proj)
        if act is None:
            raise CheckpointError(f"{where}: {arch} with activation {proj!r} has no counterpart in our models")
        return dict(vocab_size=c["vocab_size"], num_layers=c["num_layers"],
                    num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"], hidden_size=c["d_model"],
                    num_attention_heads=c["num_heads"], kv_channels=c["d_kv"], ffn_hidden_size=c["d_ff"],
                    # transformers 5 writes tie_word_embeddings=true for every T5 and says "untied" with
                    # scale_decoder_outputs=false; older versions and our export say tie_word_embeddings=false
                    activation=act,
                    tie_word_embeddings=(bool(c.get("tie_word_embeddings", True))
                                         and bool(c.get("scale_decoder_outputs", True))),
                    relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
                    relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
                    norm_eps=float(c.get("layer_norm_epsilon", 1e-6)))  # T5Config's default

    def tokenizer_specials(self, arch: str, special: dict[str, int]) -> dict[str, Any]:
        sentinels = sorted((t for t in special if t.startswith("<extra_id_")), key=lambda t: int(t[10:-1]))
        return dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_special_tokens=sentinels)

    def config_fixes(self, arch: str, args: Any) -> dict[str, Any]:
        # transformers 5 always writes tie_word_embeddings=true (untied = scale_decoder_outputs=false); older
        # versions would then tie lm_head to the embedding: say false, which every version reads as untied
        return {} if args.tie_word_embeddings else {"tie_word_embeddings": False}
