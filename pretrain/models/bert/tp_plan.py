"""BERT's tensor-parallel plan (:mod:`pretrain.parallel.plan`): attention q/k/v column-parallel by heads,
output projection row-parallel; the MLP (inline in the layer) up column, down row; vocabulary-parallel
embedding and tied MLM decoder. Positions, token types, LayerNorms, the MLM transform, pooler and SOP head stay
replicated. No sequence parallelism."""

from pretrain.parallel.plan import Column, Region, Row, VocabEmbedding, VocabOutput

TP_PLAN: dict[str, object] = {
    "embed_tokens": VocabEmbedding(),
    "layers.*.self_attn": Region((0,)),
    "layers.*.self_attn.[qkv]_proj": Column(copy_input=False),
    "layers.*.self_attn.o_proj": Row(),
    "layers.*.up_proj": Column(copy_input=True),  # the MLP is inline in the layer: the column layer enters
    "layers.*.down_proj": Row(),
    "lm_head": VocabOutput(),
}
