"""The BERT family: post-norm bidirectional encoders trained with masked LM (+ sentence-order prediction)
(``model=bert/<preset>``).

=============  =======================================================================
config.py      :class:`BERTConfig` (the model group's keys), :class:`BERTArgs`, resolution
model.py       the ``nn.Module`` (no parallelism, no recomputation in it), parameter and FLOP counts
objective.py   masked LM and sentence order (the data transform)
tp_plan.py     the tensor-parallel plan
pipeline.py    the DeepSpeed pipeline stages
hf.py          the Hugging Face adapter (BertForMaskedLM)
family.py      :class:`BERTFamily`, which ties them together
=============  =======================================================================
"""

from pretrain.models.bert.config import BERTArgs, BERTConfig
from pretrain.models.bert.family import BERTFamily

FAMILY = BERTFamily()

__all__ = ["FAMILY", "BERTArgs", "BERTConfig", "BERTFamily"]
