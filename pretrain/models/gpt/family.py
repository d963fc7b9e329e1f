"""The GPT family's registry entry: ties its config, model, tensor-parallel plan, pipeline stages and Hugging
Face adapter together (the heavy modules are imported when used)."""

from __future__ import annotations

from typing import Any

from pretrain.models.family import ModelFamily, ShapeFacts, TokenizerInfo, enum_value
from pretrain.models.gpt import config
from pretrain.models.gpt.tp_plan import SEQUENCE_PARALLEL, TP_PLAN


class GPTFamily(ModelFamily):
    name = "gpt"
    config_schema = config.GPTConfig
    args_type = config.GPTArgs
    non_shape_fields = ModelFamily.non_shape_fields | {"rotary_base", "moe_router_topk", "moe_capacity_factor",
                                                       "moe_aux_loss_coeff", "moe_z_loss_coeff",
                                                       "sliding_window", "sliding_window_pattern"}
    tp_plan = TP_PLAN
    sequence_parallel = SEQUENCE_PARALLEL

    def resolve(self, model_cfg: Any, tokenizer: TokenizerInfo) -> config.GPTArgs:
        return config.resolve(model_cfg, tokenizer)

    def shape_facts(self, m: Any) -> ShapeFacts:
        heads = m.num_attention_heads
        ffn = m.ffn_hidden_size or config.default_ffn_hidden_size(m.hidden_size, enum_value(m.activation))
        return ShapeFacts(heads=heads, kv_heads=m.num_key_value_heads or heads, ffn=ffn,
                          layers={"model.num_layers": m.num_layers})

    def make_model(self, args: config.GPTArgs):
        from pretrain.models.gpt.model import GPT

        return GPT(args)

    def sample_length(self, args: config.GPTArgs) -> int:
        return args.seq_length + 1

    def make_transform(self, args: config.GPTArgs, tokenizer: TokenizerInfo, seed: int) -> None:
        return None  # causal LM on the window: the loader shifts it into inputs and labels

    def flops_per_token(self, args: config.GPTArgs) -> dict[str, float]:
        from pretrain.flops import gpt_flops_per_token

        return gpt_flops_per_token(args)

    def tokens_per_sample(self, args: config.GPTArgs) -> int:
        return args.seq_length

    def num_parameters(self, args: config.GPTArgs) -> int:
        return config.count_parameters(args)["total"]

    def callbacks(self, args: config.GPTArgs) -> list:
        from pretrain.models.gpt import moe_metrics

        return moe_metrics.callbacks(args)

    def pipeline_stages(self, model, group):
        from pretrain.models.gpt.pipeline import stages

        return stages(model, group)

    def to_pipe_batch(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        if "segment_ids" in batch:  # packed-document masking: the stages carry the documents' ids
            return (batch["input_ids"], batch["position_ids"], batch["segment_ids"]), batch["labels"]
        return batch["input_ids"], batch["labels"]

    @property
    def hf(self):
        from pretrain.models.gpt.hf import GPTAdapter

        return GPTAdapter()
