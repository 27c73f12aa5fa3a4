"""The training batches of the evaluations that train (fine-tuning, the papers' linear probes): one random
resized crop per image, flipped or not, without photometric changes. Each view is a function of (seed, epoch,
image), and each process takes its share of every global batch (`repre.data.sampler.EpochBatchSampler`), so
N processes see what one process sees and a run restarted at a step sees what it would have seen."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import DataLoader

from repre.config import AugConfig, Config
from repre.data.pipeline import ViewCollate, ViewDataset
from repre.data.sampler import EpochBatchSampler
from repre.data.sources import ImageSource, stats
from repre.data.views import ViewSpec
from repre.data.workers import resolve_workers, worker_started


def crop_and_flip(aug: AugConfig, **geometry: Any) -> AugConfig:
    """`aug` without its photometric stage (jitter, grayscale, blur, solarization); `geometry` replaces its
    crop and flip keys (crop_scale, crop_ratio, hflip)."""
    return dataclasses.replace(aug, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=[0.0, 0.0],
                               solarize_prob=[0.0, 0.0], **geometry)


def augmented_loader(cfg: Config, source: ImageSource, aug: AugConfig, batch_size: int, batch_key: str,
                     start_step: int = 0, rank: int = 0, world: int = 1) -> DataLoader:
    """Batches {"views": normalized float [B / world, 1, 3, S, S], "label": [B / world], ...} of `source` at
    data.image_size, from global step `start_step` on; `batch_size` is the global batch B, set by `batch_key`."""
    mean, std = stats(cfg.data, source)
    spec = ViewSpec(aug=aug, size=cfg.data.image_size, mean=mean, std=std)
    sampler = EpochBatchSampler(len(source), batch_size, cfg.train.seed, start_step, rank, world, batch_key=batch_key)
    return DataLoader(ViewDataset(source, spec, cfg.train.seed, n_views=1), batch_sampler=sampler,
                      collate_fn=ViewCollate(spec), num_workers=resolve_workers(cfg.train.num_workers),
                      worker_init_fn=worker_started,
                      generator=torch.Generator().manual_seed(cfg.train.seed))  # leaves the global RNG alone
