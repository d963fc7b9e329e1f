"""GPT's tensor-parallel plan (:mod:`pretrain.parallel.plan`): attention q/k/v column-parallel (whole heads per
rank; grouped KV heads split the same way, so a rank's query heads find their KV head locally), output
projection row-parallel; MLP up/gate column, down row; vocabulary-parallel embedding and output layer (a tied
output layer shares the embedding's shard); norms and learned positions replicated. One region entry per
attention and MLP module, so the q/k/v (up/gate) input gradients cost one all-reduce, as Megatron's fused QKV.
Sequence parallelism splits the activations outside those regions from the embedding dropout on."""

from pretrain.parallel.plan import Column, Region, Row, SequenceParallel, VocabEmbedding, VocabOutput

TP_PLAN: dict[str, object] = {
    "embed_tokens": VocabEmbedding(),
    "layers.*.self_attn": Region((0,)),
    "layers.*.self_attn.[qkv]_proj": Column(copy_input=False),
    "layers.*.self_attn.o_proj": Row(),
    "layers.*.mlp": Region((0,)),
    "layers.*.mlp.gate_proj": Column(copy_input=False),
    "layers.*.mlp.up_proj": Column(copy_input=False),
    "layers.*.mlp.down_proj": Row(),
    "lm_head": VocabOutput(),
}

SEQUENCE_PARALLEL = SequenceParallel(scatter_at="embed_dropout", dropouts=("embed_dropout", "layers."),
                                     params=("layers.", "norm."))
