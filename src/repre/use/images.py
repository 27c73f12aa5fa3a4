"""The images behind the rows of an embedding file: the data they were read from, and a row's image as the
encoder saw it (the pictures of `repre neighbors` and `repre map`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repre.config import parse_overrides
from repre.core import checkpoint_io as ckpt_io
from repre.data.evaluation import centre_view
from repre.data.folder import UnreadableImage
from repre.data.sources import ImageSource, image_path
from repre.errors import UserError
from repre.pretrained import load_checkpoint_config
from repre.use.embed import drop_run_subset, embed_source

log = logging.getLogger("repre")

UNREADABLE_GREY = 128  # the tile of an image that cannot be read now


@dataclass
class EmbeddedImages:
    """The images an embedding file was made from, as they are read now."""

    source: ImageSource
    size: int  # the side the encoder saw them at
    moved: tuple[str, str] | None = None  # (the root embed read, the root --set data.root names now), absolute

    def path_now(self, path: str) -> str:
        """A file the index names -> where that file is now (under the root given, for a moved folder)."""
        if self.moved is None or not path:
            return path
        then, now = self.moved
        return os.path.join(now, os.path.relpath(path, then))


def _without_root(overrides: Sequence[str]) -> list[str]:
    return [item for item in overrides if item.split("=", 1)[0].strip() != "data.root"]


def embedded_source(checkpoint: str | Path | None, card: dict[str, Any], overrides: Sequence[str],
                    name: str | Path = "the embeddings") -> EmbeddedImages:
    """The data the embeddings (`name`, their FILE.npy) were made from: the checkpoint's config (None: the one
    embed read, named in the card), embed's overrides, then `overrides`. A `data.root` among them names where the
    same images are now (a moved or copied folder): the run's data.subset still picks among them, and an index
    path is compared relative to the root. Generated images are drawn with the seed embed drew them with."""
    given = checkpoint is not None
    if checkpoint is None:
        checkpoint = card.get("checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            raise UserError(f"the checkpoint the embeddings were made from ({checkpoint}) is gone: give --checkpoint "
                            "RUN, a checkpoint whose data config reads the same images")
    _, cfg = load_checkpoint_config(checkpoint, [*card["overrides"], *overrides], weights=False)  # its data config
    drop_run_subset(cfg, [*card["overrides"], *_without_root(overrides)])
    ident = card["identity"]
    if "data_seed" in ident:  # generated images: the checkpoint's own seed would draw others
        cfg.train.seed = ident["data_seed"]
    then = ident["data"]["root"]
    moved = None
    if "root" not in parse_overrides(overrides).get("data", {}):  # the root embed read, made absolute there: a
        cfg.data.root = then  # relative --set data.root names it from any directory
    elif then and cfg.data.root:
        moved = (then, os.path.abspath(cfg.data.root))
    if ckpt_io.digest(checkpoint) != ident["checkpoint_sha256"]:
        made_from = f"another checkpoint ({card.get('checkpoint')})" if given else "this file before the run went on"
        log.warning("the embeddings were made from %s; the images are read with the data config of %s", made_from,
                    checkpoint)
    if moved is None and then and cfg.data.name == "folder" and not Path(then).exists():
        raise UserError(f"{then}, the data {name} were made from, is gone: where the same images are now (a moved "
                        "or copied folder), give --set data.root=THERE")
    source = embed_source(cfg, ident["split"])
    if len(source) != ident["images"]:
        raise UserError(f"the data has {len(source)} images, {name} were made from {ident['images']}: "
                        "embed's own --set apply already (from its card): drop a --set data.* or --checkpoint of "
                        "other images, or, where the images changed since (files added or removed), embed them "
                        "again (`repre embed ... --overwrite`)")
    return EmbeddedImages(source, cfg.data.image_size, moved)


def _same_file(a: str, b: str) -> bool:
    return a == b or bool(a and b and os.path.abspath(a) == os.path.abspath(b))


def thumbnail(images: EmbeddedImages, index: int, path: str) -> torch.Tensor:
    """Image `index` of the images as the encoder saw it: uint8 [3, S, S]. It must still be the file the index
    names (`path`; under the new root of a moved folder)."""
    now = image_path(images.source, index)
    if not _same_file(now, images.path_now(path)):
        moved = f" ({images.path_now(path)} under the data.root given)" if images.moved else ""
        raise UserError(f"image {index} of the data is {now or 'not a file'}, the index says {path or 'not a file'}"
                        f"{moved}: the data changed since embed (embed it again: `repre embed ... --overwrite`), "
                        "or a --set data.* or --checkpoint given here reads other images (embed's own apply "
                        "already): drop it")
    try:
        img, _ = images.source.load(index)
    except UnreadableImage as exc:  # one image is no reason to lose the picture (and a map's minutes of layout)
        log.warning("image %d cannot be read now (%s), though it could when it was embedded: drawn grey", index, exc)
        return torch.full((3, images.size, images.size), UNREADABLE_GREY, dtype=torch.uint8)
    return centre_view(img, images.size)
