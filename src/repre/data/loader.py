"""Datasets, the resumable epoch sampler and the data loaders of pre-training and evaluation."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from repre.config import Config, DataConfig
from repre.data.device_views import crop_on_device, jpeg_shape, pack, pixels_payload, scale_boxes
from repre.data.fashion_mnist import FashionMNIST
from repre.data.folder import ImageFolder, UnreadableImage, decode
from repre.data.scenes import FashionScenes
from repre.data.synthetic import Synthetic
from repre.data.views import ViewSpec, make_views, normalize, photometric, sample_views
from repre.engine.distributed import rank, world_size
from repre.errors import UserError

log = logging.getLogger("repre")


class ImageSource(Protocol):
    """What every dataset provides: indexable uint8 [3, H, W] images with integer labels (-1: none)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int | None

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[torch.Tensor, int]: ...


def _folder_split(root: str | None, split: str, name: str = "folder") -> Path:
    if not root:
        raise UserError(f"data.name={name} needs data.root: --set data.root=/path/to/{'shards' if name == 'shards' else 'images'}")
    base = Path(root)
    if name == "shards" and not base.is_dir():  # a shard or a pattern: training data only
        if split == "train":
            return base
        raise UserError(f"evaluation needs labelled splits: with data.name=shards, data.root must be a folder "
                        f"with train/ and val/ shards; {root} is a shard or a pattern")
    if split == "train":
        return base / "train" if (base / "train").is_dir() else base
    for name in ("val", "test"):
        if (base / name).is_dir():
            return base / name
    raise UserError(
        f"evaluation needs labelled splits: {base}/train/<class>/... and {base}/val/<class>/...; "
        f"{base} has no val/ (or test/) folder"
    )


STREAMS_EVALUATE = ("evaluation reads labelled images at random, which streamed shards ({root}) cannot give: "
                    "evaluate with --set data.root=<a local folder, or shards with train/ and val/> "
                    "--set data.shard_access=random")


def build_source(cfg: DataConfig, split: str, seed: int = 0) -> ImageSource:
    """The `split` ("train" or "test") of the configured dataset."""
    if cfg.name == "fashion-mnist":
        return FashionMNIST(cfg.root, split)
    if cfg.name == "fashion-scenes":
        count = cfg.scenes_train if split == "train" else cfg.scenes_test
        return FashionScenes(cfg.root, split, count, cfg.scene_size, seed=seed)
    if cfg.name == "synthetic":
        count = cfg.synthetic_train if split == "train" else cfg.synthetic_test
        return Synthetic(split, count, cfg.image_size, cfg.synthetic_classes, seed=seed)
    if cfg.name == "shards":
        from repre.data.shards import TarShards
        from repre.data.stream import StreamShards

        if cfg.streamed:
            if split != "train":
                raise UserError(STREAMS_EVALUATE.format(root=cfg.root))
            root = cfg.root if not Path(str(cfg.root)).is_dir() else str(_folder_split(cfg.root, split, "shards"))
            return StreamShards(root, cfg.stream_size)
        return TarShards(str(_folder_split(cfg.root, split, "shards")))
    if cfg.name == "folder":
        train_dir = _folder_split(cfg.root, "train")  # both splits label by the train split's class folders
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else None
        return ImageFolder(_folder_split(cfg.root, split), classes=classes)
    raise UserError(f"unknown data.name {cfg.name!r}")


def stats(cfg: DataConfig, source: ImageSource) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization statistics: the configured ones, else the dataset's own."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    return tuple(source.mean), tuple(source.std)


def _first_readable(source: ImageSource, index: int, read):
    """`read(i)` for i = index, index + 1, ... (wrapping) until an image is readable: (result, images skipped)."""
    n = len(source)
    for skipped in range(n):
        try:
            return read((index + skipped) % n), skipped
        except UnreadableImage as exc:
            log.warning("skipping unreadable image (replaced by the next one): %s", exc)
    raise UserError("no image in the dataset could be read")


def load_or_replace(source: ImageSource, index: int) -> tuple[torch.Tensor, int, int]:
    """Load `index`; an unreadable image is replaced by the next index. Returns (image, label, skipped)."""
    (img, label), skipped = _first_readable(source, index, source.load)
    return img, label, skipped


