"""T5's tensor-parallel plan (:mod:`pretrain.parallel.plan`): self- and cross-attention q/k/v column-parallel
by heads, output projections row-parallel; MLP wi/wi_0/wi_1 column, wo row; the relative-position bias table
split by heads (each rank adds the biases of its own heads); vocabulary-parallel shared embedding and output
layer. RMSNorms replicated. No sequence parallelism."""

from pretrain.parallel.plan import Column, HeadSplit, Region, Row, VocabEmbedding, VocabOutput

TP_PLAN: dict[str, object] = {
    "shared": VocabEmbedding(),
    "*coder.relative_attention_bias": HeadSplit(dim=1),  # [buckets, heads]
    "*coder.layers.*.self_attn": Region((0, 1)),  # (x, kv=x, bias): one entry for the one tensor
    "*coder.layers.*.cross_attn": Region((0, 1)),  # (x, memory, bias): two replicated streams
    "*coder.layers.*.*_attn.[qkv]": Column(copy_input=False),
    "*coder.layers.*.*_attn.o": Row(),
    "*coder.layers.*.mlp": Region((0,)),
    "*coder.layers.*.mlp.wi*": Column(copy_input=False),
    "*coder.layers.*.mlp.wo": Row(),
    "lm_head": VocabOutput(),
}

# Why parallel.pipeline_model_parallel_size > 1 is refused for T5.
PIPELINE_UNSUPPORTED = (
    "T5's relative-position bias table lives in the first encoder and the first decoder layer and is used by "
    "every layer of its stack, so it would have to be tied across all stages, and the encoder output has to "
    "travel through every decoder stage and collect gradients from each cross-attention; DeepSpeed's "
    "PipelineModule (one linear chain of layers) cannot express that cleanly"
)
