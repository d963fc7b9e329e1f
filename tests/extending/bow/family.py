"""The ``bow`` family's registry entry: config -> args, shape facts, FLOPs, the tensor-parallel plan. Imports no
torch (``pretrain.config`` reads every registered family's schema at import); the model is imported when built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pretrain.core.errors import ConfigError
from pretrain.models.family import ModelFamily, ShapeFacts, TokenizerInfo, resolve_vocab
from pretrain.models.schema import ModelConfigBase, check_granularity
from pretrain.parallel.plan import Column, Row, VocabEmbedding, VocabOutput


@dataclass
class BowArgs:
    """The resolved shape (stored in checkpoints as ``model_args``). ``vocab_size``, ``num_layers`` and
    ``hidden_size`` are read by the Trainer too (the vocabulary check, the setup line)."""

    vocab_size: int
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    seq_length: int
    norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    init_method_std: float = 0.02
    activation_checkpointing: bool = False
    recompute_granularity: str = "full"


# module-name pattern -> what tensor parallelism makes of it (pretrain/parallel/plan.py): vocabulary-parallel
# embedding and output layer (tied: one shard), MLP up column-parallel, down row-parallel.
TP_PLAN = {
    "embed_tokens": VocabEmbedding(),
    "layers.*.up_proj": Column(),
    "layers.*.down_proj": Row(),
    "lm_head": VocabOutput(),
}


class BowFamily(ModelFamily):
    name = "bow"
    config_schema = ModelConfigBase  # only the keys every family shares; a subclass would add the family's own
    args_type = BowArgs
    tp_plan = TP_PLAN
    pipeline_unsupported = "the bow example declares no pipeline stages"
    # sequence_parallel = None (inherited): parallel.sequence_parallel=true is refused; hf: None, no export

    def resolve(self, m: Any, tokenizer: TokenizerInfo) -> BowArgs:
        granularity = check_granularity(m.recompute_granularity)
        if m.activation_checkpointing and granularity == "selective":
            raise ConfigError("model.recompute_granularity=selective recomputes attention, which model.family=bow "
                              "does not have; use model.recompute_granularity=full")
        return BowArgs(vocab_size=resolve_vocab(m, tokenizer.vocab_size), num_layers=m.num_layers,
                       hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size or 4 * m.hidden_size,
                       seq_length=m.seq_length, norm_eps=m.norm_eps, hidden_dropout=m.hidden_dropout,
                       init_method_std=m.init_method_std, activation_checkpointing=m.activation_checkpointing,
                       recompute_granularity=granularity)

    def shape_facts(self, m: Any) -> ShapeFacts:
        # no attention: zero heads to split over the tensor ranks (the MLP width and the vocabulary still are)
        return ShapeFacts(heads=0, kv_heads=0, ffn=m.ffn_hidden_size or 4 * m.hidden_size,
                          layers={"model.num_layers": m.num_layers})

    def make_model(self, args: BowArgs):
        from tests.extending.bow.model import BagOfWords

        return BagOfWords(args)

    def sample_length(self, args: BowArgs) -> int:
        return args.seq_length + 1  # inputs and next-token labels from one window

    def make_transform(self, args: BowArgs, tokenizer: TokenizerInfo, seed: int) -> None:
        return None  # causal LM on the window: the loader shifts it into input_ids and labels

    def tokens_per_sample(self, args: BowArgs) -> int:
        return args.seq_length

    def flops_per_token(self, args: BowArgs) -> dict[str, float]:
        from pretrain.models.recompute import recompute_flops

        h, f, L, V = args.hidden_size, args.ffn_hidden_size, args.num_layers, args.vocab_size
        layers = 2 * L * h * f  # the MLP matrices (fwd 2 FLOPs per weight, x3 with backward)
        model = 6 * layers + 6 * h * V
        return {"model": float(model),
                "hardware": float(model + recompute_flops(args, layers_forward=2 * layers, attention_core_forward=0))}