def payload_from_bytes(data: bytes, name: str, label: int, encoded_ok: bool) -> dict:
    """A file's bytes as they cross to the device: {"payload": the JPEG bytes [n] when `encoded_ok` and the device
    decodes them (`jpeg_shape`), else the decoded pixels [3*H*W]; "encoded"; "shape": (H, W); "label"}. Raises
    UnreadableImage."""
    shape = jpeg_shape(data) if encoded_ok else None
    if shape is not None:
        return {"payload": torch.frombuffer(bytearray(data), dtype=torch.uint8), "encoded": True, "shape": shape,
                "label": label}
    return pixels_payload(decode(io.BytesIO(data), name), label)


def load_payload(source: ImageSource, index: int, encoded_ok: bool) -> tuple[dict, int]:
    """The image at `index` (or the next readable one) as it crosses to the device (`payload_from_bytes`), and
    the number of images skipped. Sources without files (Fashion-MNIST, synthetic) send pixels."""

    def read(i: int) -> dict:
        if hasattr(source, "encoded"):
            return payload_from_bytes(*source.encoded(i), encoded_ok=encoded_ok)
        return pixels_payload(*source.load(i))

    return _first_readable(source, index, read)


class Subset:
    """The first `count` images of a source."""

    def __init__(self, source: ImageSource, count: int) -> None:
        self.source, self.count = source, min(count, len(source))
        self.mean, self.std, self.num_classes = source.mean, source.std, source.num_classes

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.source.load(index)


class Pick:
    """The images of a source at `indices`, in that order."""

    def __init__(self, source: ImageSource, indices: torch.Tensor) -> None:
        self.source, self.indices = source, indices.tolist()
        self.mean, self.std, self.num_classes = source.mean, source.std, source.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.source.load(self.indices[index])


def val_split(size: int, val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), each sorted, of a train split of `size` images: a fixed random
    `val_size` of them (the same for every run and seed; class-sorted folders still give every class)."""
    if not 0 < val_size < size:
        raise UserError(f"eval.val_size={val_size} must be between 0 and the train split's {size} images")
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(0))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def eval_source(cfg: Config, split: str) -> ImageSource:
    """The labelled `split` ("train" or "test") an evaluation uses. With eval.split=val the evaluation never
    sees the test split: "test" is a fixed random eval.val_size of the train images, "train" the others."""
    if cfg.data.streamed:
        raise UserError(STREAMS_EVALUATE.format(root=cfg.data.root))
    if cfg.eval.split == "test":
        return build_source(cfg.data, split, seed=cfg.train.seed)
    source = build_source(cfg.data, "train", seed=cfg.train.seed)
    train_idx, val_idx = val_split(len(source), cfg.eval.val_size)
    return Pick(source, train_idx if split == "train" else val_idx)


class ViewDataset(Dataset):
    """Key (epoch, index) -> augmented uint8 views of one image (two by default), with their photometric parameters.

    With `crops_on_device` the views are not cut here: the sample holds the whole image (`load_payload`; its
    JPEG bytes with `decode_on_device`) and the views' boxes, flips and photometric parameters, drawn exactly
    as the views here would be, for `repre.data.device_views.crop_on_device`."""

    def __init__(self, source: ImageSource, spec: ViewSpec, seed: int, n_views: int = 2,
                 crops_on_device: bool = False, decode_on_device: bool = False) -> None:
        self.source, self.spec, self.seed, self.n_views = source, spec, seed, n_views
        self.crops_on_device, self.decode_on_device = crops_on_device, decode_on_device

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        if self.crops_on_device:
            loaded, skipped = load_payload(self.source, index, self.decode_on_device)
        else:
            (img, label), skipped = _first_readable(self.source, index, self.source.load)
            loaded = {"image": img, "label": label}
        return self.sample(loaded, epoch, index, skipped)

    def load_bytes(self, data: bytes, name: str, label: int) -> dict:
        """A file's bytes -> a loaded image for `sample`; raises UnreadableImage."""
        if self.crops_on_device:
            return payload_from_bytes(data, name, label, self.decode_on_device)
        return {"image": decode(io.BytesIO(data), name), "label": label}

    def sample(self, loaded: dict, epoch: int, index: int, skipped: int = 0) -> dict:
        """A loaded image ({"image": uint8 [3, H, W], "label"}, or a `payload_from_bytes` dict with crops on the
        device) -> what the collate takes: its views (or their parameters) for (epoch, index)."""
        spec, seed = self.spec, self.seed
        if self.crops_on_device:
            sample = {k: v for k, v in loaded.items() if k != "drawn"}
            h, w = loaded.get("drawn", loaded["shape"])  # the full size (a huge image crosses downscaled)
            boxes, sample["flips"], sample["photo"] = sample_views(spec, seed, epoch, index, h, w, self.n_views)
            sample["boxes"] = scale_boxes(boxes, (h, w), loaded["shape"])
            if spec.local_crops:
                boxes, sample["local_flips"], sample["local_photo"] = sample_views(
                    spec, seed, epoch, index, h, w, spec.local_crops, first=2)
                sample["local_boxes"] = scale_boxes(boxes, (h, w), loaded["shape"])
        else:
            img = loaded["image"]
            h, w = img.shape[-2:]
            views, photo = make_views(img, spec, seed, epoch, index, self.n_views)
            sample = {"views": views, "photo": photo, "label": loaded["label"]}
            if spec.local_crops:
                sample["local_views"], sample["local_photo"] = make_views(
                    img, spec, seed, epoch, index, spec.local_crops, first=2, size=spec.local_size)
        small = int(min(h, w) < spec.size)  # upscaled by the crop: counted, never refused
        return {**sample, "index": index, "skipped": skipped, "small": small}


