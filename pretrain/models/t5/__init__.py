"""The T5 family: pre-norm encoder-decoders with relative position buckets, trained with span corruption
(``model=t5/<preset>``).

=============  =======================================================================
config.py      :class:`T5Config` (the model group's keys), :class:`T5Args`, resolution
model.py       the ``nn.Module`` (no parallelism, no recomputation in it), parameter and FLOP counts
objective.py   span corruption (the data transform)
tp_plan.py     the tensor-parallel plan, and why there are no pipeline stages
hf.py          the Hugging Face adapter (T5ForConditionalGeneration)
family.py      :class:`T5Family`, which ties them together
=============  =======================================================================
"""

from pretrain.models.t5.config import T5Args, T5Config
from pretrain.models.t5.family import T5Family

FAMILY = T5Family()

__all__ = ["FAMILY", "T5Args", "T5Config", "T5Family"]
