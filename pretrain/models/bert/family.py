"""The BERT family's registry entry: ties its config, model, objective, tensor-parallel plan, pipeline stages
and Hugging Face adapter together (the heavy modules are imported when used)."""

from __future__ import annotations

from typing import Any

from pretrain.models.bert import config
from pretrain.models.bert.tp_plan import TP_PLAN
from pretrain.models.family import ModelFamily, ShapeFacts, TokenizerInfo, require


class BERTFamily(ModelFamily):
    name = "bert"
    config_schema = config.BERTConfig
    args_type = config.BERTArgs
    non_shape_fields = ModelFamily.non_shape_fields | {"mlm_probability", "mask_replace_prob", "random_replace_prob"}
    tp_plan = TP_PLAN

    def resolve(self, model_cfg: Any, tokenizer: TokenizerInfo) -> config.BERTArgs:
        return config.resolve(model_cfg, tokenizer)

    def shape_facts(self, m: Any) -> ShapeFacts:
        heads = m.num_attention_heads
        return ShapeFacts(heads=heads, kv_heads=heads, ffn=m.ffn_hidden_size or config.default_bert_ffn(m.hidden_size),
                          layers={"model.num_layers": m.num_layers})

    def make_model(self, args: config.BERTArgs):
        from pretrain.models.bert.model import BERT

        return BERT(args)

    def objective(self, args: config.BERTArgs, tokenizer: TokenizerInfo, seed: int):
        import numpy as np

        from pretrain.models.bert.objective import BertObjective

        cls_id, sep_id, mask_id, pad_id = require(tokenizer, config.BERT_SPECIALS, self.name, "wordpiece")
        special = np.array(sorted(set(tokenizer.special_tokens.values()) | {tokenizer.eod_id}), dtype=np.int64)
        vocab = tokenizer.vocab_size or args.vocab_size
        random_ids = np.setdiff1d(np.arange(vocab, dtype=np.int64), special)
        return BertObjective(
            seq_length=args.seq_length, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, mask_id=mask_id,
            eod_id=tokenizer.eod_id, special_ids=special, random_ids=random_ids, seed=seed, sop=args.sop,
            mlm_probability=args.mlm_probability, mask_replace_prob=args.mask_replace_prob,
            random_replace_prob=args.random_replace_prob,
        )

    def sample_length(self, args: config.BERTArgs) -> int:
        return args.seq_length - (3 if args.sop else 2)

    def make_transform(self, args: config.BERTArgs, tokenizer: TokenizerInfo, seed: int):
        return self.objective(args, tokenizer, seed)

    def flops_per_token(self, args: config.BERTArgs) -> dict[str, float]:
        from pretrain.models.bert.model import bert_flops_per_token

        return bert_flops_per_token(args)

    def tokens_per_sample(self, args: config.BERTArgs) -> int:
        return args.seq_length

    def num_parameters(self, args: config.BERTArgs) -> int:
        from pretrain.models.bert.model import count_parameters

        return count_parameters(args)["total"]

    def pipeline_stages(self, model, group):
        from pretrain.models.bert.pipeline import stages

        return stages(model, group)

    def to_pipe_batch(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        if "segment_ids" in batch:  # packed-document masking: the stages carry the documents' ids
            inputs += (batch["position_ids"], batch["segment_ids"])
        return inputs, ((batch["labels"], batch["sop_labels"]) if "sop_labels" in batch else batch["labels"])

    @property
    def hf(self):
        from pretrain.models.bert.hf import BERTAdapter

        return BERTAdapter()
