"""The GPT family: decoder-only transformers, GPT-2 style or LLaMA style (``model=gpt/<preset>``).

=============  =======================================================================
config.py      :class:`GPTConfig` (the model group's keys), :class:`GPTArgs`, resolution
model.py       the ``nn.Module`` (no parallelism, no recomputation in it)
tp_plan.py     the tensor-parallel plan and where sequence parallelism splits
pipeline.py    the DeepSpeed pipeline stages
hf.py          the Hugging Face adapter (GPT2LMHeadModel, LlamaForCausalLM)
family.py      :class:`GPTFamily`, which ties them together
=============  =======================================================================
"""

from pretrain.models.gpt.config import GPTArgs, GPTConfig, count_parameters, default_ffn_hidden_size
from pretrain.models.gpt.family import GPTFamily

FAMILY = GPTFamily()

__all__ = ["FAMILY", "GPTArgs", "GPTConfig", "GPTFamily", "count_parameters", "default_ffn_hidden_size"]
