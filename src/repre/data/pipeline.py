"""The pre-training input pipeline: image -> augmented views -> batches, with its resumable position.

`PretrainData` is what the trainer sees: a loader that starts at any optimizer step, the stages left for the
training device (`to_device`), and `state_dict()` / `load_state_dict()` for checkpoints. Where each stage runs
(data workers or the device) is decided once, by `Stages.of` (`data.device_stages`, the device).

A batch is a dict; which keys it holds tells which stages are left (B: this process's images; V: global views,
2; L: DINO's local crops; S, s: their sides). From the loader (`ViewCollate`):

    views              float [B, V, 3, S, S], normalized: every stage ran in the data workers; or uint8: the
                       photometric stage is left for the device; absent: the crops are too (data.device_stages)
    local_views        the same for DINO's local crops, [B, L, 3, s, s]
    photo, local_photo float [B, V | L, N_PHOTO]: each view's photometric draws, while that stage is left
    pixels, jpeg, encoded, shapes, offsets, lengths
                       the whole images, packed (`device_views.pack`), while the crops are left
    boxes, flips       int64 [B, V, 4] (top, left, h, w) and bool [B, V]: each view's crop (local_boxes,
                       local_flips: the local crops'), while the crops are left
    label              int64 [B]; index int64 [B] (source indices); skipped, upscaled int64 []: images replaced
                       as unreadable, and smaller than S (the run's summary counts them)
    stream             streamed shards: the data worker's position after the batch (checkpoints keep it)

After `to_device` (a new dict; the loader's is left as it was): "views" (and "local_views") normalized float on
the device, "label" there too; the other keys stay on the CPU, "skipped" with the images the device could not
decode added.
"""

from __future__ import annotations

import io
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from repre.config import Config, DataConfig
from repre.core import dist
from repre.data.device_views import crop_on_device, jpeg_shape, pack, pixels_payload, scale_boxes
from repre.data.folder import decode
from repre.data.sampler import EpochBatchSampler, check_one_batch
from repre.data.sources import EncodedImages, ImageSource, data_code, first_readable, load_or_replace, stats
from repre.data.splits import train_source
from repre.data.stream import StreamShards, StreamViews, check_enough_shards
from repre.data.views import GLOBAL_VIEWS, ViewSpec, make_views, photometric, sample_views
from repre.data.workers import resolve_workers, worker_started

log = logging.getLogger("repre")

PREFETCH = 4  # batches each data worker prepares ahead of the step


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
    """The image at `index` (or its readable replacement: `first_readable`) as it crosses to the device
    (`payload_from_bytes`), and the number of images skipped. Sources without files (Fashion-MNIST, synthetic)
    send pixels."""

    def read(i: int) -> dict:
        if isinstance(source, EncodedImages):
            return payload_from_bytes(*source.encoded(i), encoded_ok=encoded_ok)
        return pixels_payload(*source.load(i))

    return first_readable(source, index, read)


class ViewDataset(Dataset):
    """Key (epoch, index) -> augmented uint8 views of one image (two by default), with their photometric parameters.

    With `crops_on_device` the views are not cut here: the sample holds the whole image (`load_payload`; its
    JPEG bytes with `decode_on_device`) and the views' boxes, flips and photometric parameters, drawn exactly
    as the views here would be, for `repre.data.device_views.crop_on_device`."""

    def __init__(self, source: ImageSource, spec: ViewSpec, seed: int, n_views: int = GLOBAL_VIEWS,
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
            img, label, skipped = load_or_replace(self.source, index)
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
                    spec, seed, epoch, index, h, w, spec.local_crops, first=GLOBAL_VIEWS)
                sample["local_boxes"] = scale_boxes(boxes, (h, w), loaded["shape"])
        else:
            img = loaded["image"]
            h, w = img.shape[-2:]
            views, photo = make_views(img, spec, seed, epoch, index, self.n_views)
            sample = {"views": views, "photo": photo, "label": loaded["label"]}
            if spec.local_crops:
                sample["local_views"], sample["local_photo"] = make_views(
                    img, spec, seed, epoch, index, spec.local_crops, first=GLOBAL_VIEWS, size=spec.local_size)
        upscaled = int(min(h, w) < spec.size)  # upscaled by the crop: counted, never refused
        return {**sample, "index": index, "skipped": skipped, "upscaled": upscaled}