def batched_photometric(views: torch.Tensor, photo: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """uint8 views [B, V, 3, S, S] with their parameters [B, V, N_PHOTO] -> normalized float [B, V, 3, S, S],
    on the views' device."""
    b, v = views.shape[:2]
    return photometric(views.flatten(0, 1), photo.flatten(0, 1).to(views.device), spec).view(b, v, *views.shape[2:])


def finish_views(batch: dict[str, torch.Tensor], spec: ViewSpec) -> dict[str, torch.Tensor]:
    """The stages a batch's loader left out, where its tensors are now (the training device): the crops of a
    packed batch (aug.geometric_on=device; "pixels" moved, "jpeg" on the CPU), then the photometric stage of
    uint8 views (their parameters under "photo"/"local_photo"). A batch whose views are float passes unchanged."""
    if "boxes" in batch:
        batch = crop_on_device(batch, spec.size, spec.local_size)
    if batch["views"].dtype != torch.uint8:
        return batch
    out = dict(batch, views=batched_photometric(batch["views"], batch["photo"], spec))
    if "local_views" in batch:
        out["local_views"] = batched_photometric(batch["local_views"], batch["local_photo"], spec)
    return out


class ViewCollate:
    """Stack samples and run the batched photometric stage: views -> normalized float [B, V, 3, S, S]
    (and DINO's local crops -> [B, L, 3, s, s]). With `photometric=False` the views stay uint8 and their
    parameters travel beside them ("photo", "local_photo"): `finish_views` completes them on the device.
    Samples without views (crops on the device) are packed (`repre.data.device_views.pack`) with their
    boxes [B, V, 4], flips [B, V] and parameters."""

    def __init__(self, spec: ViewSpec, photometric: bool = True) -> None:
        self.spec, self.photometric = spec, photometric

    def _views(self, samples: list[dict], key: str, photo_key: str, batch: dict[str, torch.Tensor]) -> None:
        views = torch.stack([s[key] for s in samples])  # [B, V, 3, S, S] uint8
        photo = torch.stack([s[photo_key] for s in samples])  # [B, V, N_PHOTO]
        if self.photometric:
            batch[key] = batched_photometric(views, photo, self.spec)
        else:
            batch[key], batch[photo_key] = views, photo

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if "payload" in samples[0]:
            batch.update(pack(samples))
            for key in ("boxes", "flips", "photo", "local_boxes", "local_flips", "local_photo"):
                if key in samples[0]:
                    batch[key] = torch.stack([s[key] for s in samples])
        else:
            self._views(samples, "views", "photo", batch)
        batch.update({
            "index": torch.tensor([s["index"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples]),
            "skipped": torch.tensor(sum(s["skipped"] for s in samples)),
            "upscaled": torch.tensor(sum(s["small"] for s in samples)),
        })
        if "local_views" in samples[0]:  # DINO's local crops: [B, L, 3, s, s]
            self._views(samples, "local_views", "local_photo", batch)
        if "stream" in samples[-1]:  # streamed shards: the worker's position after this batch (for checkpoints)
            batch["stream"] = samples[-1]["stream"]
        return batch


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys, reshuffled each epoch from (seed, epoch); drops the last partial batch.

    `start_step` resumes inside an epoch: iteration begins with the batch of that global step. Distributed
    (`world` > 1): every process draws the same global batch of `batch_size` keys and keeps its own contiguous
    share, `rank`-th of `world`, so N processes see exactly the images (and views) one process would.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        if size < batch_size:
            raise UserError(
                f"the dataset has {size} images, fewer than one batch (train.batch_size={batch_size}); "
                "lower train.batch_size or add images"
            )
        self.size, self.batch_size, self.seed, self.start_step = size, batch_size, seed, start_step
        self.steps_per_epoch = size // batch_size
        self.share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_step, self.steps_per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=g).tolist()
            for b in range(offset, self.steps_per_epoch):
                batch = order[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(epoch, i) for i in batch[self.share]]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        return self.steps_per_epoch


def resolve_workers(requested: int) -> int:
    """-1 -> min(8, cores - 1): leave a core to the training loop."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def train_source(cfg: Config) -> ImageSource:
    source = build_source(cfg.data, "train", seed=cfg.train.seed)
    return Subset(source, cfg.data.subset) if cfg.data.subset else source


def view_spec(cfg: Config, source: ImageSource) -> ViewSpec:
    mean, std = stats(cfg.data, source)
    return ViewSpec(aug=cfg.aug, size=cfg.data.image_size, mean=mean, std=std,
                    local_crops=cfg.data.local_crops, local_size=cfg.data.local_size)


def photometric_on_device(cfg: Config, device: torch.device) -> bool:
    """Whether the photometric stage runs on the training device (aug.photometric_on; auto: on a GPU, or
    where the crops are cut: aug.geometric_on=device)."""
    where = cfg.aug.photometric_on
    auto = device.type == "cuda" or cfg.aug.geometric_on == "device"
    return where == "device" or (where == "auto" and auto)


def pretrain_loader(cfg: Config, source: ImageSource, start_step: int, pin_memory: bool,
                    on_device: bool = False, positions: dict[int, tuple] | None = None) -> DataLoader:
    """An endless loader of two-view batches (this process's share of each global batch), starting at
    optimizer step `start_step`. `on_device`: the views stay uint8 for `finish_views` on the device.
    Streamed shards: `positions` are the workers' saved positions ({logical worker: position})."""
    from repre.data.stream import StreamShards, StreamViews, check_enough_shards

    spec = view_spec(cfg, source)
    views = ViewDataset(source, spec, cfg.train.seed, crops_on_device=cfg.aug.geometric_on == "device",
                        decode_on_device=cfg.data.decode_on == "device")
    workers = resolve_workers(cfg.train.num_workers)
    common = dict(collate_fn=ViewCollate(spec, photometric=not on_device), num_workers=workers,
                  pin_memory=pin_memory, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
    if isinstance(source, StreamShards):
        check_enough_shards(len(source.urls), world_size(), max(1, workers))  # here, not in a worker: a clear error
        stream = StreamViews(source, views, cfg.train.seed, cfg.data.shuffle_block, rank(), world_size(),
                             start_step, positions)
        return DataLoader(stream, batch_size=cfg.train.batch_size // world_size(), **common)
    sampler = EpochBatchSampler(len(source), cfg.train.batch_size, cfg.train.seed, start_step, rank(), world_size())
    return DataLoader(
        views,
        batch_sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # not a draw from the global RNG: exact resume
        **common,
    )


class EvalDataset(Dataset):
    """index -> (normalized float [3, S, S], label): resize then centre crop, no augmentation."""

    def __init__(self, source: ImageSource, size: int, mean, std) -> None:
        self.source, self.size, self.mean, self.std = source, size, mean, std

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, label, _ = load_or_replace(self.source, index)
        if img.shape[-2:] != (self.size, self.size):
            short = self.size if min(img.shape[-2:]) <= self.size else round(self.size / 0.875)
            img = TF.center_crop(TF.resize(img, [short], antialias=True), [self.size, self.size])
        return normalize(img[None].float() / 255, self.mean, self.std)[0], label


def eval_loader(cfg: Config, split: str, subset: int | None) -> DataLoader:
    """Deterministic loader over `split` (see `eval_source`) for feature extraction."""
    source = eval_source(cfg, split)
    if subset:
        source = Subset(source, subset)
    mean, std = stats(cfg.data, source)
    workers = resolve_workers(cfg.train.num_workers)
    return DataLoader(
        EvalDataset(source, cfg.data.image_size, mean, std),
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG alone (k-NN during training)
    )
