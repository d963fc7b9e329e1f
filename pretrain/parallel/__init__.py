"""3D parallelism: the process grid shared with DeepSpeed, tensor-parallel layers and the step that applies
them to a built model.

* :mod:`pretrain.parallel.validate`: layout and shape checks before any process group (no torch.distributed);
* :mod:`pretrain.parallel.topology`: :class:`~pretrain.parallel.topology.ParallelGrid`, DeepSpeed's grid over
  ``PipeModelDataParallelTopology`` and the ``mpu`` handed to ``deepspeed.initialize``;
* :mod:`pretrain.parallel.tensor`: the Megatron primitives (communication functions, column/row-parallel
  linears, vocab-parallel embedding and cross entropy);
* :mod:`pretrain.parallel.parallelize`: :func:`~pretrain.parallel.parallelize.parallelize` a GPT, BERT or T5
  over a tensor-parallel group, and (un)shard its state dict.

Submodules are imported where used, so reading a config does not import DeepSpeed.
"""
