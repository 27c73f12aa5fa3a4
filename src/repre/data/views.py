"""Two-view augmentation (MoCo v3 / BYOL recipe), reproducible by construction.

Every random choice for a view is drawn from a generator keyed by (seed, epoch, sample index, view), so
the views do not depend on the number of data workers or processes, and a resumed run sees the same views.

The pipeline has two stages:
- geometric, per sample (images may differ in size): random resized crop and horizontal flip -> uint8, in the
  data workers (here), or batched on the training device from the same parameters (`sample_views`;
  `repre.data.device_views`, data.device_stages=crops);
- photometric, batched on a [N, 3, S, S] float tensor with per-sample parameters: colour jitter,
  grayscale, Gaussian blur, solarization, then normalization. It runs in the collate function (in the
  data workers) and can equally run on an accelerator.

Difference from torchvision's ColorJitter, by design: the four jitter operations are applied in the fixed
order brightness, contrast, saturation, hue (torchvision shuffles the order); each is torchvision's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from repre.config import AugConfig

Stats = Sequence[float]  # per-channel normalization values: (R, G, B)


class Photo(IntEnum):
    """The photometric parameters of a view: its vector [N_PHOTO], one entry each (on/off flags are 0 or 1)."""

    JITTER = 0  # colour jitter on
    BRIGHTNESS = 1  # factors of the jitter's four operations, applied in this order
    CONTRAST = 2
    SATURATION = 3
    HUE = 4  # a shift of the HSV hue, in turns
    GRAY = 5  # grayscale on
    SIGMA = 6  # the blur's sigma, in pixels (0: no blur)
    SOLARIZE = 7  # solarization on


N_PHOTO = len(Photo)
GLOBAL_VIEWS = 2  # view ids 0 and 1 are an image's global views; 2 and up DINO's local crops


@dataclass(frozen=True)
class ViewSpec:
    """The augmentation of one run, for images of output size `size`."""

    aug: AugConfig
    size: int
    mean: tuple[float, ...]  # per channel (R, G, B)
    std: tuple[float, ...]
    local_crops: int = 0  # DINO multi-crop: views 2, 3, ... are local crops of `local_size`
    local_size: int = 0

    def blur_kernel_for(self, size: int) -> int:
        """Odd kernel covering +-3 sigma of the largest sigma, never larger than the image."""
        k = 2 * math.ceil(3 * self.aug.blur_sigma[1]) + 1
        return max(1, min(k, size - (1 - size % 2)))


def view_rng(seed: int, epoch: int, index: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, view])


def sample_crop(rng: np.random.Generator, height: int, width: int, scale: Sequence[float],
                ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): area fraction in `scale`, log-uniform aspect in `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # fallback: the whole image clipped to the ratio range, centred
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_view(rng: np.random.Generator, spec: ViewSpec, view: int, height: int,
                width: int) -> tuple[tuple[int, int, int, int], bool, np.ndarray]:
    """All random choices of one view: (crop box, flip, photometric vector [N_PHOTO])."""
    a = spec.aug
    crop = sample_crop(rng, height, width, a.crop_scale if view < GLOBAL_VIEWS else a.local_crop_scale, a.crop_ratio)
    flip = bool(rng.random() < a.hflip)
    photo = np.zeros(N_PHOTO, dtype=np.float32)
    photo[Photo.JITTER] = rng.random() < a.jitter_prob  # the draws in this order: a seed's views stay the same
    photo[Photo.BRIGHTNESS] = rng.uniform(max(0.0, 1 - a.brightness), 1 + a.brightness)
    photo[Photo.CONTRAST] = rng.uniform(max(0.0, 1 - a.contrast), 1 + a.contrast)
    photo[Photo.SATURATION] = rng.uniform(max(0.0, 1 - a.saturation), 1 + a.saturation)
    photo[Photo.HUE] = rng.uniform(-a.hue, a.hue)
    photo[Photo.GRAY] = rng.random() < a.grayscale_prob
    blur = rng.random() < a.blur_prob[min(view, len(a.blur_prob) - 1)]
    photo[Photo.SIGMA] = rng.uniform(a.blur_sigma[0], a.blur_sigma[1]) if blur else 0.0
    photo[Photo.SOLARIZE] = rng.random() < a.solarize_prob[min(view, len(a.solarize_prob) - 1)]
    return crop, flip, photo


def geometric(img: torch.Tensor, crop: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, size, size]: crop, resize (antialiased), optional horizontal flip."""
    out = TF.resized_crop(img, *crop, size=[size, size], antialias=True)
    return out.flip(-1) if flip else out


