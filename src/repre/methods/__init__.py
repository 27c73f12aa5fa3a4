"""Contrastive frameworks, each a small file on `Method`; `build_method` is the registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from repre.config import Config
from repre.errors import UserError
from repre.methods.base import Method
from repre.methods.dino import DINO
from repre.methods.moby import MoBY
from repre.methods.mocov3 import MoCoV3
from repre.methods.supervised import Supervised
from repre.models.backbone import Backbone


def _mocov3(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    return MoCoV3(encoder, **dataclasses.asdict(cfg.method.mocov3))


def _dino(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    return DINO(encoder, **dataclasses.asdict(cfg.method.dino))


def _moby(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    return MoBY(encoder, **dataclasses.asdict(cfg.method.moby))


def _supervised(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    if not num_classes:
        raise UserError("method.name=supervised needs a labelled dataset (class sub-folders, Fashion-MNIST, synthetic)")
    return Supervised(encoder, num_classes)


METHODS: dict[str, Callable[[Config, Backbone, int | None], Method]] = {
    "mocov3": _mocov3, "dino": _dino, "moby": _moby, "supervised": _supervised,
}
EVAL_ENCODER = {"mocov3": MoCoV3, "dino": DINO, "moby": MoBY, "supervised": Supervised}  # name -> class (eval_encoder_key)


def eval_encoder_key(method_name: str) -> str:
    """The attribute of the method whose backbone evaluation and export use ("encoder" or "teacher_encoder")."""
    cls = EVAL_ENCODER.get(method_name)
    return cls.eval_encoder_key if cls else "encoder"


def build_method(cfg: Config, encoder: Backbone, num_classes: int | None = None) -> Method:
    """The configured method around `encoder`; `num_classes` (of the training data) for supervised."""
    if cfg.method.name not in METHODS:
        raise UserError(f"unknown method.name {cfg.method.name!r}; choose from {', '.join(METHODS)}")
    return METHODS[cfg.method.name](cfg, encoder, num_classes)


__all__ = ["DINO", "METHODS", "Method", "MoBY", "MoCoV3", "Supervised", "build_method", "eval_encoder_key"]