def batched_photometric(views: torch.Tensor, photo: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """uint8 views [B, V, 3, S, S] with their parameters [B, V, N_PHOTO] -> normalized float [B, V, 3, S, S],
    on the views' device."""
    b, v = views.shape[:2]
    return photometric(views.flatten(0, 1), photo.flatten(0, 1).to(views.device), spec).view(b, v, *views.shape[2:])


def finish_views(batch: dict[str, torch.Tensor], spec: ViewSpec, name_of: Callable[[int], str] | None = None
                 ) -> dict[str, torch.Tensor]:
    """The stages a batch's loader left out, where its tensors are now (the training device): the crops of a
    packed batch (data.device_stages=crops; "pixels" moved, "jpeg" on the CPU), then the photometric stage of
    uint8 views (their parameters under "photo"/"local_photo"). A batch whose views are float passes unchanged.
    `name_of(index)`: the file at a dataset index, named when it cannot be decoded."""
    if "pixels" in batch:  # packed whole images (a finished batch keeps its boxes, not its pixels)
        batch = crop_on_device(batch, spec.size, spec.local_size, name_of)
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
            "upscaled": torch.tensor(sum(s["upscaled"] for s in samples)),
        })
        if "local_views" in samples[0]:  # DINO's local crops: [B, L, 3, s, s]
            self._views(samples, "local_views", "local_photo", batch)
        if "stream" in samples[-1]:  # streamed shards: the worker's position after this batch (for checkpoints)
            batch["stream"] = samples[-1]["stream"]
        return batch


def view_spec(cfg: Config, source: ImageSource) -> ViewSpec:
    mean, std = stats(cfg.data, source)
    return ViewSpec(aug=cfg.aug, size=cfg.data.image_size, mean=mean, std=std,
                    local_crops=cfg.data.local_crops, local_size=cfg.data.local_size)


# data.device_stages's values after auto, in order: each puts one more stage on the device than the one before
STAGE_ORDER = typing.get_args(typing.get_type_hints(DataConfig)["device_stages"])[1:]


@dataclass(frozen=True)
class Stages:
    """Where the stages of a run's pipeline run, decided once: each in the data workers (False) or on the
    training device (True), after `PretrainData.to_device` (`finish_views`)."""

    decode_on_device: bool  # data.device_stages=decode: JPEG bytes cross, the device decodes them
    crops_on_device: bool  # crops (and decode): whole images cross, the crops are cut there
    photometric_on_device: bool  # photometric (and the later ones): uint8 views and their parameters cross

    @classmethod
    def of(cls, cfg: Config, device: torch.device) -> Stages:
        """The stages of `cfg` training on `device` (only its type is read; auto: photometric on a GPU)."""
        chosen = cfg.data.device_stages
        if chosen == "auto":
            chosen = "photometric" if device.type == "cuda" else "workers"
        on_device = STAGE_ORDER.index(chosen)
        return cls(decode_on_device=on_device >= 3, crops_on_device=on_device >= 2,
                   photometric_on_device=on_device >= 1)


