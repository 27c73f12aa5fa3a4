"""Contrastive frameworks, each a small file on `Method`; `build_method` is the registry."""

from __future__ import annotations

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
    m = cfg.method
    return MoCoV3(encoder, m.proj_dim, m.mlp_dim, m.temperature, m.freeze_patch_embed)


def _dino(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    m = cfg.method
    return DINO(encoder, m.out_dim, m.mlp_dim, m.proj_dim, m.temperature, m.teacher_temp, m.warmup_teacher_temp,
                m.warmup_teacher_temp_fraction, m.center_momentum, m.freeze_last_layer_fraction, m.norm_last_layer)


def _moby(cfg: Config, encoder: Backbone, num_classes: int | None) -> Method:
    m = cfg.method
    return MoBY(encoder, m.proj_dim, m.mlp_dim, m.temperature, m.queue_size)


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
