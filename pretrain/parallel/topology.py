"""The process grid: tensor x pipeline x data parallel ranks, shared with DeepSpeed.

The grid is DeepSpeed's own :class:`PipelineParallelGrid` over a :class:`PipeModelDataParallelTopology`, so
the model (our tensor-parallel layers), DeepSpeed's ZeRO optimizer (data-parallel groups, grad-norm
reduction over the model-parallel group) and its pipeline engine (stages, p2p groups) all agree on which
rank is which. Axes, outermost first: ``pipe``, ``data``, ``model`` (= tensor): the ranks of a
tensor-parallel group are adjacent (one node, fast links), pipeline stages are the farthest apart.

Example, world 8 = tp 2 x pp 2 x dp 2::

    rank:  0  1  2  3  4  5  6  7
    pipe:  0  0  0  0  1  1  1  1
    data:  0  0  1  1  0  0  1  1
    tp:    0  1  0  1  0  1  0  1

:class:`ParallelGrid` adds the tensor-parallel names of Megatron's ``mpu`` to DeepSpeed's grid; it is the
``mpu=`` to hand to ``deepspeed.initialize`` when pipeline parallelism is off (with it on, DeepSpeed takes
the grid of the ``PipelineModule``, built from :meth:`ParallelGrid.topology`, the same layout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coord:
    """Where one rank sits in the grid."""

    pp: int  # pipeline stage
    dp: int  # data-parallel replica
    tp: int  # tensor-parallel shard


def make_topology(tp: int, pp: int, world_size: int) -> PipeModelDataParallelTopology:
    if tp < 1 or pp < 1 or world_size % (tp * pp):
        raise ValueError(f"world size {world_size} is not a multiple of tp x pp = {tp} x {pp}")
    return PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=world_size // (tp * pp))


def coord_of(rank: int, tp: int, pp: int, world_size: int) -> Coord:
    """Coordinates of ``rank`` without any process group (logging, data-sampler planning, tests)."""
    c = make_topology(tp, pp, world_size).get_coord(rank)
    return Coord(pp=c.pipe, dp=c.data, tp=c.model)


class ParallelGrid(PipelineParallelGrid):
    """DeepSpeed's grid for ``tp x pp x dp`` ranks, and the ``mpu`` DeepSpeed's engine queries.

    DeepSpeed calls on an ``mpu``: ``get_data_parallel_{group,rank,world_size,group_ranks}`` (gradient
    all-reduce, ZeRO partitioning, broadcast of the initial weights), ``get_model_parallel_{group,rank,
    world_size}`` (grad norm and overflow summed over the model-parallel ranks; checkpoint file names
    ``mp_rank_XX``), ``get_tensor_model_parallel_rank`` (ZeRO counts a parameter without the
    ``tensor_model_parallel`` tag only on tensor rank 0, so replicated weights enter the grad norm once) and
    ``get_pipe_parallel_world_size``. The base class has all but the ``tensor_model_parallel`` group names,
    which are added here. Every rank must build the grid, in the same order relative to other
    ``new_group`` calls (``torch.distributed.new_group`` is collective).
    """

    def __init__(self, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1):
        if not dist.is_initialized():
            raise RuntimeError("ParallelGrid needs torch.distributed to be initialized first")
        import deepspeed
        import deepspeed.comm

        if not deepspeed.comm.is_initialized():  # DeepSpeed's comm layer over the existing torch process group
            if dist.get_backend() == "gloo":
                from pretrain.distributed import skip_shm_inference_op

                skip_shm_inference_op()
            deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
        world = dist.get_world_size()
        super().__init__(topology=make_topology(tensor_parallel_size, pipeline_parallel_size, world))
        self.tensor_parallel_size = tensor_parallel_size
        c = self._topo.get_coord(self.global_rank)
        self.coord = Coord(pp=c.pipe, dp=c.data, tp=c.model)
        self.tp_group_ranks: list[int] = sorted(self._topo.filter_match(pipe=c.pipe, data=c.data))
        log.debug("rank %d: %s, tp group %s, dp group %s", self.global_rank, self.coord, self.tp_group_ranks,
                  self.dp_group)

    # Megatron's names for the tensor-parallel ("slice") group; DeepSpeed's bwc helpers prefer them.
    def get_tensor_model_parallel_group(self) -> dist.ProcessGroup:
        return self.slice_proc_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of tensor rank 0 of this rank's group (the source of TP broadcasts)."""
        return self.tp_group_ranks[0]

    def get_tensor_model_parallel_group_ranks(self) -> list[int]:
        return list(self.tp_group_ranks)

    def dropout_seed(self, seed: int) -> int:
        """The seed of the dropout stream once the weights are built: the same on every rank of a tensor-parallel
        group (their copies of a replicated activation must drop the same elements, or they diverge), different
        across data-parallel replicas. With tp = pp = 1 it is ``seed + 1000 * rank``, the trainer's formula."""
        return seed + 1000 * self.coord.dp

    def expert_parallel_group(self, ep: int) -> tuple[dist.ProcessGroup | None, int]:
        """This rank's expert-parallel group of ``ep`` consecutive data-parallel ranks (same pipeline stage and
        tensor rank: DeepSpeed's ``E + D`` layout, built by ``deepspeed.utils.groups`` with this grid as ``mpu``,
        :func:`pretrain.parallel.expert.expert_groups`) and its rank in it; ``(None, 0)`` for ``ep == 1``.
        Collective: every rank calls it, in the same order."""
        from pretrain.parallel.expert import expert_groups

        return expert_groups(self, ep)

    @property
    def tp(self) -> int:
        return self.tensor_parallel_size

    @property
    def pp(self) -> int:
        return self.pipe_parallel_size

    @property
    def dp(self) -> int:
        return self.data_parallel_size

    def __repr__(self) -> str:
        return f"ParallelGrid(tp={self.tp}, pp={self.pp}, dp={self.dp}, rank={self.global_rank}, {self.coord})"