def pretrain_loader(cfg: Config, source: ImageSource, start_step: int, pin_memory: bool,
                    stages: Stages | None = None, positions: dict[int, tuple] | None = None) -> DataLoader:
    """An endless loader of two-view batches (this process's share of each global batch), starting at
    optimizer step `start_step`; the stages of `stages` (default: those of a CPU run) left for `finish_views`.
    Streamed shards: `positions` are the workers' saved positions ({logical worker: position})."""
    stages = stages or Stages.of(cfg, torch.device("cpu"))
    spec = view_spec(cfg, source)
    views = ViewDataset(source, spec, cfg.train.seed, crops_on_device=stages.crops_on_device,
                        decode_on_device=stages.decode_on_device)
    workers = resolve_workers(cfg.train.num_workers)
    collate = ViewCollate(spec, photometric=not stages.photometric_on_device)
    # the loader's seed for its workers from a generator of its own, not a draw from the global RNG: drop path
    # draws from that, and a resumed run makes its loader at another point of it (exact resume)
    common: dict[str, Any] = dict(collate_fn=collate, num_workers=workers,
                                  generator=torch.Generator().manual_seed(cfg.train.seed),
                                  pin_memory=pin_memory, persistent_workers=workers > 0,
                                  prefetch_factor=PREFETCH if workers > 0 else None,
                                  worker_init_fn=worker_started)
    if isinstance(source, StreamShards):
        # here, not in a worker: a clear error
        check_enough_shards(len(source.urls), dist.world_size(), max(1, workers))
        stream = StreamViews(source, views, cfg.train.seed, cfg.data.shuffle_block, dist.rank(), dist.world_size(),
                             start_step, positions)
        return DataLoader(stream, batch_size=cfg.train.batch_size // dist.world_size(), **common)
    sampler = EpochBatchSampler(len(source), cfg.train.batch_size, cfg.train.seed, start_step, dist.rank(),
                                dist.world_size())
    return DataLoader(views, batch_sampler=sampler, **common)


class PretrainData:
    """This process's pre-training data: the source, its views, the loader, and the loader's resumable position.

    The trainer keeps `state_dict()` in its checkpoints as it is and hands it back to `load_state_dict()`; an
    indexed source resumes from the step alone (None), streamed shards from every data worker's position."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg = cfg
        if not dist.is_main():
            dist.barrier()  # rank 0 first: it indexes (and caches) tar shards once for the others
        self.source = train_source(cfg)
        self.code = data_code(cfg.data)  # the code that made these images where it is not repre's, as it was read
        if dist.is_main():
            dist.barrier()
        if not isinstance(self.source, StreamShards):  # every process, before the run's first line says its epochs
            check_one_batch(len(self.source), cfg.train.batch_size)
        self.spec = view_spec(cfg, self.source)
        self.device = device
        self.stages = Stages.of(cfg, device)
        self.positions: dict[int, tuple] = {}  # streamed shards: {data worker: its position after its last batch}

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int | None:
        return self.source.num_classes

    def loader(self, start_step: int, pin_memory: bool) -> DataLoader:
        """Batches of this process's share of each global batch, from optimizer step `start_step` on."""
        return pretrain_loader(self.cfg, self.source, start_step, pin_memory, self.stages, dict(self.positions))

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step's tensors on the training device (non-blocking from pinned memory), with the stages the loader
        left out run there (data.device_stages; JPEG bytes stay on the CPU for the decoder)."""
        return self.finish(self.move(batch))

    def move(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with its tensors on the training device, as the loader made them."""
        keys = ("views", "label", "local_views", "photo", "local_photo", "pixels")
        return {**batch, **{k: batch[k].to(self.device, non_blocking=True) for k in keys if k in batch}}

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A moved batch (`move`) with the stages the loader left out run on the device (`finish_views`)."""
        name_of = (self.source.sample_name if isinstance(self.source, StreamShards)  # a batch's index: a views key
                   else getattr(self.source, "path", None))  # a folder's or indexed shards' files
        return finish_views(batch, self.spec, name_of)

    def observe(self, batch: dict) -> None:
        """A batch was trained on: where its data worker's stream now stands (streamed shards)."""
        if "stream" in batch:
            self.positions[batch["stream"][0]] = tuple(batch["stream"][1:])

    def state_dict(self) -> dict[str, Any] | None:
        """Streamed shards: every process's data-worker positions (distributed: a collective), else None."""
        if not isinstance(self.source, StreamShards):
            return None
        return {"workers": max(1, resolve_workers(self.cfg.train.num_workers)),
                "ranks": dist.gather_objects(self.positions)}

    def load_state_dict(self, saved: dict[str, Any] | None) -> None:
        """Where each data worker's stream goes on: its saved position when the processes and workers are as
        many as when saved, else the start of the earliest saved epoch (not the exact sequence; a warning)."""
        if not isinstance(self.source, StreamShards) or not saved:
            return
        workers = max(1, resolve_workers(self.cfg.train.num_workers))
        if saved["workers"] == workers and len(saved["ranks"]) == dist.world_size():
            self.positions = dict(saved["ranks"][dist.rank()])
            return
        epochs = [pos[0] for ranks in saved["ranks"] for pos in ranks.values()]
        epoch = min(epochs, default=0)
        if dist.is_main():  # the run's, said once
            log.warning("resuming streamed shards with %d processes x %d workers, saved with %d x %d: every stream "
                        "restarts at the start of epoch %d (not the exact sequence of an uninterrupted run); to go "
                        "on exactly, stop and resume with %d process%s and --set train.num_workers=%d",
                        dist.world_size(), workers, len(saved["ranks"]), saved["workers"], epoch,
                        len(saved["ranks"]), "" if len(saved["ranks"]) == 1 else "es", saved["workers"])
        self.positions = {w: (epoch, 0, ()) for w in range(workers)}