def sample_views(spec: ViewSpec, seed: int, epoch: int, index: int, height: int, width: int,
                 n_views: int = GLOBAL_VIEWS, first: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random choices of view ids first .. first + V - 1 of an image of `height` x `width`:
    (crop boxes [V, 4] int64 (top, left, h, w), flips [V] bool, photometric parameters [V, N_PHOTO])."""
    boxes, flips, photos = [], [], []
    for v in range(first, first + n_views):
        crop, flip, photo = sample_view(view_rng(seed, epoch, index, v), spec, v, height, width)
        boxes.append(crop)
        flips.append(flip)
        photos.append(photo)
    return torch.tensor(boxes, dtype=torch.int64), torch.tensor(flips), torch.from_numpy(np.stack(photos))


def make_views(img: torch.Tensor, spec: ViewSpec, seed: int, epoch: int, index: int, n_views: int = GLOBAL_VIEWS,
               first: int = 0, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image -> (uint8 views [V, 3, s, s], photometric parameters [V, N_PHOTO]) for view ids
    first .. first + V - 1 (ids 0 and 1: the global views; 2 and up: DINO's local crops, of `spec.local_size`)."""
    boxes, flips, photo = sample_views(spec, seed, epoch, index, img.shape[-2], img.shape[-1], n_views, first)
    views = [geometric(img, tuple(box), flip, size or spec.size)
             for box, flip in zip(boxes.tolist(), flips.tolist(), strict=True)]
    return torch.stack(views), photo


# ---------------------------------------------------------------- batched photometric stage


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma (ITU-R 601-2, as torchvision)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The HSV hue of x [N, 3, H, W] in [0, 1] turned by `shift` turns per sample ([N, 1, 1, 1]): torchvision's
    `adjust_hue`, one factor a sample. Value (the largest channel) and chroma (largest - smallest) stay; each
    channel comes back from the turned hue by the closed form of HSV -> RGB."""
    high, low = x.max(dim=1, keepdim=True).values, x.min(dim=1, keepdim=True).values  # [N, 1, H, W]
    chroma = high - low
    r, g, b = ((high - x) / torch.where(chroma > 0, chroma, torch.ones_like(chroma))).unbind(1)
    red, green = high[:, 0] == x[:, 0], high[:, 0] == x[:, 1]
    sector = torch.where(red, b - g, torch.where(green, 2.0 + r - b, 4.0 + g - r))  # [N, H, W]: hue x 6
    turned = (sector + 6.0 * shift[:, 0]).unsqueeze(1)
    k = torch.remainder(x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + turned, 6.0)  # [N, 3, H, W]
    return high - chroma * torch.minimum(k, 4.0 - k).clamp(0, 1)


def color_jitter(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x: [N, 3, H, W] in [0, 1]; p: [N, N_PHOTO]. Samples with p[:, Photo.JITTER] == 0 pass unchanged."""
    on = p[:, Photo.JITTER].view(-1, 1, 1, 1) > 0
    f = p.view(-1, N_PHOTO, 1, 1)  # f[:, [k]]: parameter k of each sample, [N, 1, 1, 1]
    y = (x * f[:, [Photo.BRIGHTNESS]]).clamp(0, 1)
    y = _blend(y, _gray(y).mean(dim=(2, 3), keepdim=True), f[:, [Photo.CONTRAST]])
    y = _blend(y, _gray(y), f[:, [Photo.SATURATION]])
    y = _hue(y, f[:, [Photo.HUE]])
    return torch.where(on, y, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma ([N]); sigma 0 leaves the sample unchanged."""
    n, c, h, w = x.shape
    if kernel < 3:
        return x
    r = torch.arange(kernel, dtype=x.dtype, device=x.device) - kernel // 2
    s = sigma.clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (r / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    delta = (r == 0).to(x.dtype).expand_as(k)
    k = torch.where((sigma > 0).view(-1, 1), k, delta).repeat_interleave(c, dim=0)  # [N*C, k]
    pad = kernel // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, kernel, 1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel), groups=n * c)
    return y.view(n, c, h, w)


def photometric(views: torch.Tensor, photo: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """uint8 [N, 3, S, S] + parameters [N, N_PHOTO] -> normalized float [N, 3, S, S]."""
    x = views.float().div_(255)
    x = color_jitter(x, photo)
    x = torch.where(photo[:, Photo.GRAY].view(-1, 1, 1, 1) > 0, _gray(x).expand_as(x), x)
    x = gaussian_blur(x, photo[:, Photo.SIGMA], spec.blur_kernel_for(views.shape[-1]))
    x = torch.where((photo[:, Photo.SOLARIZE].view(-1, 1, 1, 1) > 0) & (x >= 0.5), 1 - x, x)
    return normalize(x, spec.mean, spec.std)


def host_values_on(values: Sequence[float] | np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """Host values as a tensor on `like`'s device and dtype, without waiting for the device: a blocking copy would
    make the host wait for all the work queued before it (a host synchronisation in the training step)."""
    return torch.as_tensor(values, dtype=like.dtype).to(like.device, non_blocking=True)


def normalize(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """Pixels in [0, 1], [..., 3, H, W] (the channel axis third from last) -> (x - mean) / std per channel."""
    return (x - host_values_on(mean, x).view(-1, 1, 1)) / host_values_on(std, x).view(-1, 1, 1)


def denormalize(x: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """`normalize` undone: [..., 3, H, W] -> pixels, clamped to [0, 1]."""
    return (x * host_values_on(std, x).view(-1, 1, 1) + host_values_on(mean, x).view(-1, 1, 1)).clamp(0, 1)
