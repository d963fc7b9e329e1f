"""Which samples each data-parallel rank reads, and the DataLoader that turns them into batches.

:class:`PretrainingSampler` is Megatron's ``MegatronPretrainingSampler``: the global sample stream is read
in strides of ``micro_batch_size * data_parallel_size`` consecutive indices and rank ``r`` takes the ``r``-th
slice of each stride. The order itself is already shuffled by the dataset index, so the sampler only has to
be exact and resumable: it starts at ``consumed_samples`` (all ranks together), so a resumed run continues
with the very next global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from pretrain.core.errors import ConfigError


class PretrainingSampler:
    """Yields, for this rank, lists of ``micro_batch_size`` sample indices (a batch sampler)."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, data_parallel_rank: int,
                 data_parallel_size: int):
        if total_samples <= 0:
            raise ConfigError(f"the sampler needs total_samples > 0, got {total_samples}")
        if micro_batch_size <= 0:
            raise ConfigError(f"trainer.micro_batch_size must be > 0, got {micro_batch_size}")
        if data_parallel_size <= 0 or not 0 <= data_parallel_rank < data_parallel_size:
            raise ConfigError(f"data-parallel rank {data_parallel_rank} is not in [0, {data_parallel_size})")
        if consumed_samples < 0 or consumed_samples > total_samples:
            raise ConfigError(f"consumed_samples={consumed_samples} is outside [0, total_samples={total_samples}]")
        self.total_samples = int(total_samples)
        self.consumed_samples = int(consumed_samples)
        self.micro_batch_size = int(micro_batch_size)
        self.data_parallel_rank = int(data_parallel_rank)
        self.data_parallel_size = int(data_parallel_size)
        self.stride = self.micro_batch_size * self.data_parallel_size

    def __len__(self) -> int:
        """Micro-batches this rank still reads (incomplete final strides are dropped on every rank alike)."""
        return (self.total_samples - self.consumed_samples) // self.stride

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.data_parallel_rank * self.micro_batch_size
        for start in range(self.consumed_samples, self.total_samples - self.stride + 1, self.stride):
            yield list(range(start + lo, start + lo + self.micro_batch_size))


def collate_tokens(samples: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """Stack ``seq_length + 1`` token windows into inputs and next-token labels."""
    tokens = torch.from_numpy(np.stack(samples).astype(np.int64, copy=False))
    return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}


class ObjectiveDataset(torch.utils.data.Dataset):
    """Applies a model family's pretraining objective to each token window: ``transform(index, window)``
    -> dict of arrays. The index is the global sample index, so the objective's randomness is a function of
    (seed, index) and a resumed run rebuilds exactly the same batches."""

    def __init__(self, base: torch.utils.data.Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.transform(i, self.base[i])


def collate_arrays(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def make_loader(dataset: torch.utils.data.Dataset, sampler: PretrainingSampler, num_workers: int = 0,
                transform=None) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` in the sampler's order. Without ``transform`` it yields causal-LM
    ``{"input_ids", "labels"}`` LongTensors of shape ``[micro_batch_size, seq_length]``; with one, the
    stacked arrays of the objective (see :class:`ObjectiveDataset`)."""
    if num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
    if transform is not None:
        dataset = ObjectiveDataset(dataset, transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_tokens if transform is None else collate_arrays,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        # its own generator: creating a loader must not advance the global RNG that dropout draws from,
        # or a resumed run would diverge from an uninterrupted one
        generator=torch.Generator().manual_seed(0),
    )
