"""The T5 family's registry entry: ties its config, model, objective, tensor-parallel plan and Hugging Face
adapter together (the heavy modules are imported when used). T5 has no pipeline stages (see
:data:`~pretrain.models.t5.tp_plan.PIPELINE_UNSUPPORTED`)."""

from __future__ import annotations

from typing import Any

from pretrain.models.family import ModelFamily, RecomputePlan, ShapeFacts, TokenizerInfo, require
from pretrain.models.t5 import config
from pretrain.models.t5.tp_plan import PIPELINE_UNSUPPORTED, TP_PLAN


class T5Family(ModelFamily):
    name = "t5"
    config_schema = config.T5Config
    args_type = config.T5Args
    non_shape_fields = ModelFamily.non_shape_fields | {"noise_density", "mean_noise_span_length", "decoder_start_id"}
    tp_plan = TP_PLAN
    recompute = RecomputePlan(layers=("encoder.layers", "decoder.layers"), attention=("self_attn", "cross_attn"))
    pipeline_unsupported = PIPELINE_UNSUPPORTED

    def resolve(self, model_cfg: Any, tokenizer: TokenizerInfo) -> config.T5Args:
        return config.resolve(model_cfg, tokenizer)

    def shape_facts(self, m: Any) -> ShapeFacts:
        heads = m.num_attention_heads
        return ShapeFacts(heads=heads, kv_heads=heads, ffn=m.ffn_hidden_size or 4 * m.hidden_size,
                          layers={"model.num_layers": m.num_layers,
                                  "model.num_decoder_layers": m.num_decoder_layers or m.num_layers})

    def make_model(self, args: config.T5Args):
        from pretrain.models.t5.model import T5

        return T5(args)

    def sample_length(self, args: config.T5Args) -> int:
        from pretrain.models.t5.objective import t5_lengths

        return t5_lengths(args.seq_length, args.noise_density, args.mean_noise_span_length)[0]

    def make_transform(self, args: config.T5Args, tokenizer: TokenizerInfo, seed: int):
        from pretrain.models.t5.objective import T5Objective

        _, eos = require(tokenizer, ("<pad>", "</s>"), self.name, "unigram")
        return T5Objective(
            seq_length=args.seq_length, target_length=args.target_length, raw_length=self.sample_length(args),
            sentinel_ids=config.sentinel_ids(tokenizer), eos_id=eos, seed=seed, noise_density=args.noise_density,
            mean_noise_span_length=args.mean_noise_span_length,
        )

    def flops_per_token(self, args: config.T5Args) -> dict[str, float]:
        from pretrain.models.t5.model import t5_flops_per_token

        return t5_flops_per_token(args)

    def tokens_per_sample(self, args: config.T5Args) -> int:
        return args.seq_length + args.target_length

    def num_parameters(self, args: config.T5Args) -> int:
        from pretrain.models.t5.model import count_parameters

        return count_parameters(args)["total"]

    @property
    def hf(self):
        from pretrain.models.t5.hf import T5Adapter

        return T5Adapter()
