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

Context parallelism (``parallel.context_parallel_size`` = C > 1, :mod:`pretrain.parallel.context`) adds a
``context`` axis between ``data`` and ``model``: the C ranks of a context group are neighbours of the tensor group
(tp x C ranks per node first), hold the same weights and read the same samples, each its own chunk of the
sequence. DeepSpeed learns it through the sequence-parallel names of its ``mpu`` (``get_sequence_parallel_*``,
``get_sequence_data_parallel_*``): ZeRO partitions and gradients are reduced over data x context ranks, summed
over the context ranks (each holds its chunk's share of the loss) and averaged over the data ranks. Example,
world 8 = dp 2 x cp 2 x tp 2::

    rank:  0  1  2  3  4  5  6  7
    data:  0  0  0  0  1  1  1  1
    cp:    0  0  1  1  0  0  1  1
    tp:    0  1  0  1  0  1  0  1
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology, ProcessTopology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coord:
    """Where one rank sits in the grid."""

    pp: int  # pipeline stage
    dp: int  # data-parallel replica
    tp: int  # tensor-parallel shard
    cp: int = 0  # context-parallel chunk of the sequence


def make_topology(tp: int, pp: int, world_size: int, cp: int = 1) -> ProcessTopology:
    """DeepSpeed's ``pipe x data x model`` topology; with ``cp`` > 1 a ``context`` axis between data and model."""
    if tp < 1 or pp < 1 or cp < 1 or world_size % (tp * pp * cp):
        raise ValueError(f"world size {world_size} is not a multiple of tp x pp x cp = {tp} x {pp} x {cp}")
    dp = world_size // (tp * pp * cp)
    if cp == 1:
        return PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    return ProcessTopology(axes=["pipe", "data", "context", "model"], dims=[pp, dp, cp, tp])


def _coord(c) -> Coord:
    return Coord(pp=c.pipe, dp=c.data, tp=c.model, cp=getattr(c, "context", 0))


def coord_of(rank: int, tp: int, pp: int, world_size: int, cp: int = 1) -> Coord:
    """Coordinates of ``rank`` without any process group (logging, data-sampler planning, tests)."""
    return _coord(make_topology(tp, pp, world_size, cp).get_coord(rank))


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

    def __init__(self, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, context_parallel_size: int = 1):
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
        super().__init__(topology=make_topology(tensor_parallel_size, pipeline_parallel_size, world,
                                                context_parallel_size))
        self.tensor_parallel_size = tensor_parallel_size
        self.context_parallel_size = context_parallel_size
        c = self._topo.get_coord(self.global_rank)
        self.coord = _coord(c)
        same = {"context": c.context} if context_parallel_size > 1 else {}
        self.tp_group_ranks: list[int] = sorted(self._topo.filter_match(pipe=c.pipe, data=c.data, **same))
        self.cp_group_ranks: list[int] = [self.global_rank]
        self.cp_proc_group = None
        self.cp_dp_proc_group = self.dp_proc_group
        self.cp_dp_group_ranks: list[int] = list(self.dp_group)
        if context_parallel_size > 1:
            self._build_context_groups()
        log.debug("rank %d: %s, tp group %s, dp group %s", self.global_rank, self.coord, self.tp_group_ranks,
                  self.dp_group)

    def _build_context_groups(self) -> None:
        """The context groups (ranks differing only in ``context``), the data x context groups DeepSpeed reduces
        gradients over, and the model-parallel groups again: the base class builds those from the ranks of one
        ``data`` index, which would put a context group's copies of a gradient twice into the gradient norm."""
        topo, me = self._topo, self.global_rank
        for ranks in topo.get_axis_comm_lists("context"):
            group = dist.new_group(ranks)
            if me in ranks:
                self.cp_group_ranks, self.cp_proc_group = ranks, group
        for pipe in range(self.pp):
            for model in range(self.tp):
                ranks = sorted(topo.filter_match(pipe=pipe, model=model))
                group = dist.new_group(ranks)
                if me in ranks:
                    self.cp_dp_group_ranks, self.cp_dp_proc_group = ranks, group
        for data in range(self.dp):
            for context in range(self.context_parallel_size):
                ranks = sorted(topo.filter_match(data=data, context=context))
                group = dist.new_group(ranks)
                if me in ranks:
                    self.ds_model_proc_group, self.ds_model_world_size = group, len(ranks)
                    self.ds_model_rank = ranks.index(me)

    # DeepSpeed's sequence-parallel (Ulysses) names: its engine and ZeRO reduce over get_sequence_data_parallel_group
    # and divide by its size / get_sequence_parallel_world_size (= sum over context ranks, mean over data ranks).
    # With cp = 1 they are the data-parallel group's, so DeepSpeed does what it did without them.
    def get_sequence_parallel_group(self) -> dist.ProcessGroup | None:
        return self.cp_proc_group

    def get_sequence_parallel_world_size(self) -> int:
        return self.context_parallel_size

    def get_sequence_parallel_rank(self) -> int:
        return self.coord.cp

    def get_sequence_data_parallel_group(self) -> dist.ProcessGroup:
        return self.cp_dp_proc_group

    def get_sequence_data_parallel_world_size(self) -> int:
        return len(self.cp_dp_group_ranks)

    def get_sequence_data_parallel_rank(self) -> int:
        return self.cp_dp_group_ranks.index(self.global_rank)

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
        across data-parallel replicas and context chunks (different tokens). With tp = pp = 1 it is ``seed + 1000 *
        rank``, the trainer's formula."""
        return seed + 1000 * (self.coord.dp * self.context_parallel_size + self.coord.cp)

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

    @property
    def cp(self) -> int:
        return self.context_parallel_size

    def __repr__(self) -> str:
        cp = f", cp={self.cp}" if self.cp > 1 else ""
        return f"ParallelGrid(tp={self.tp}, pp={self.pp}, dp={self.dp}{cp}, rank={self.global_rank}, {self.coord})"
