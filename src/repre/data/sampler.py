"""The order of a run's images: batches of (epoch, index) keys, reshuffled each epoch from the run's seed, from
any step (a resumed run goes on where it stopped), each process its share of the same global batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from repre.core.rng import epoch_seed
from repre.errors import UserError


def check_one_batch(size: int, batch_size: int, batch_key: str = "train.batch_size") -> None:
    """Refuse a dataset smaller than one batch (every epoch drops its last partial batch: no step would run)."""
    if size < batch_size:
        raise UserError(f"the dataset has {size} image{'' if size == 1 else 's'}, fewer than one batch "
                        f"({batch_key}={batch_size}); lower {batch_key} or add images")


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys, reshuffled each epoch from (seed, epoch); drops the last partial batch.

    `start_step` resumes inside an epoch: iteration begins with the batch of that global step. Distributed
    (`world` > 1): every process draws the same global batch of `batch_size` keys and keeps its own contiguous
    share, `rank`-th of `world`, so N processes see exactly the images (and views) one process would.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world: int = 1, batch_key: str = "train.batch_size") -> None:
        """`batch_key`: the config key that set `batch_size`, named when the dataset is smaller than a batch."""
        check_one_batch(size, batch_size, batch_key)
        self.size, self.batch_size, self.seed, self.start_step = size, batch_size, seed, start_step
        self.steps_per_epoch = size // batch_size
        self.share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_step, self.steps_per_epoch)
        while True:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(self.size, generator=g).tolist()
            for b in range(offset, self.steps_per_epoch):
                batch = order[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(epoch, i) for i in batch[self.share]]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return self.steps_per_epoch
