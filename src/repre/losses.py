"""Losses as pure functions: every schedule value arrives as an argument."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float, offset: int = 0) -> torch.Tensor:
    """MoCo v3's contrastive loss for one direction: CE(q . k^T / tau, labels) * 2 tau.

    q: [N, C] queries of this process; k: [M, C] keys gathered over all processes (M = N * world size).
    Query i's positive is key `offset + i` (offset = rank * N), so several processes equal one big batch.
    """
    wide = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.float32)  # float64 kept
    q = F.normalize(q.to(wide), dim=1)
    k = F.normalize(k.to(wide), dim=1)
    # under autocast this product runs in its dtype (bf16, fp16), as moco-v3 builder.py:70 does under main_moco.py:352
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2 * temperature)


NORM_PIX_EPS = 1e-6  # the floor of a patch's variance with norm_pix (MAE's norm_pix_loss adds this epsilon)


def patch_stats(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each patch x patch block's pixels over all channels (MAE's norm_pix statistics, the
    variance unbiased, floored at NORM_PIX_EPS): [B, C, H, W] -> (mean, std), each [B, 1, H, W] and constant
    over a block, so `(x - mean) / std` normalizes and `y * std + mean` undoes it without reordering pixels
    into patches (H and W divisible by patch)."""
    n = x.shape[1] * patch * patch

    def block_mean(v: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, 1, H, W]
        pooled = F.avg_pool2d(v.mean(dim=1, keepdim=True), patch)
        return pooled.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)

    mean = block_mean(x)
    var = block_mean((x - mean).square()) * (n / (n - 1))  # two passes, as torch.var: exact for flat patches
    return mean, var.clamp(min=NORM_PIX_EPS).sqrt()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, *, norm_pix: bool = False,
                        patch: int | None = None) -> torch.Tensor:
    """The mean L1 distance between pred and target ([B, 3, H, W], normalized pixel space).

    norm_pix: the target is normalized per patch of side `patch` (the encoder's: required then; mean 0, std 1
    over each patch's pixels and channels, as MAE's norm_pix_loss, `patch_stats`), and the prediction is read in
    that normalized space.
    """
    if norm_pix and patch is None:
        raise ValueError("norm_pix=True normalizes the target per patch: give patch=, the encoder's patch size")
    if pred.shape != target.shape:  # F.l1_loss would broadcast a grey [B, 1, H, W] target, with a warning
        raise ValueError(f"the reconstruction {list(pred.shape)} and its target {list(target.shape)} differ in shape")
    wide = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)  # float64 kept
    pred, target = pred.to(wide), target.to(wide)
    if norm_pix:
        assert patch is not None  # refused above
        if target.shape[-2] % patch or target.shape[-1] % patch:
            raise ValueError(f"norm_pix=True normalizes per patch of {patch} px: the images' sides "
                             f"{tuple(target.shape[-2:])} must be multiples of it")
        mean, std = patch_stats(target, patch)
        target = (target - mean) / std
    return F.l1_loss(pred, target)


def teacher_probs(teacher: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """DINO's teacher targets: logits [N, K] centered and sharpened -> probabilities [N, K], float32."""
    return F.softmax((teacher.float() - center) / teacher_temp, dim=-1)


def dino_loss(
    student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, n_crops: int,
    student_temp: float, teacher_temp: float,
) -> torch.Tensor:
    """DINO's cross-entropy between the centered, sharpened teacher and the student over every pair of
    different crops, averaged over pairs and samples.

    student: [n_crops * B, K] logits, crop-major (the 2 global crops first, then the local ones);
    teacher: [2 * B, K] logits of the 2 global crops; center: [1, K].
    """
    if student.shape[0] * 2 != n_crops * teacher.shape[0]:
        raise ValueError(f"{student.shape[0]} student rows for {n_crops} crops of the {teacher.shape[0] // 2} "
                         f"images the teacher's {teacher.shape[0]} rows hold: expected "
                         f"{n_crops * teacher.shape[0] // 2}")
    s = (student.float() / student_temp).chunk(n_crops)
    t = teacher_probs(teacher, center, teacher_temp).detach().chunk(2)
    total, pairs = student.new_zeros((), dtype=torch.float32), 0
    for i, q in enumerate(t):
        for v, logits in enumerate(s):
            if v == i:
                continue
            total = total + torch.sum(-q * F.log_softmax(logits, dim=-1), dim=-1).mean()
            pairs += 1
    return total / pairs


def center_update(center: torch.Tensor, teacher_sum: torch.Tensor, count: int, momentum: float) -> torch.Tensor:
    """DINO's center: EMA of the batch mean of the teacher's logits, `teacher_sum` [1, K] summed over the
    `count` rows of every process: center * m + sum / count * (1 - m)."""
    return center * momentum + teacher_sum / count * (1 - momentum)


def moby_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoBY's (MoCo v2-style) loss for one direction: CE over [q . k+, q . queue] / tau with the positive first.

    q, k: [N, C] (L2-normalized here); queue: [K, C] L2-normalized keys of earlier batches.
    """
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.float().t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
